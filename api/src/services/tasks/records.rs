//! The task rows a request reads and changes: each change runs on the caller's transaction
//! with its audit entry and its event, so all three commit together or not at all.
//!
//! Creation is not here: it goes through the group-committing [`super::TaskWriter`].

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};
use sqlx::{PgConnection, PgPool};
use tasklane_shared::domain::tasks::{self, TaskPriority, TaskRow, TaskStatus};
use tasklane_shared::jobs::SendReminder;
use tasklane_shared::{events, outbox};
use uuid::Uuid;

/// One entry of a task's audit history.
pub struct AuditEntry {
    pub action: String,
    /// `{field: {from, to}}`.
    pub changes: Value,
    /// The user who acted; `None` for the system (a job).
    pub actor_id: Option<Uuid>,
    pub at: DateTime<Utc>,
}

/// Live (not trashed) task `id` of `owner`.
pub async fn find(
    conn: &mut PgConnection,
    id: Uuid,
    owner: Uuid,
) -> Result<Option<TaskRow>, sqlx::Error> {
    sqlx::query_as!(
        TaskRow,
        r#"select id, owner_id, title, description, status as "status: TaskStatus",
               priority as "priority: TaskPriority", tags, due_at, overdue, remind_at, completed_at,
               created_at, updated_at, deleted_at, version
           from tasks where id = $1 and owner_id = $2 and deleted_at is null"#,
        id,
        owner,
    )
    .fetch_optional(conn)
    .await
}

/// Like [`find`], locking the row until the transaction ends (a change reads, then writes).
pub async fn find_for_update(
    conn: &mut PgConnection,
    id: Uuid,
    owner: Uuid,
) -> Result<Option<TaskRow>, sqlx::Error> {
    sqlx::query_as!(
        TaskRow,
        r#"select id, owner_id, title, description, status as "status: TaskStatus",
               priority as "priority: TaskPriority", tags, due_at, overdue, remind_at, completed_at,
               created_at, updated_at, deleted_at, version
           from tasks where id = $1 and owner_id = $2 and deleted_at is null
           for update"#,
        id,
        owner,
    )
    .fetch_optional(conn)
    .await
}

/// Writes the user's fields of `after` (its version moves on), with the `task.updated`
/// event and the audit entry of `changes`; returns the task as stored.
pub async fn save(
    conn: &mut PgConnection,
    user: Uuid,
    after: &TaskRow,
    changes: Map<String, Value>,
) -> Result<TaskRow, sqlx::Error> {
    let updated = sqlx::query_as!(
        TaskRow,
        r#"update tasks set title = $3, description = $4, status = $5, priority = $6, tags = $7,
               due_at = $8, overdue = $9, completed_at = $10, remind_at = $11, updated_at = now(),
               version = version + 1
           where id = $1 and owner_id = $2
           returning id, owner_id, title, description, status as "status: TaskStatus",
               priority as "priority: TaskPriority", tags, due_at, overdue, remind_at, completed_at,
               created_at, updated_at, deleted_at, version"#,
        after.id,
        user,
        after.title,
        after.description,
        after.status as TaskStatus,
        after.priority as TaskPriority,
        &after.tags,
        after.due_at,
        after.overdue,
        after.completed_at,
        after.remind_at,
    )
    .fetch_one(&mut *conn)
    .await?;
    if changes.contains_key("remind_at") {
        remind(conn, &updated).await?;
    }
    let data = tasks::event_data(&updated, Some(&changes));
    outbox::record_event(conn, user, events::TASK_UPDATED, data).await?;
    audit(conn, updated.id, "update", changes, Some(user)).await?;
    Ok(updated)
}

/// Enqueues the reminder of a task whose `remind_at` was just set or moved: a delayed
/// `send_reminder` job due then. Nothing cancels the job of an earlier time: it finds the
/// time no longer the task's and sends nothing (as after the task is done or deleted).
pub async fn remind(conn: &mut PgConnection, task: &TaskRow) -> Result<(), sqlx::Error> {
    let Some(at) = task.remind_at else {
        return Ok(());
    };
    let job = SendReminder { task_id: task.id, owner_id: task.owner_id, remind_at: at };
    outbox::enqueue_at(conn, &job, None, at).await?;
    Ok(())
}

