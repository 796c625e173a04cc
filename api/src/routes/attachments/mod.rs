//! `/api/v1/tasks/{id}/attachments`: files on tasks, uploaded straight to the object store
//! (SPEC section 6).
//!
//! The API never carries the bytes. It checks the declaration, picks the object key under
//! the owner's prefix and presigns one PUT that signs the content type, length and
//! disposition, so the store itself refuses anything else. `complete` hands the object to the
//! `process_upload` job through the outbox. Downloads go through the API, by signed links
//! handed out only once the attachment is `ready` ([`download`]), so every one carries the
//! API's security headers. Only the owner of a live (not trashed) task reaches any of it.
//!
//! # Layout
//! - [`types`]: the requests and responses.
//! - [`validate`]: the checks of a declaration and of the list's parameters.
//! - [`presign`]: the presigned upload and the download's `Content-Disposition`.
//! - [`download`]: the routes the download links lead to, which stream the objects.

pub mod download;
pub mod presign;
pub mod types;
pub mod validate;

use chrono::Utc;
use poem::http::StatusCode;
use poem::web::Data;
use poem_openapi::OpenApi;
use poem_openapi::param::{Path, Query};
use poem_openapi::payload::Json;
use tasklane_shared::domain::attachments::AttachmentStatus;
use tasklane_shared::storage;
use uuid::Uuid;

pub use self::types::*;
use crate::http::RequestId;
use crate::problem::{AuthedError, Checked, Problem};
use crate::security::BearerAuth;
use crate::services::attachments::{self as records, NewAttachment as NewRow};
use crate::services::download_links::{DownloadTarget, LinkTarget};
use crate::state::AppState;
use crate::tags::ApiTags;

pub struct AttachmentsApi;

fn task_not_found() -> Problem {
    Problem::new(StatusCode::NOT_FOUND, "not_found", "no such task")
}

fn not_found() -> Problem {
    Problem::new(StatusCode::NOT_FOUND, "not_found", "no such attachment")
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
    /// 5. Follow `download.url` (no bearer token needed) before `download.expires_at`.
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
    ) -> Result<Checked<CreateResponse>, AuthedError> {
        let response: Result<CreateResponse, AuthedError> = async move {
            let owner = auth.0.id;
            let declared = match validate::declaration(&body, &state.settings.attachments) {
                Ok(declared) => declared,
                Err(errors) => {
                    return Ok(CreateResponse::Invalid(Json(Problem::validation(errors))));
                }
            };
            let mut conn = state.db.acquire().await?;
            if !records::owns_live_task(&mut conn, id.0, owner).await? {
                return Ok(CreateResponse::NotFound(Json(task_not_found())));
            }
            let attachment = Uuid::now_v7();
            let upload_key = storage::upload_key(owner, id.0, attachment);
            let object_key = storage::attachment_key(owner, id.0, attachment);
            let disposition = presign::content_disposition(&declared.filename);
            let upload = presign::upload(
                &state,
                presign::Upload {
                    key: &upload_key,
                    content_type: &declared.content_type,
                    size: declared.size,
                    disposition: &disposition,
                },
            )
            .await?;
            let new = NewRow {
                id: attachment,
                task_id: id.0,
                owner_id: owner,
                filename: &declared.filename,
                content_type: &declared.content_type,
                declared_size: declared.size,
                upload_key: &upload_key,
                object_key: &object_key,
            };
            let row = records::insert(&mut conn, &new).await?;
            Ok(CreateResponse::Created(Json(Box::new(CreatedAttachment {
                attachment: row.into(),
                upload,
            }))))
        }
        .await;
        response.map(Checked::Ran)
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
        let (limit, before) = match validate::page(limit.0, cursor.0.as_deref()) {
            Ok(page) => page,
            Err(errors) => return Ok(ListResponse::Invalid(Json(Problem::validation(errors)))),
        };
        let mut conn = state.db.acquire().await?;
        if !records::owns_live_task(&mut conn, id.0, auth.0.id).await? {
            return Ok(ListResponse::NotFound(Json(task_not_found())));
        }
        let mut rows = records::page(&mut conn, id.0, before, i64::from(limit) + 1).await?;
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
    ///
    /// The links lead to this API (`GET .../{aid}/content` and `.../thumbnail`), work
    /// without a bearer token until their `expires_at`, and serve the file with
    /// `X-Content-Type-Options: nosniff` and a sandboxing `Content-Security-Policy`.
    #[oai(path = "/:id/attachments/:aid", method = "get")]
    async fn get(
        &self,
        auth: BearerAuth,
        state: Data<&AppState>,
        id: Path<Uuid>,
        aid: Path<Uuid>,
    ) -> Result<GetResponse, AuthedError> {
        let mut conn = state.db.acquire().await?;
        let Some(row) = records::find(&mut conn, id.0, aid.0, auth.0.id).await? else {
            return Ok(GetResponse::NotFound(Json(not_found())));
        };
        drop(conn);
        let ready = row.status == AttachmentStatus::Ready;
        let has_thumbnail = row.thumbnail_key.is_some();
        let mut view = AttachmentView::from(row);
        if ready {
            let now = Utc::now();
            let link = |target| {
                let what = LinkTarget { task: id.0, attachment: aid.0, target };
                PresignedLink::from(state.downloads.link(what, now))
            };
            view.download = Some(link(DownloadTarget::File));
            if has_thumbnail {
                view.thumbnail = Some(link(DownloadTarget::Thumbnail));
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
        let Some(row) = records::find_for_update(&mut tx, id.0, aid.0, auth.0.id).await? else {
            return Ok(CompleteResponse::NotFound(Json(not_found())));
        };
        match row.status {
            AttachmentStatus::Pending => {}
            AttachmentStatus::Processing => {
                return Ok(CompleteResponse::Accepted(Json(row.into())));
            }
            done @ (AttachmentStatus::Ready | AttachmentStatus::Rejected) => {
                let problem = Problem::new(
                    StatusCode::CONFLICT,
                    "already_processed",
                    format!("the attachment is already {}", done.as_str()),
                );
                return Ok(CompleteResponse::Conflict(Json(problem)));
            }
        }
        let row =
            records::start_processing(&mut tx, row.id, auth.0.id, Some(&request_id.0.0)).await?;
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
        let Some(row) = records::find_for_update(&mut tx, id.0, aid.0, auth.0.id).await? else {
            return Ok(DeleteResponse::NotFound(Json(not_found())));
        };
        records::delete(&mut tx, &row, Some(&request_id.0.0)).await?;
        tx.commit().await?;
        Ok(DeleteResponse::NoContent)
    }
}
