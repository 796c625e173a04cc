//! Object storage (SPEC section 6): an S3 client for any S3-compatible server, and where
//! attachments live in the bucket.
//!
//! Only the S3 API is assumed: path-style addressing (which every S3-compatible server
//! accepts), SigV4, and no vendor extensions. The API signs with a client for
//! `S3_PUBLIC_ENDPOINT`, because a presigned URL signs its `Host`; the worker talks to
//! `S3_ENDPOINT`.
//!
//! Objects are deleted in one of two ways: at once and best effort ([`Bucket::delete_quietly`],
//! when a job already holds the bucket), or by `delete_objects` jobs written on the change's
//! own transaction ([`delete_later`]), so a committed deletion never leaves files behind.

use std::time::Duration;

use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::config::{
    BehaviorVersion, Credentials, Region, RequestChecksumCalculation, ResponseChecksumValidation,
    retry::RetryConfig,
};
use secrecy::ExposeSecret;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::config::S3Settings;
use crate::jobs::DeleteObjects;

/// Keys per `delete_objects` job: one job stays small, and a failure retries few deletions.
const DELETE_BATCH: usize = 300;

/// A client for `endpoint`, signed with the configured credentials.
///
/// Timeouts are short for connecting and generous for reading, so a store that is down fails
/// a job attempt in seconds (the job is retried with backoff) while a large download is not
/// cut off. Checksums are only sent when an operation requires them: a presigned upload must
/// not carry a checksum of an empty body, and not every S3-compatible server returns them.
pub fn client(s3: &S3Settings, endpoint: &str) -> aws_sdk_s3::Client {
    let credentials = Credentials::new(
        &s3.access_key_id,
        s3.secret_access_key.expose_secret(),
        None,
        None,
        "tasklane-settings",
    );
    let config = aws_sdk_s3::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .endpoint_url(endpoint)
        .region(Region::new(s3.region.clone()))
        .credentials_provider(credentials)
        .force_path_style(true)
        .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
        .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(3))
                .read_timeout(Duration::from_secs(30))
                .build(),
        )
        .retry_config(RetryConfig::standard().with_max_attempts(2))
        .build();
    aws_sdk_s3::Client::from_conf(config)
}

/// The client span of one S3 call, in the current trace (SPEC section 13).
pub fn s3_span(operation: &'static str, key: &str) -> tracing::Span {
    tracing::info_span!(
        "s3",
        otel.name = %format!("S3 {operation}"),
        otel.kind = "client",
        rpc.system = "aws-api",
        rpc.service = "S3",
        rpc.method = operation,
        s3.key = key,
    )
}

/// The client the worker uses (`S3_ENDPOINT`).
pub fn internal_client(s3: &S3Settings) -> aws_sdk_s3::Client {
    client(s3, &s3.endpoint)
}

/// The client that presigns URLs for API clients (`S3_PUBLIC_ENDPOINT`).
pub fn public_client(s3: &S3Settings) -> aws_sdk_s3::Client {
    client(s3, &s3.public_endpoint)
}

/// A bucket and a client for it; cheap to clone.
#[derive(Clone, Debug)]
pub struct Bucket {
    pub client: aws_sdk_s3::Client,
    pub name: String,
}

impl Bucket {
    /// Best effort: an object left behind when the store is down is only storage, and no row
    /// points at it any more.
    pub async fn delete_quietly(&self, key: &str) {
        if let Err(err) = self.client.delete_object().bucket(&self.name).key(key).send().await {
            tracing::warn!(%key, error = %err, "cannot delete an object");
        }
    }
}

/// Queues the deletion of `keys` on the caller's transaction, in `delete_objects` jobs of
/// at most 300 keys: the objects go once the change that drops them has committed.
pub async fn delete_later(
    conn: &mut PgConnection,
    keys: &[String],
    request_id: Option<&str>,
) -> Result<(), sqlx::Error> {
    for batch in keys.chunks(DELETE_BATCH) {
        crate::outbox::enqueue(conn, &DeleteObjects { keys: batch.to_vec() }, request_id).await?;
    }
    Ok(())
}

/// Where a client uploads an attachment: chosen by the server, under its owner's prefix, so
/// neither a filename nor a client can pick or collide with another key. A presigned PUT
/// stays usable until it expires, so this object is never served: the worker copies the
/// verified version to [`attachment_key`].
pub fn upload_key(owner: Uuid, task: Uuid, attachment: Uuid) -> String {
    format!("users/{owner}/tasks/{task}/uploads/{attachment}")
}

/// A verified attachment's object, written only by the worker.
pub fn attachment_key(owner: Uuid, task: Uuid, attachment: Uuid) -> String {
    format!("users/{owner}/tasks/{task}/attachments/{attachment}")
}

/// The thumbnail stored beside an image attachment.
pub fn thumbnail_key(object_key: &str) -> String {
    format!("{object_key}.thumb.png")
}

/// Every object an attachment may have, whatever its state: the upload, the thumbnail and
/// the verified copy. Deleting all three is how an attachment's files go.
pub fn attachment_objects(upload_key: &str, object_key: &str) -> [String; 3] {
    [upload_key.to_owned(), thumbnail_key(object_key), object_key.to_owned()]
}

/// Media types compared loosely: lower case, parameters dropped, common aliases folded.
pub fn normalize_media_type(raw: &str) -> String {
    let essence = raw.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
    match essence.as_str() {
        "image/jpg" | "image/pjpeg" => "image/jpeg".to_owned(),
        "application/x-zip-compressed" => "application/zip".to_owned(),
        _ => essence,
    }
}
