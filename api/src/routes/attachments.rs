//! `/api/v1/tasks/{id}/attachments`: files on tasks, uploaded straight to the object store
//! (SPEC section 6).
//!
//! The API never carries the bytes. It checks the declaration, picks the object key under
//! the owner's prefix and presigns one PUT that signs the content type, length and
//! disposition, so the store itself refuses anything else. `complete` hands the object to the
//! `process_upload` job through the outbox; downloads are presigned GETs issued only once
//! the attachment is `ready`. Only the owner of a live (not trashed) task reaches any of it.

use std::collections::BTreeMap;

use aws_sdk_s3::presigning::PresigningConfig;
use chrono::{DateTime, Utc};
use poem::http::StatusCode;
use poem::web::Data;
use poem_openapi::param::{Path, Query};
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Enum, Object, OpenApi};
use sqlx::PgConnection;
use tasklane_shared::jobs::{DeleteObjects, ProcessUpload};
use tasklane_shared::storage;
use uuid::Uuid;

use crate::http::RequestId;
use crate::problem::{AuthedError, FieldError, Problem, ServerError};
use crate::routes::tasks::parse_problem;
use crate::security::BearerAuth;
use crate::state::AppState;
use crate::tags::ApiTags;

pub struct AttachmentsApi;

/// Filenames longer than this (in characters) are refused.
const MAX_FILENAME_CHARS: usize = 255;

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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[oai(rename_all = "snake_case")]
pub enum AttachmentStatus {
    /// Waiting for the upload and `complete`.
    Pending,
    /// Being verified.
    Processing,
    /// Verified; downloadable.
    Ready,
    /// Refused; see `reject_reason`. The object was deleted.
    Rejected,
}

impl AttachmentStatus {
    fn parse(raw: &str) -> Self {
        match raw {
            "processing" => Self::Processing,
            "ready" => Self::Ready,
            "rejected" => Self::Rejected,
            _ => Self::Pending,
        }
    }
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
    /// Only on `GET .../{aid}` of a `ready` attachment: a short-lived link that downloads the
    /// file under its original name.
    pub download: Option<PresignedLink>,
    /// Only on `GET .../{aid}` of a `ready` image: a short-lived link to its PNG thumbnail
    /// (longest side 256 px).
    pub thumbnail: Option<PresignedLink>,
}

