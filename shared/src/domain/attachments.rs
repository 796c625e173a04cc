//! An attachment (SPEC section 6): its states, why one is refused, and the two ways
//! verification ends, written once for the jobs that end it.
//!
//! An attachment goes `pending` (the client uploads) -> `processing` (`complete` was called)
//! -> `ready` or `rejected`. Only a `processing` attachment is made ready or rejected, so a
//! late or repeated attempt never overwrites a verdict, and each verdict records the owner's
//! event (`attachment.ready` / `attachment.rejected`) on the same transaction. Both
//! `process_upload` and the `expire_uploads` sweep reject through [`reject`], so a client
//! hears of every rejection.

use serde_json::Value;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::{events, outbox};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, sqlx::Type)]
#[sqlx(type_name = "text", rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(poem_openapi::Enum))]
#[cfg_attr(feature = "openapi", oai(rename_all = "snake_case"))]
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
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Processing => "processing",
            Self::Ready => "ready",
            Self::Rejected => "rejected",
        }
    }
}

/// Why an attachment is refused; stored as its `reject_reason`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, sqlx::Type)]
#[sqlx(type_name = "text", rename_all = "snake_case")]
pub enum RejectReason {
    /// `complete` was called but nothing was uploaded.
    NotUploaded,
    /// Over the configured limit.
    TooLarge,
    /// Another size than declared.
    SizeMismatch,
    /// The content's magic bytes are not the declared type's.
    TypeMismatch,
    /// Declared as an image, but it does not decode.
    InvalidImage,
    /// Verification kept failing, or died with its worker.
    ProcessingFailed,
}

impl RejectReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NotUploaded => "not_uploaded",
            Self::TooLarge => "too_large",
            Self::SizeMismatch => "size_mismatch",
            Self::TypeMismatch => "type_mismatch",
            Self::InvalidImage => "invalid_image",
            Self::ProcessingFailed => "processing_failed",
        }
    }
}

/// An attachment whose verification ended: whose it is, and where its objects are (the
/// caller deletes what is no longer needed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settled {
    pub id: Uuid,
    pub task_id: Uuid,
    pub owner_id: Uuid,
    pub upload_key: String,
    pub object_key: String,
}

/// What verification found in an upload.
#[derive(Debug, Clone)]
pub struct Verified {
    pub size: i64,
    /// Hex SHA-256 of the content.
    pub sha256: String,
    pub detected_type: String,
    pub thumbnail_key: Option<String>,
}

/// Makes attachment `id` `ready` with what verification found, and records its owner's
/// `attachment.ready` event. `None` when it is no longer `processing` (deleted meanwhile, or
/// settled by an earlier attempt).
pub async fn mark_ready(
    conn: &mut PgConnection,
    id: Uuid,
    verified: &Verified,
) -> Result<Option<Settled>, sqlx::Error> {
    let ready = sqlx::query_as!(
        Settled,
        "update attachments set status = 'ready', size_bytes = $2, sha256 = $3, detected_type = $4,
             thumbnail_key = $5, updated_at = now()
         where id = $1 and status = 'processing'
         returning id, task_id, owner_id, upload_key, object_key",
        id,
        verified.size,
        verified.sha256,
        verified.detected_type,
        verified.thumbnail_key,
    )
    .fetch_optional(&mut *conn)
    .await?;
    if let Some(ready) = &ready {
        let data = event_data(ready, AttachmentStatus::Ready, None);
        outbox::record_event(conn, ready.owner_id, events::ATTACHMENT_READY, data).await?;
    }
    Ok(ready)
}

/// Rejects those of `ids` that are still `processing` for `reason`, and records each
/// owner's `attachment.rejected` event; returns the ones it rejected. Their objects are the
/// caller's to delete (at once, or through `delete_objects` jobs on the same transaction).
pub async fn reject(
    conn: &mut PgConnection,
    ids: &[Uuid],
    reason: RejectReason,
) -> Result<Vec<Settled>, sqlx::Error> {
    let rejected = sqlx::query_as!(
        Settled,
        "update attachments set status = 'rejected', reject_reason = $2, updated_at = now()
         where id = any($1) and status = 'processing'
         returning id, task_id, owner_id, upload_key, object_key",
        ids,
        reason as RejectReason,
    )
    .fetch_all(&mut *conn)
    .await?;
    for attachment in &rejected {
        let data = event_data(attachment, AttachmentStatus::Rejected, Some(reason));
        outbox::record_event(conn, attachment.owner_id, events::ATTACHMENT_REJECTED, data).await?;
    }
    Ok(rejected)
}

/// The `data` of an `attachment.ready` / `attachment.rejected` event.
pub fn event_data(
    attachment: &Settled,
    status: AttachmentStatus,
    reason: Option<RejectReason>,
) -> Value {
    serde_json::json!({
        "task_id": attachment.task_id,
        "attachment_id": attachment.id,
        "status": status.as_str(),
        "reject_reason": reason.map(RejectReason::as_str),
    })
}
