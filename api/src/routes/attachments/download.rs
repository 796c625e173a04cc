//! `/api/v1/tasks/{id}/attachments/{aid}/content` and `.../thumbnail`: a ready attachment's
//! bytes, served by the API behind a signed, short-lived link (SPEC sections 6 and 14).
//!
//! The links come from `GET .../{aid}` ([`crate::services::download_links`] signs them). They
//! need no bearer header, so a browser can follow one, exactly like the presigned URL they
//! replace; but unlike a presigned GET, the response is ours, so every download carries
//! `X-Content-Type-Options: nosniff`, a sandboxing `Content-Security-Policy` and a
//! `Content-Disposition`, and an uploaded file can never run as a page. The object is streamed
//! from the store chunk by chunk: the API never holds a whole file, and its request body
//! limit has nothing to do with how large a download can be.

use chrono::Utc;
use poem::http::{HeaderValue, StatusCode, header};
use poem::web::Data;
use poem::{Body, IntoResponse, Response};
use poem_openapi::param::{Path, Query};
use poem_openapi::payload::{Json, Payload};
use poem_openapi::registry::{MetaSchema, MetaSchemaRef};
use poem_openapi::{ApiResponse, OpenApi};
use uuid::Uuid;

use super::presign::content_disposition;
use crate::problem::{Problem, ServerError};
use crate::services::attachments as records;
use crate::services::download_links::{DownloadTarget, LinkError, LinkTarget};
use crate::state::AppState;
use crate::tags::ApiTags;

/// What a download answers with besides its type: nothing may run, nothing is sniffed.
const DOWNLOAD_CSP: &str = "sandbox; default-src 'none'";

pub struct DownloadsApi;

#[OpenApi(prefix_path = "/api/v1/tasks", tag = "ApiTags::Attachments")]
impl DownloadsApi {
    /// Download a ready attachment, by the link in `download.url` of `GET .../{aid}`.
    ///
    /// No bearer token: the link itself is the permission, signed by the server and valid
    /// until `download.expires_at` (`TASKLANE_DOWNLOAD_URL_TTL_SECS`, 5 minutes by default).
    /// The body is the file, of its detected type, with `Content-Disposition: attachment`
    /// under its original name, `Content-Length`, `X-Content-Type-Options: nosniff`,
    /// `Content-Security-Policy: sandbox; default-src 'none'` and `Cache-Control: no-store`.
    #[oai(path = "/:id/attachments/:aid/content", method = "get")]
    async fn content(
        &self,
        state: Data<&AppState>,
        id: Path<Uuid>,
        aid: Path<Uuid>,
        /// Unix time the link stops working at, as signed.
        expires: Query<Option<String>>,
        /// The server's signature of the link.
        signature: Query<Option<String>>,
    ) -> Result<DownloadResponse, ServerError> {
        let what = LinkTarget { task: id.0, attachment: aid.0, target: DownloadTarget::File };
        serve(&state, what, expires.0.as_deref(), signature.0.as_deref()).await
    }

    /// Download a ready image's thumbnail, by the link in `thumbnail.url`.
    ///
    /// The link comes from `GET .../{aid}` of a ready image. Like the download (no bearer token, valid until `thumbnail.expires_at`, the same
    /// security headers), as `image/png` with `Content-Disposition: inline`, so it can be
    /// shown in a page.
    #[oai(path = "/:id/attachments/:aid/thumbnail", method = "get")]
    async fn thumbnail(
        &self,
        state: Data<&AppState>,
        id: Path<Uuid>,
        aid: Path<Uuid>,
        /// Unix time the link stops working at, as signed.
        expires: Query<Option<String>>,
        /// The server's signature of the link.
        signature: Query<Option<String>>,
    ) -> Result<DownloadResponse, ServerError> {
        let what = LinkTarget { task: id.0, attachment: aid.0, target: DownloadTarget::Thumbnail };
        serve(&state, what, expires.0.as_deref(), signature.0.as_deref()).await
    }
}

#[derive(ApiResponse)]
#[oai(bad_request_handler = "unparsable_link")]
pub enum DownloadResponse {
    /// The object's bytes, streamed from the store.
    #[oai(status = 200)]
    Ok(FileBody),
    /// The link is not one the server signed for this attachment (`invalid_link`: a changed
    /// or malformed id, expiry or signature, or a missing one), or its time is up (`link_expired`: get a
    /// new one from `GET .../{aid}`).
    #[oai(status = 403, content_type = "application/problem+json")]
    Forbidden(Json<Problem>),
    /// The attachment (or its thumbnail) is no longer there: deleted, or its task trashed.
    #[oai(status = 404, content_type = "application/problem+json")]
    NotFound(Json<Problem>),
}

