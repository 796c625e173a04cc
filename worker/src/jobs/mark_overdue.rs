//! `mark_overdue` (every 5 minutes): open tasks whose due time passed before the tick become
//! overdue, with an audit row each (actor: the system), in one statement.

use apalis_core::error::BoxDynError;
use apalis_core::task::data::Data;
use sqlx::PgPool;
use tasklane_shared::jobs::MarkOverdue;
use uuid::Uuid;

use crate::context::TaskLists;

pub async fn mark_overdue(
    job: MarkOverdue,
    db: Data<PgPool>,
    lists: Data<TaskLists>,
) -> Result<(), BoxDynError> {
    let owners: Vec<Uuid> = sqlx::query_scalar(
        "with marked as (
             update tasks set overdue = true, updated_at = now(), version = version + 1
             where deleted_at is null and status <> 'done' and not overdue and due_at < $1
             returning id, owner_id, jsonb_build_object(
                 'id', id, 'title', title, 'description', description, 'status', status,
                 'priority', (array['low', 'normal', 'high', 'urgent'])[priority + 1], 'tags', tags,
                 'due_at', due_at, 'overdue', overdue, 'completed_at', completed_at,
                 'created_at', created_at, 'updated_at', updated_at, 'deleted_at', deleted_at,
                 'version', version) as task
         ), audited as (
             insert into task_events (id, task_id, action, changes, actor_id)
             select uuid_generate_v7(), id, 'overdue', '{\"overdue\": {\"from\": false, \"to\": true}}'::jsonb, null
             from marked
         ), announced as (
             -- One task.overdue event per task (SPEC section 8), in this same statement.
             insert into outbox (id, queue, kind, payload, max_attempts)
             select uuid_generate_v7(), $2, $3,
                    jsonb_build_object('user_id', owner_id, 'at', now(), 'data', jsonb_build_object('task', task)),
                    1
             from marked
         )
         select distinct owner_id from marked",
    )
    .bind(job.tick)
    .bind(tasklane_shared::events::OUTBOX_QUEUE)
    .bind(tasklane_shared::events::TASK_OVERDUE)
    .fetch_all(&*db)
    .await?;
    lists.invalidate(&owners).await;
    tracing::info!(users = owners.len(), tick = %job.tick, "overdue tasks marked");
    Ok(())
}
