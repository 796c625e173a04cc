//! Attachment rows on the API's side (SPEC section 6): declaring one, reading it, handing
//! it to verification and deleting it. Only the owner of a live (not trashed) task reaches
//! its attachments, so every read here is scoped to one. How verification ends is the
//! domain's ([`tasklane_shared::domain::attachments`]), run by the worker.

use chrono::{DateTime, Utc};
use sqlx::PgConnection;
use tasklane_shared::domain::attachments::AttachmentStatus;
use tasklane_shared::jobs::ProcessUpload;
use tasklane_shared::storage;
use uuid::Uuid;

/// A row of `attachments`.
#[derive(Debug)]
pub struct AttachmentRow {
    pub id: Uuid,
    pub task_id: Uuid,
    pub filename: String,
    pub content_type: String,
    pub declared_size: i64,
    pub upload_key: String,
    pub object_key: String,
    pub status: AttachmentStatus,
    pub reject_reason: Option<String>,
    pub size_bytes: Option<i64>,
    pub sha256: Option<String>,
    pub detected_type: Option<String>,
    pub thumbnail_key: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// A declaration that passed the checks, with the keys the server chose.
pub struct NewAttachment<'a> {
    pub id: Uuid,
    pub task_id: Uuid,
    pub owner_id: Uuid,
    pub filename: &'a str,
    pub content_type: &'a str,
    pub declared_size: i64,
    pub upload_key: &'a str,
    pub object_key: &'a str,
}

/// Whether `owner` has live task `task`.
pub async fn owns_live_task(
    conn: &mut PgConnection,
    task: Uuid,
    owner: Uuid,
) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar!(
        r#"select exists(select 1 from tasks where id = $1 and owner_id = $2 and deleted_at is null) as "exists!""#,
        task,
        owner,
    )
    .fetch_one(conn)
    .await
}

/// The attachment, if it belongs to live task `task` of `owner`.
pub async fn find(
    conn: &mut PgConnection,
    task: Uuid,
    id: Uuid,
    owner: Uuid,
) -> Result<Option<AttachmentRow>, sqlx::Error> {
    sqlx::query_as!(
        AttachmentRow,
        r#"select a.id, a.task_id, a.filename, a.content_type, a.declared_size, a.upload_key,
               a.object_key, a.status as "status: AttachmentStatus", a.reject_reason, a.size_bytes,
               a.sha256, a.detected_type, a.thumbnail_key, a.created_at, a.updated_at
           from attachments a join tasks t on t.id = a.task_id
           where a.id = $1 and a.task_id = $2 and a.owner_id = $3 and t.deleted_at is null"#,
        id,
        task,
        owner,
    )
    .fetch_optional(conn)
    .await
}

/// What a download link serves: a `ready` attachment of a live task.
#[derive(Debug)]
pub struct Downloadable {
    pub filename: String,
    pub object_key: String,
    pub thumbnail_key: Option<String>,
    pub detected_type: Option<String>,
}

/// The attachment behind a download link, if it is still `ready` on a live task. The link's
/// signature stands in for the owner: only the owner was ever handed it.
pub async fn find_downloadable(
    conn: &mut PgConnection,
    task: Uuid,
    id: Uuid,
) -> Result<Option<Downloadable>, sqlx::Error> {
    sqlx::query_as!(
        Downloadable,
        r#"select a.filename, a.object_key, a.thumbnail_key, a.detected_type
           from attachments a join tasks t on t.id = a.task_id
           where a.id = $1 and a.task_id = $2 and a.status = 'ready' and t.deleted_at is null"#,
        id,
        task,
    )
    .fetch_optional(conn)
    .await
}

