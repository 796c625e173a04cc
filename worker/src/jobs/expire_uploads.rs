//! `expire_uploads` (every 10 minutes): the two ways an attachment can stop moving.
//!
//! - `pending` past its upload URL's expiry plus a grace period: the client never called
//!   `complete`. The row goes, and whatever it may have uploaded is deleted.
//! - `processing` for over an hour: the last `process_upload` attempt died with its worker
//!   (a failure it saw itself would have rejected it already). It is rejected as
//!   `processing_failed` through the domain's [`attachments::reject`], which tells its owner
//!   (`attachment.rejected`), and its objects are deleted.
//!
//! Both happen in one transaction with the `delete_objects` jobs they need, so a crash
//! leaves either nothing done or everything queued.

use apalis_core::error::BoxDynError;
use apalis_core::task::data::Data;
use sqlx::PgPool;
use tasklane_shared::config::AttachmentSettings;
use tasklane_shared::domain::attachments::{self, RejectReason};
use tasklane_shared::jobs::{
    ABANDONED_UPLOAD_GRACE_MINUTES, ExpireUploads, PROCESSING_DEADLINE_MINUTES,
};
use tasklane_shared::storage;

pub async fn expire_uploads(
    job: ExpireUploads,
    db: Data<PgPool>,
    limits: Data<AttachmentSettings>,
) -> Result<(), BoxDynError> {
    let upload_ttl_secs = i32::try_from(limits.upload_url_ttl.as_secs()).unwrap_or(i32::MAX);
    let mut tx = db.begin().await?;
    let abandoned = sqlx::query!(
        "delete from attachments
         where status = 'pending'
           and created_at < $1::timestamptz - make_interval(secs => $2) - make_interval(mins => $3)
         returning upload_key, object_key",
        job.tick,
        f64::from(upload_ttl_secs),
        ABANDONED_UPLOAD_GRACE_MINUTES,
    )
    .fetch_all(&mut *tx)
    .await?;
    let stuck = sqlx::query_scalar!(
        "select id from attachments
         where status = 'processing' and updated_at < $1::timestamptz - make_interval(mins => $2)
         for update",
        job.tick,
        PROCESSING_DEADLINE_MINUTES,
    )
    .fetch_all(&mut *tx)
    .await?;
    let rejected = attachments::reject(&mut tx, &stuck, RejectReason::ProcessingFailed).await?;
    let keys: Vec<String> = abandoned
        .iter()
        .map(|row| (&row.upload_key, &row.object_key))
        .chain(rejected.iter().map(|row| (&row.upload_key, &row.object_key)))
        .flat_map(|(upload, object)| storage::attachment_objects(upload, object))
        .collect();
    storage::delete_later(&mut tx, &keys, None).await?;
    tx.commit().await?;
    tracing::info!(abandoned = abandoned.len(), stuck = rejected.len(), tick = %job.tick, "uploads expired");
    Ok(())
}
