//! The requests and responses of `/api/v1/tasks/{id}/attachments`, as the OpenAPI document
//! shows them.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Object};
use tasklane_shared::domain::attachments::AttachmentStatus;
use uuid::Uuid;

use crate::problem::Problem;
use crate::routes::tasks::types::parse_problem;
use crate::services::attachments::AttachmentRow;
use crate::services::download_links::SignedLink;

/// What you are about to upload. Unknown fields are refused (422).
#[derive(Debug, Object)]
#[oai(deny_unknown_fields)]
pub struct NewAttachment {
    /// The original name, used when the file is downloaded (1-255 characters; any folder
    /// part is dropped).
    pub filename: String,
    /// The media type, e.g. `image/png`; it must be one of the allowed types, and the
    /// content is checked against it after upload.
    pub content_type: String,
    /// The exact size in bytes (at most the configured limit, 25 MiB by default).
    pub size_bytes: u64,
}

/// An attachment. `size_bytes`, `sha256` and `detected_type` are set once it is `ready`.
#[derive(Debug, Object)]
pub struct AttachmentView {
    pub id: Uuid,
    pub task_id: Uuid,
    pub filename: String,
    /// The declared media type.
    pub content_type: String,
    pub declared_size: i64,
    pub status: AttachmentStatus,
    /// Why it was rejected: `not_uploaded`, `size_mismatch`, `too_large`, `type_mismatch`,
    /// `invalid_image` or `processing_failed`.
    pub reject_reason: Option<String>,
    pub size_bytes: Option<i64>,
    /// Hex SHA-256 of the content.
    pub sha256: Option<String>,
    /// The type found from the content's magic bytes.
    pub detected_type: Option<String>,
    pub has_thumbnail: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// Only on `GET .../{aid}` of a `ready` attachment: a short-lived link, to this API, that
    /// downloads the file under its original name (no bearer token needed).
    pub download: Option<PresignedLink>,
    /// Only on `GET .../{aid}` of a `ready` image: a short-lived link, to this API, to its
    /// PNG thumbnail (longest side 256 px).
    pub thumbnail: Option<PresignedLink>,
}

/// A link signed by the server: anyone holding it can follow it (a browser included, with
/// no bearer token) until `expires_at`, and no longer.
#[derive(Debug, Object)]
pub struct PresignedLink {
    /// `GET` this absolute URL.
    pub url: String,
    pub expires_at: DateTime<Utc>,
}

impl From<SignedLink> for PresignedLink {
    fn from(link: SignedLink) -> Self {
        Self { url: link.url, expires_at: link.expires_at }
    }
}

/// Exactly the request to send with the file as its body.
#[derive(Debug, Object)]
pub struct UploadInstructions {
    /// Always `PUT`.
    pub method: String,
    /// The presigned URL; it works once per attempt until `expires_at`.
    pub url: String,
    /// Send every one of these headers with exactly these values: they are signed, so the
    /// store refuses a different type, length or disposition.
    pub headers: BTreeMap<String, String>,
    pub expires_at: DateTime<Utc>,
}

#[derive(Debug, Object)]
pub struct CreatedAttachment {
    pub attachment: AttachmentView,
    pub upload: UploadInstructions,
}

#[derive(Debug, Object)]
pub struct AttachmentList {
    /// Newest first.
    pub data: Vec<AttachmentView>,
    /// Pass as `cursor` for the next page; absent on the last.
    pub next_cursor: Option<String>,
}

#[derive(ApiResponse)]
#[oai(bad_request_handler = "create_bad_request")]
pub enum CreateResponse {
    #[oai(status = 201)]
    Created(Json<Box<CreatedAttachment>>),
    /// Malformed JSON.
    #[oai(status = 400, content_type = "application/problem+json")]
    BadRequest(Json<Problem>),
    /// No such live task (or not yours).
    #[oai(status = 404, content_type = "application/problem+json")]
    NotFound(Json<Problem>),
    /// A field is invalid: a type that is not allowed (`type_not_allowed`), a size over the
    /// limit (`too_large`), an empty or overlong filename, or an unknown field.
    #[oai(status = 422, content_type = "application/problem+json")]
    Invalid(Json<Problem>),
}

fn create_bad_request(err: poem::Error) -> CreateResponse {
    match parse_problem(&err) {
        Ok(bad) => CreateResponse::BadRequest(Json(bad)),
        Err(invalid) => CreateResponse::Invalid(Json(invalid)),
    }
}

#[derive(ApiResponse)]
pub enum ListResponse {
    #[oai(status = 200)]
    Ok(Json<AttachmentList>),
    /// No such live task (or not yours).
    #[oai(status = 404, content_type = "application/problem+json")]
    NotFound(Json<Problem>),
    /// `limit` or `cursor` is invalid.
    #[oai(status = 422, content_type = "application/problem+json")]
    Invalid(Json<Problem>),
}

#[derive(ApiResponse)]
pub enum GetResponse {
    #[oai(status = 200)]
    Ok(Json<AttachmentView>),
    /// No such attachment on a live task of yours.
    #[oai(status = 404, content_type = "application/problem+json")]
    NotFound(Json<Problem>),
}

#[derive(ApiResponse)]
pub enum CompleteResponse {
    /// Verification is under way (`processing`); poll `GET .../{aid}` until `ready` or
    /// `rejected`. Calling `complete` again while processing changes nothing.
    #[oai(status = 202)]
    Accepted(Json<AttachmentView>),
    /// No such attachment on a live task of yours.
    #[oai(status = 404, content_type = "application/problem+json")]
    NotFound(Json<Problem>),
    /// Already `ready` or `rejected` (`already_processed`).
    #[oai(status = 409, content_type = "application/problem+json")]
    Conflict(Json<Problem>),
}

#[derive(ApiResponse)]
pub enum DeleteResponse {
    /// Gone; its objects are removed by a job shortly after.
    #[oai(status = 204)]
    NoContent,
    /// No such attachment on a live task of yours.
    #[oai(status = 404, content_type = "application/problem+json")]
    NotFound(Json<Problem>),
}

impl From<AttachmentRow> for AttachmentView {
    fn from(row: AttachmentRow) -> Self {
        Self {
            id: row.id,
            task_id: row.task_id,
            filename: row.filename,
            content_type: row.content_type,
            declared_size: row.declared_size,
            status: row.status,
            reject_reason: row.reject_reason,
            size_bytes: row.size_bytes,
            sha256: row.sha256,
            detected_type: row.detected_type,
            has_thumbnail: row.thumbnail_key.is_some(),
            created_at: row.created_at,
            updated_at: row.updated_at,
            download: None,
            thumbnail: None,
        }
    }
}