#[derive(Debug, Object)]
pub struct PresignedLink {
    pub url: String,
    pub expires_at: DateTime<Utc>,
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

#[derive(Debug, sqlx::FromRow)]
struct AttachmentRow {
    id: Uuid,
    task_id: Uuid,
    filename: String,
    content_type: String,
    declared_size: i64,
    upload_key: String,
    object_key: String,
    status: String,
    reject_reason: Option<String>,
    size_bytes: Option<i64>,
    sha256: Option<String>,
    detected_type: Option<String>,
    thumbnail_key: Option<String>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

const COLUMNS: &str = "a.id, a.task_id, a.filename, a.content_type, a.declared_size, a.upload_key, a.object_key, a.status, \
     a.reject_reason, a.size_bytes, a.sha256, a.detected_type, a.thumbnail_key, a.created_at, a.updated_at";

impl From<AttachmentRow> for AttachmentView {
    fn from(row: AttachmentRow) -> Self {
        Self {
            id: row.id,
            task_id: row.task_id,
            filename: row.filename,
            content_type: row.content_type,
            declared_size: row.declared_size,
            status: AttachmentStatus::parse(&row.status),
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

fn task_not_found() -> Problem {
    Problem::new(StatusCode::NOT_FOUND, "not_found", "no such task")
}

fn not_found() -> Problem {
    Problem::new(StatusCode::NOT_FOUND, "not_found", "no such attachment")
}

async fn owns_live_task(
    conn: &mut PgConnection,
    task: Uuid,
    owner: Uuid,
) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar(
        "select exists(select 1 from tasks where id = $1 and owner_id = $2 and deleted_at is null)",
    )
    .bind(task)
    .bind(owner)
    .fetch_one(conn)
    .await
}

/// The attachment, if it belongs to a live task of `owner`.
async fn find(
    conn: &mut PgConnection,
    task: Uuid,
    id: Uuid,
    owner: Uuid,
    lock: bool,
) -> Result<Option<AttachmentRow>, sqlx::Error> {
    let lock = if lock { " for update of a" } else { "" };
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "select {COLUMNS} from attachments a join tasks t on t.id = a.task_id
         where a.id = $1 and a.task_id = $2 and a.owner_id = $3 and t.deleted_at is null{lock}"
    )))
    .bind(id)
    .bind(task)
    .bind(owner)
    .fetch_optional(conn)
    .await
}

/// The name as given, without any folder part, control characters or surrounding space.
fn clean_filename(raw: &str) -> String {
    let base = raw.rsplit(['/', '\\']).next().unwrap_or_default();
    base.chars().filter(|c| !c.is_control()).collect::<String>().trim().to_owned()
}

/// `Content-Disposition: attachment` naming the file (RFC 6266): an ASCII fallback and the
/// exact name percent-encoded as UTF-8.
fn content_disposition(filename: &str) -> String {
    let fallback: String = filename
        .chars()
        .map(|c| if c.is_ascii_graphic() && c != '"' && c != '\\' || c == ' ' { c } else { '_' })
        .collect();
    let mut encoded = String::new();
    for byte in filename.bytes() {
        if byte.is_ascii_alphanumeric() || b"!#$&+-.^_`|~".contains(&byte) {
            encoded.push(char::from(byte));
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    format!("attachment; filename=\"{fallback}\"; filename*=UTF-8''{encoded}")
}

fn presigning(ttl: std::time::Duration) -> Result<PresigningConfig, ServerError> {
    PresigningConfig::expires_in(ttl).map_err(ServerError::internal)
}

/// A presigned GET of `key` that downloads as `disposition`.
async fn download_link(
    state: &AppState,
    key: &str,
    disposition: Option<String>,
    content_type: Option<&str>,
) -> Result<PresignedLink, ServerError> {
    let ttl = state.settings.attachments.download_url_ttl;
    let expires_at = Utc::now() + ttl;
    let request = state
        .s3
        .get_object()
        .bucket(&state.settings.s3.bucket)
        .key(key)
        .set_response_content_disposition(disposition)
        .set_response_content_type(content_type.map(str::to_owned))
        .presigned(presigning(ttl)?)
        .await
        .map_err(ServerError::internal)?;
    Ok(PresignedLink { url: request.uri().to_owned(), expires_at })
}

#[OpenApi(prefix_path = "/api/v1/tasks", tag = "ApiTags::Attachments")]
impl AttachmentsApi {
    /// Start an upload.
    ///
    /// Declare the file; the response holds the attachment (`pending`) and the one request
    /// that uploads it. The steps:
    ///
    /// 1. `POST /tasks/{id}/attachments` with `filename`, `content_type`, `size_bytes`.
    /// 2. Send `upload.method` to `upload.url` with every header of `upload.headers` and the
    ///    file as the body, before `upload.expires_at` (at most 15 minutes). The store
    ///    refuses a body of another length or type.
    /// 3. `POST /tasks/{id}/attachments/{aid}/complete`.
    /// 4. Poll `GET /tasks/{id}/attachments/{aid}` until `ready` (with a download link) or
    ///    `rejected` (with a reason).
    ///
    /// Types outside the allow list (by default PNG, JPEG, GIF, WebP, PDF, ZIP, plain text
    /// and CSV; never HTML, SVG or executables) and sizes over the limit are refused here.
    #[oai(path = "/:id/attachments", method = "post")]
    async fn create(
        &self,
        auth: BearerAuth,
        state: Data<&AppState>,
        id: Path<Uuid>,
        body: Json<NewAttachment>,
    ) -> Result<CreateResponse, AuthedError> {
        let owner = auth.0.id;
        let limits = &state.settings.attachments;
        let mut errors = Vec::new();
        let filename = clean_filename(&body.filename);
        if filename.is_empty() {
            errors.push(FieldError::new("filename", "required", "must name the file"));
        } else if filename.chars().count() > MAX_FILENAME_CHARS {
            errors.push(FieldError::new(
                "filename",
                "too_long",
                format!("must be at most {MAX_FILENAME_CHARS} characters"),
            ));
        }
        let content_type = storage::normalize_media_type(&body.content_type);
        if !limits.allowed_types.contains(&content_type) {
            errors.push(FieldError::new(
                "content_type",
                "type_not_allowed",
                format!(
                    "{content_type:?} is not allowed; allowed: {}",
                    limits.allowed_types.join(", ")
                ),
            ));
        }
        if body.size_bytes == 0 {
            errors.push(FieldError::new("size_bytes", "out_of_range", "must be at least 1"));
        } else if body.size_bytes > limits.max_bytes {
            errors.push(FieldError::new(
                "size_bytes",
                "too_large",
                format!("must be at most {} bytes", limits.max_bytes),
            ));
        }
        if !errors.is_empty() {
            return Ok(CreateResponse::Invalid(Json(Problem::validation(errors))));
        }
        let mut conn = state.db.acquire().await?;
        if !owns_live_task(&mut conn, id.0, owner).await? {
            return Ok(CreateResponse::NotFound(Json(task_not_found())));
        }
        let attachment = Uuid::now_v7();
        let upload_key = storage::upload_key(owner, id.0, attachment);
        let object_key = storage::attachment_key(owner, id.0, attachment);
        let size = i64::try_from(body.size_bytes).unwrap_or(i64::MAX);
        let disposition = content_disposition(&filename);
        let ttl = limits.upload_url_ttl;
        let expires_at = Utc::now() + ttl;
        let presigned = state
            .s3
            .put_object()
            .bucket(&state.settings.s3.bucket)
            .key(&upload_key)
            .content_type(&content_type)
            .content_length(size)
            .content_disposition(&disposition)
            .presigned(presigning(ttl)?)
            .await
            .map_err(ServerError::internal)?;
        let headers =
            presigned.headers().map(|(name, value)| (name.to_owned(), value.to_owned())).collect();
        let row: AttachmentRow = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "insert into attachments as a (id, task_id, owner_id, filename, content_type, declared_size, upload_key, object_key)
             values ($1, $2, $3, $4, $5, $6, $7, $8)
             returning {COLUMNS}"
        )))
        .bind(attachment)
        .bind(id.0)
        .bind(owner)
        .bind(&filename)
        .bind(&content_type)
        .bind(size)
        .bind(&upload_key)
        .bind(&object_key)
        .fetch_one(&mut *conn)
        .await?;
        let upload = UploadInstructions {
            method: presigned.method().to_owned(),
            url: presigned.uri().to_owned(),
            headers,
            expires_at,
        };
        Ok(CreateResponse::Created(Json(Box::new(CreatedAttachment {
            attachment: row.into(),
            upload,
        }))))
    }