/// A streamed object and the headers it is served with.
pub struct FileBody {
    body: Body,
    content_type: String,
    length: Option<u64>,
    disposition: String,
}

impl Payload for FileBody {
    /// Any type: the attachment's own (its detected type; `image/png` for a thumbnail).
    const CONTENT_TYPE: &'static str = "*/*";

    fn schema_ref() -> MetaSchemaRef {
        MetaSchemaRef::Inline(Box::new(MetaSchema {
            format: Some("binary"),
            ..MetaSchema::new("string")
        }))
    }
}

impl IntoResponse for FileBody {
    fn into_response(self) -> Response {
        let mut resp = Response::builder().body(self.body);
        let headers = resp.headers_mut();
        let content_type = HeaderValue::from_str(&self.content_type)
            .unwrap_or(HeaderValue::from_static("application/octet-stream"));
        headers.insert(header::CONTENT_TYPE, content_type);
        if let Some(length) = self.length {
            headers.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
        }
        if let Ok(disposition) = HeaderValue::from_str(&self.disposition) {
            headers.insert(header::CONTENT_DISPOSITION, disposition);
        }
        headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
        headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(DOWNLOAD_CSP));
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("private, no-store"));
        resp
    }
}

fn forbidden(code: &str, detail: &str) -> DownloadResponse {
    DownloadResponse::Forbidden(Json(Problem::new(StatusCode::FORBIDDEN, code, detail)))
}

/// A path that does not even parse (an id that is no UUID) is no link the server signed.
fn unparsable_link(_err: poem::Error) -> DownloadResponse {
    forbidden("invalid_link", "this download link is not valid")
}

fn gone() -> DownloadResponse {
    DownloadResponse::NotFound(Json(Problem::new(
        StatusCode::NOT_FOUND,
        "not_found",
        "no such attachment",
    )))
}

/// Checks the link before anything else (a forged one costs no query), then streams the
/// object if the attachment is still ready on a live task.
async fn serve(
    state: &AppState,
    what: LinkTarget,
    expires: Option<&str>,
    signature: Option<&str>,
) -> Result<DownloadResponse, ServerError> {
    match state.downloads.verify(what, expires, signature, Utc::now()) {
        Ok(()) => {}
        Err(LinkError::Invalid) => {
            return Ok(forbidden("invalid_link", "this download link is not valid"));
        }
        Err(LinkError::Expired) => {
            return Ok(forbidden(
                "link_expired",
                "this download link has expired; get a new one from the attachment",
            ));
        }
    }
    let mut conn = state.db.acquire().await?;
    let found = records::find_downloadable(&mut conn, what.task, what.attachment).await?;
    drop(conn);
    let Some(found) = found else { return Ok(gone()) };
    let (key, content_type, disposition) = match what.target {
        DownloadTarget::File => (
            found.object_key,
            found.detected_type.unwrap_or_else(|| "application/octet-stream".to_owned()),
            content_disposition(&found.filename),
        ),
        DownloadTarget::Thumbnail => {
            let Some(key) = found.thumbnail_key else { return Ok(gone()) };
            (key, "image/png".to_owned(), "inline; filename=\"thumbnail.png\"".to_owned())
        }
    };
    let object = state.store.client.get_object().bucket(&state.store.name).key(&key).send().await;
    let object = match object {
        Ok(object) => object,
        Err(err) if err.as_service_error().is_some_and(|err| err.is_no_such_key()) => {
            return Ok(gone());
        }
        Err(err) => return Err(store_unavailable(&err)),
    };
    let length = object.content_length().and_then(|length| u64::try_from(length).ok());
    Ok(DownloadResponse::Ok(FileBody {
        body: Body::from_async_read(object.body.into_async_read()),
        content_type,
        length,
        disposition,
    }))
}

fn store_unavailable(err: &dyn std::error::Error) -> ServerError {
    tracing::error!(error = %aws_sdk_s3::error::DisplayErrorContext(err), "object store unavailable");
    ServerError::Unavailable(
        Json(Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "dependency_unavailable",
            "the object store is unavailable; retry shortly",
        )),
        5,
    )
}