/// Moves live task `id` of `owner` to the trash, with its audit entry and `task.deleted`
/// event; `false` when there is no such live task.
pub async fn trash(conn: &mut PgConnection, id: Uuid, owner: Uuid) -> Result<bool, sqlx::Error> {
    let deleted = sqlx::query_scalar!(
        r#"update tasks set deleted_at = now(), updated_at = now(), version = version + 1
           where id = $1 and owner_id = $2 and deleted_at is null
           returning deleted_at as "deleted_at!""#,
        id,
        owner,
    )
    .fetch_optional(&mut *conn)
    .await?;
    let Some(at) = deleted else {
        return Ok(false);
    };
    let mut changes = Map::new();
    changes.insert("deleted_at".into(), serde_json::json!({ "from": null, "to": at }));
    audit(conn, id, "delete", changes, Some(owner)).await?;
    outbox::record_event(conn, owner, events::TASK_DELETED, serde_json::json!({ "task_id": id }))
        .await?;
    Ok(true)
}

/// Takes task `id` of `owner` out of the trash, with its audit entry and `task.restored`
/// event; `None` when it is not in the trash.
pub async fn restore(
    conn: &mut PgConnection,
    id: Uuid,
    owner: Uuid,
) -> Result<Option<TaskRow>, sqlx::Error> {
    let trashed = sqlx::query_scalar!(
        r#"select deleted_at as "deleted_at!" from tasks
           where id = $1 and owner_id = $2 and deleted_at is not null
           for update"#,
        id,
        owner,
    )
    .fetch_optional(&mut *conn)
    .await?;
    let Some(deleted_at) = trashed else {
        return Ok(None);
    };
    let task = sqlx::query_as!(
        TaskRow,
        r#"update tasks set deleted_at = null, updated_at = now(), version = version + 1
           where id = $1
           returning id, owner_id, title, description, status as "status: TaskStatus",
               priority as "priority: TaskPriority", tags, due_at, overdue, remind_at, completed_at,
               created_at, updated_at, deleted_at, version"#,
        id,
    )
    .fetch_one(&mut *conn)
    .await?;
    let mut changes = Map::new();
    changes.insert("deleted_at".into(), serde_json::json!({ "from": deleted_at, "to": null }));
    audit(conn, id, "restore", changes, Some(owner)).await?;
    outbox::record_event(conn, owner, events::TASK_RESTORED, tasks::event_data(&task, None))
        .await?;
    Ok(Some(task))
}

/// Task `id`'s audit history, oldest first; `None` when `owner` has no such task (live or
/// trashed).
pub async fn history(
    db: &PgPool,
    id: Uuid,
    owner: Uuid,
) -> Result<Option<Vec<AuditEntry>>, sqlx::Error> {
    let owned = sqlx::query_scalar!(
        r#"select exists(select 1 from tasks where id = $1 and owner_id = $2) as "owned!""#,
        id,
        owner,
    )
    .fetch_one(db)
    .await?;
    if !owned {
        return Ok(None);
    }
    let entries = sqlx::query_as!(
        AuditEntry,
        "select action, changes, actor_id, at from task_events where task_id = $1 order by at, id",
        id,
    )
    .fetch_all(db)
    .await?;
    Ok(Some(entries))
}

/// Writes an audit entry on the change's transaction.
pub async fn audit(
    conn: &mut PgConnection,
    task: Uuid,
    action: &str,
    changes: Map<String, Value>,
    actor: Option<Uuid>,
) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "insert into task_events (id, task_id, action, changes, actor_id) values ($1, $2, $3, $4, $5)",
        Uuid::now_v7(),
        task,
        action,
        Value::Object(changes),
        actor,
    )
    .execute(conn)
    .await?;
    Ok(())
}
