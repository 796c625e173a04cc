//! `purge_deleted` (daily): tasks in the trash for over 30 days are deleted for good, with
//! their history and attachments. The attachments' objects are removed by `delete_objects`
//! jobs written in the same transaction, so a purged task never leaves files behind.

use apalis_core::error::BoxDynError;
use apalis_core::task::data::Data;
use sqlx::PgPool;
use tasklane_shared::jobs::{PurgeDeleted, TRASH_RETENTION_DAYS};
use tasklane_shared::storage;
use uuid::Uuid;

use crate::context::TaskLists;

pub async fn purge_deleted(
    job: PurgeDeleted,
    db: Data<PgPool>,
    lists: Data<TaskLists>,
) -> Result<(), BoxDynError> {
    let mut tx = db.begin().await?;
    // Locked first, so a restore racing the purge either wins or waits and finds nothing.
    let purged = sqlx::query!(
        "select id, owner_id from tasks where deleted_at < $1::timestamptz - make_interval(days => $2) for update",
        job.tick,
        TRASH_RETENTION_DAYS,
    )
    .fetch_all(&mut *tx)
    .await?;
    let task_ids: Vec<Uuid> = purged.iter().map(|task| task.id).collect();
    let objects = sqlx::query!(
        "select upload_key, object_key from attachments where task_id = any($1)",
        &task_ids,
    )
    .fetch_all(&mut *tx)
    .await?;
    // Attachments and history go with their tasks (on delete cascade).
    sqlx::query!("delete from tasks where id = any($1)", &task_ids).execute(&mut *tx).await?;
    let keys: Vec<String> = objects
        .iter()
        .flat_map(|row| storage::attachment_objects(&row.upload_key, &row.object_key))
        .collect();
    storage::delete_later(&mut tx, &keys, None).await?;
    tx.commit().await?;
    let mut owners: Vec<Uuid> = purged.iter().map(|task| task.owner_id).collect();
    owners.sort_unstable();
    owners.dedup();
    // Their cached trash lists showed these tasks.
    lists.invalidate(&owners).await;
    tracing::info!(tasks = purged.len(), objects = keys.len(), users = owners.len(), tick = %job.tick, "trash purged");
    Ok(())
}