    /// A task's attachments, newest first.
    ///
    /// `limit` 1-100 (default 20); `cursor` from `next_cursor` continues.
    #[oai(path = "/:id/attachments", method = "get")]
    async fn list(
        &self,
        auth: BearerAuth,
        state: Data<&AppState>,
        id: Path<Uuid>,
        limit: Query<Option<u32>>,
        cursor: Query<Option<String>>,
    ) -> Result<ListResponse, AuthedError> {
        let limit = limit.0.unwrap_or(20);
        let mut errors = Vec::new();
        if !(1..=100).contains(&limit) {
            errors.push(FieldError::new("limit", "out_of_range", "must be between 1 and 100"));
        }
        let before = match cursor.0.as_deref().map(super::id_cursor::decode) {
            None => None,
            Some(Some(before)) => Some(before),
            Some(None) => {
                errors.push(FieldError::new(
                    "cursor",
                    "invalid",
                    "is not a cursor from next_cursor",
                ));
                None
            }
        };
        if !errors.is_empty() {
            return Ok(ListResponse::Invalid(Json(Problem::validation(errors))));
        }
        let mut conn = state.db.acquire().await?;
        if !owns_live_task(&mut conn, id.0, auth.0.id).await? {
            return Ok(ListResponse::NotFound(Json(task_not_found())));
        }
        let mut rows: Vec<AttachmentRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "select {COLUMNS} from attachments a
             where a.task_id = $1 and ($2::uuid is null or a.id < $2)
             order by a.id desc limit $3"
        )))
        .bind(id.0)
        .bind(before)
        .bind(i64::from(limit) + 1)
        .fetch_all(&mut *conn)
        .await?;
        let more = rows.len() > limit as usize;
        rows.truncate(limit as usize);
        let next_cursor =
            if more { rows.last().map(|row| super::id_cursor::encode(row.id)) } else { None };
        Ok(ListResponse::Ok(Json(AttachmentList {
            data: rows.into_iter().map(AttachmentView::from).collect(),
            next_cursor,
        })))
    }

    /// One attachment; when `ready`, with short-lived download and thumbnail links.
    #[oai(path = "/:id/attachments/:aid", method = "get")]
    async fn get(
        &self,
        auth: BearerAuth,
        state: Data<&AppState>,
        id: Path<Uuid>,
        aid: Path<Uuid>,
    ) -> Result<GetResponse, AuthedError> {
        let mut conn = state.db.acquire().await?;
        let Some(row) = find(&mut conn, id.0, aid.0, auth.0.id, false).await? else {
            return Ok(GetResponse::NotFound(Json(not_found())));
        };
        drop(conn);
        let ready = row.status == "ready";
        let (key, thumbnail_key, disposition) =
            (row.object_key.clone(), row.thumbnail_key.clone(), content_disposition(&row.filename));
        let detected = row.detected_type.clone();
        let mut view = AttachmentView::from(row);
        if ready {
            view.download =
                Some(download_link(&state, &key, Some(disposition), detected.as_deref()).await?);
            if let Some(thumbnail) = thumbnail_key {
                view.thumbnail =
                    Some(download_link(&state, &thumbnail, None, Some("image/png")).await?);
            }
        }
        Ok(GetResponse::Ok(Json(view)))
    }

    /// Tell the server the upload is done; verification starts (`processing`).
    ///
    /// A job checks the object's size against the declaration and the limit, its magic
    /// bytes against the declared type, computes its SHA-256 and, for images, a thumbnail.
    /// It ends `ready`, or `rejected` with a reason (and the object deleted).
    #[oai(path = "/:id/attachments/:aid/complete", method = "post")]
    async fn complete(
        &self,
        auth: BearerAuth,
        state: Data<&AppState>,
        request_id: Data<&RequestId>,
        id: Path<Uuid>,
        aid: Path<Uuid>,
    ) -> Result<CompleteResponse, AuthedError> {
        let mut tx = state.db.begin().await?;
        let Some(row) = find(&mut tx, id.0, aid.0, auth.0.id, true).await? else {
            return Ok(CompleteResponse::NotFound(Json(not_found())));
        };
        match row.status.as_str() {
            "pending" => {}
            "processing" => return Ok(CompleteResponse::Accepted(Json(row.into()))),
            done => {
                let problem = Problem::new(
                    StatusCode::CONFLICT,
                    "already_processed",
                    format!("the attachment is already {done}"),
                );
                return Ok(CompleteResponse::Conflict(Json(problem)));
            }
        }
        let row: AttachmentRow = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "update attachments a set status = 'processing', updated_at = now() where a.id = $1 returning {COLUMNS}"
        )))
        .bind(row.id)
        .fetch_one(&mut *tx)
        .await?;
        tasklane_shared::outbox::enqueue(
            &mut tx,
            &ProcessUpload { attachment_id: row.id },
            Some(&request_id.0.0),
        )
        .await?;
        tx.commit().await?;
        Ok(CompleteResponse::Accepted(Json(row.into())))
    }

    /// Delete an attachment; its file (and thumbnail) are removed from the store by a job.
    #[oai(path = "/:id/attachments/:aid", method = "delete")]
    async fn delete(
        &self,
        auth: BearerAuth,
        state: Data<&AppState>,
        request_id: Data<&RequestId>,
        id: Path<Uuid>,
        aid: Path<Uuid>,
    ) -> Result<DeleteResponse, AuthedError> {
        let mut tx = state.db.begin().await?;
        let Some(row) = find(&mut tx, id.0, aid.0, auth.0.id, true).await? else {
            return Ok(DeleteResponse::NotFound(Json(not_found())));
        };
        sqlx::query("delete from attachments where id = $1").bind(row.id).execute(&mut *tx).await?;
        // Every key the attachment may have, whatever its state: the thumbnail's is fixed by
        // the object's, so it goes even if processing writes it after this commit (processing
        // also cleans up after itself then).
        let keys = storage::attachment_objects(&row.upload_key, &row.object_key).to_vec();
        tasklane_shared::outbox::enqueue(&mut tx, &DeleteObjects { keys }, Some(&request_id.0.0))
            .await?;
        tx.commit().await?;
        Ok(DeleteResponse::NoContent)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filenames_lose_folders_and_control_characters() {
        assert_eq!(clean_filename("../../etc/passwd"), "passwd");
        assert_eq!(clean_filename("C:\\Users\\me\\report.pdf"), "report.pdf");
        assert_eq!(clean_filename("  a\u{0}b\r\n.txt "), "ab.txt");
    }

    #[test]
    fn disposition_has_an_ascii_fallback_and_the_exact_name() {
        assert_eq!(
            content_disposition("plan \"v2\".png"),
            "attachment; filename=\"plan _v2_.png\"; filename*=UTF-8''plan%20%22v2%22.png"
        );
        assert_eq!(
            content_disposition("été.txt"),
            "attachment; filename=\"_t_.txt\"; filename*=UTF-8''%C3%A9t%C3%A9.txt"
        );
    }
}
