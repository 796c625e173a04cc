//! `mark_overdue` (every 5 minutes): open tasks whose due time passed before the tick become
//! overdue, each with an audit row (actor: the system) and a `task.overdue` event, in one
//! transaction.
//!
//! The event carries the task as clients see it, rendered by the domain's
//! [`tasks::event_data`] like every event the API records, never rebuilt here.

use apalis_core::error::BoxDynError;
use apalis_core::task::data::Data;
use sqlx::PgPool;
use tasklane_shared::domain::tasks::{self, TaskPriority, TaskRow, TaskStatus};
use tasklane_shared::jobs::MarkOverdue;
use tasklane_shared::{events, outbox};
use uuid::Uuid;

use crate::context::TaskLists;

pub async fn mark_overdue(
    job: MarkOverdue,
    db: Data<PgPool>,
    lists: Data<TaskLists>,
) -> Result<(), BoxDynError> {
    let mut tx = db.begin().await?;
    let marked = sqlx::query_as!(
        TaskRow,
        r#"update tasks set overdue = true, updated_at = now(), version = version + 1
           where deleted_at is null and status <> 'done' and not overdue and due_at < $1
           returning id, owner_id, title, description, status as "status: TaskStatus",
               priority as "priority: TaskPriority", tags, due_at, overdue, remind_at, completed_at,
               created_at, updated_at, deleted_at, version"#,
        job.tick,
    )
    .fetch_all(&mut *tx)
    .await?;
    if marked.is_empty() {
        tx.commit().await?;
        tracing::info!(users = 0, tick = %job.tick, "overdue tasks marked");
        return Ok(());
    }
    let ids: Vec<Uuid> = marked.iter().map(|task| task.id).collect();
    sqlx::query!(
        "insert into task_events (id, task_id, action, changes, actor_id)
         select uuid_generate_v7(), task_id, 'overdue', $2, null from unnest($1::uuid[]) as task_id",
        &ids,
        serde_json::Value::Object(tasks::overdue_changes()),
    )
    .execute(&mut *tx)
    .await?;
    // One task.overdue event per task (SPEC section 8).
    let events = marked.iter().map(|task| (task.owner_id, tasks::event_data(task, None))).collect();
    outbox::record_events(&mut tx, events::TASK_OVERDUE, events).await?;
    tx.commit().await?;
    let mut owners: Vec<Uuid> = marked.iter().map(|task| task.owner_id).collect();
    owners.sort_unstable();
    owners.dedup();
    lists.invalidate(&owners).await;
    tracing::info!(users = owners.len(), tick = %job.tick, "overdue tasks marked");
    Ok(())
}
