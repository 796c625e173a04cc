//! `purge_deleted` (daily): tasks in the trash for over 30 days are deleted for good, with
//! their history.

use apalis_core::error::BoxDynError;
use apalis_core::task::data::Data;
use sqlx::PgPool;
use tasklane_shared::jobs::{PurgeDeleted, TRASH_RETENTION_DAYS};
use uuid::Uuid;

use crate::app::TaskLists;

pub async fn purge_deleted(job: PurgeDeleted, db: Data<PgPool>, lists: Data<TaskLists>) -> Result<(), BoxDynError> {
    let owners: Vec<Uuid> = sqlx::query_scalar(
        "with purged as (
             delete from tasks where deleted_at < $1 - make_interval(days => $2) returning owner_id
         )
         select distinct owner_id from purged",
    )
    .bind(job.tick)
    .bind(TRASH_RETENTION_DAYS)
    .fetch_all(&*db)
    .await?;
    // Their cached trash lists showed these tasks.
    lists.invalidate(&owners).await;
    tracing::info!(users = owners.len(), tick = %job.tick, "trash purged");
    Ok(())
}
