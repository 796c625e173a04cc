//! `purge_deleted` (daily): tasks in the trash for over 30 days are deleted for good, with
//! their history.

use apalis_core::error::BoxDynError;
use apalis_core::task::data::Data;
use sqlx::PgPool;
use tasklane_shared::jobs::{PurgeDeleted, TRASH_RETENTION_DAYS};

pub async fn purge_deleted(job: PurgeDeleted, db: Data<PgPool>) -> Result<(), BoxDynError> {
    let purged = sqlx::query("delete from tasks where deleted_at < $1 - make_interval(days => $2)")
        .bind(job.tick)
        .bind(TRASH_RETENTION_DAYS)
        .execute(&*db)
        .await?
        .rows_affected();
    tracing::info!(purged, tick = %job.tick, "trash purged");
    Ok(())
}
