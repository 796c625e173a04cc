//! `prune_sent_emails`: bounds the `sent_emails` idempotency table (daily).

use apalis_core::error::BoxDynError;
use apalis_core::task::data::Data;
use sqlx::PgPool;
use tasklane_shared::jobs::{PruneSentEmails, SENT_EMAIL_RETENTION_DAYS};

/// Idempotent: relative to the tick, so a rerun deletes nothing new.
pub async fn prune_sent_emails(job: PruneSentEmails, db: Data<PgPool>) -> Result<(), BoxDynError> {
    let deleted = sqlx::query!(
        "delete from sent_emails where sent_at < $1::timestamptz - make_interval(days => $2)",
        job.tick,
        SENT_EMAIL_RETENTION_DAYS,
    )
    .execute(&*db)
    .await?
    .rows_affected();
    tracing::info!(deleted, tick = %job.tick, "pruned sent-email records");
    Ok(())
}