/// Like [`find`], locking the attachment until the transaction ends.
pub async fn find_for_update(
    conn: &mut PgConnection,
    task: Uuid,
    id: Uuid,
    owner: Uuid,
) -> Result<Option<AttachmentRow>, sqlx::Error> {
    sqlx::query_as!(
        AttachmentRow,
        r#"select a.id, a.task_id, a.filename, a.content_type, a.declared_size, a.upload_key,
               a.object_key, a.status as "status: AttachmentStatus", a.reject_reason, a.size_bytes,
               a.sha256, a.detected_type, a.thumbnail_key, a.created_at, a.updated_at
           from attachments a join tasks t on t.id = a.task_id
           where a.id = $1 and a.task_id = $2 and a.owner_id = $3 and t.deleted_at is null
           for update of a"#,
        id,
        task,
        owner,
    )
    .fetch_optional(conn)
    .await
}

/// Records a declared attachment (`pending`).
pub async fn insert(
    conn: &mut PgConnection,
    new: &NewAttachment<'_>,
) -> Result<AttachmentRow, sqlx::Error> {
    sqlx::query_as!(
        AttachmentRow,
        r#"insert into attachments (id, task_id, owner_id, filename, content_type, declared_size,
               upload_key, object_key)
           values ($1, $2, $3, $4, $5, $6, $7, $8)
           returning id, task_id, filename, content_type, declared_size, upload_key, object_key,
               status as "status: AttachmentStatus", reject_reason, size_bytes, sha256,
               detected_type, thumbnail_key, created_at, updated_at"#,
        new.id,
        new.task_id,
        new.owner_id,
        new.filename,
        new.content_type,
        new.declared_size,
        new.upload_key,
        new.object_key,
    )
    .fetch_one(conn)
    .await
}

/// Up to `limit` attachments of `task` older than `before` (by id), newest first.
pub async fn page(
    conn: &mut PgConnection,
    task: Uuid,
    before: Option<Uuid>,
    limit: i64,
) -> Result<Vec<AttachmentRow>, sqlx::Error> {
    sqlx::query_as!(
        AttachmentRow,
        r#"select id, task_id, filename, content_type, declared_size, upload_key, object_key,
               status as "status: AttachmentStatus", reject_reason, size_bytes, sha256,
               detected_type, thumbnail_key, created_at, updated_at
           from attachments
           where task_id = $1 and ($2::uuid is null or id < $2)
           order by id desc limit $3"#,
        task,
        before,
        limit,
    )
    .fetch_all(conn)
    .await
}

/// `pending` -> `processing`, with the `process_upload` job on the same transaction; the job
/// names `owner`, whose uploads take turns with everyone else's.
pub async fn start_processing(
    conn: &mut PgConnection,
    id: Uuid,
    owner: Uuid,
    request_id: Option<&str>,
) -> Result<AttachmentRow, sqlx::Error> {
    let row = sqlx::query_as!(
        AttachmentRow,
        r#"update attachments set status = 'processing', updated_at = now() where id = $1
           returning id, task_id, filename, content_type, declared_size, upload_key, object_key,
               status as "status: AttachmentStatus", reject_reason, size_bytes, sha256,
               detected_type, thumbnail_key, created_at, updated_at"#,
        id,
    )
    .fetch_one(&mut *conn)
    .await?;
    let job = ProcessUpload { attachment_id: row.id, owner_id: Some(owner) };
    tasklane_shared::outbox::enqueue(conn, &job, request_id).await?;
    Ok(row)
}

/// Deletes the attachment, and queues the deletion of every object it may have on the same
/// transaction.
pub async fn delete(
    conn: &mut PgConnection,
    row: &AttachmentRow,
    request_id: Option<&str>,
) -> Result<(), sqlx::Error> {
    sqlx::query!("delete from attachments where id = $1", row.id).execute(&mut *conn).await?;
    // Every key the attachment may have, whatever its state: the thumbnail's is fixed by
    // the object's, so it goes even if processing writes it after this commit (processing
    // also cleans up after itself then).
    let keys = storage::attachment_objects(&row.upload_key, &row.object_key);
    storage::delete_later(conn, &keys, request_id).await
}
