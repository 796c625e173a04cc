//! `/api/v1/tasks`: the domain API (SPEC section 5).
//!
//! Every change runs in one transaction with its audit entry; the user's cached lists are
//! invalidated after commit. Another user's task is 404 everywhere (no existence leak).

mod list;
mod model;
mod store;
mod writer;

pub use self::writer::TaskWriter;

use chrono::{DateTime, SubsecRound, Utc};
use poem::http::StatusCode;
use poem::web::Data;
use poem_openapi::param::{Header, Path, Query};
use poem_openapi::payload::Json;
use poem_openapi::types::MaybeUndefined;
use poem_openapi::{ApiResponse, Object, OpenApi};
use sqlx::PgConnection;
use tasklane_shared::events;
use uuid::Uuid;

use self::list::{Cursor, Filters};
use self::model::TASK_COLUMNS;
pub use self::model::{TaskPriority, TaskRow, TaskStatus, TaskView};
use crate::problem::{AuthedError, FieldError, Problem, ServerError};
use crate::raw_json::RawJson;
use crate::security::BearerAuth;
use crate::state::AppState;
use crate::tags::ApiTags;

pub struct TasksApi;

/// A new task. Unknown fields are refused (422): `owner_id`, `version`, timestamps and
/// `overdue` are the server's.
#[derive(Debug, Clone, Object)]
#[oai(deny_unknown_fields)]
pub struct CreateTaskRequest {
    /// 1-200 characters (trimmed).
    pub title: String,
    /// Up to 10,000 characters.
    pub description: Option<String>,
    /// Defaults to `todo`.
    pub status: Option<TaskStatus>,
    /// Defaults to `normal`.
    pub priority: Option<TaskPriority>,
    /// Up to 10, each 1-32 of `a-z 0-9 _ -`.
    pub tags: Option<Vec<String>>,
    pub due_at: Option<DateTime<Utc>>,
}

/// A JSON merge patch of a task: an absent field stays, `null` clears a nullable one.
#[derive(Debug, Clone, Object)]
#[oai(deny_unknown_fields)]
pub struct UpdateTaskRequest {
    pub title: MaybeUndefined<String>,
    pub description: MaybeUndefined<String>,
    pub status: MaybeUndefined<TaskStatus>,
    pub priority: MaybeUndefined<TaskPriority>,
    /// `null` clears every tag.
    pub tags: MaybeUndefined<Vec<String>>,
    pub due_at: MaybeUndefined<DateTime<Utc>>,
}

#[derive(Debug, Object)]
#[oai(deny_unknown_fields)]
pub struct BulkCreateRequest {
    /// 1 to 100 tasks, created together or not at all.
    pub tasks: Vec<CreateTaskRequest>,
}

#[derive(Debug, Object)]
pub struct TaskList {
    pub data: Vec<TaskView>,
    pub next_cursor: Option<String>,
}

/// A page of tasks. `next_cursor` continues in cursor mode; `page`, `total` and
/// `total_pages` are set in page mode.
#[derive(Debug, Object, serde::Serialize, serde::Deserialize)]
pub struct TaskPage {
    pub data: Vec<TaskView>,
    pub next_cursor: Option<String>,
    pub page: Option<u32>,
    pub total: Option<i64>,
    pub total_pages: Option<i64>,
}

/// Who changed a task.
#[derive(Debug, Object)]
pub struct Actor {
    /// `user` or `system` (a job).
    #[oai(rename = "type")]
    pub actor_type: String,
    pub id: Option<Uuid>,
}

/// One change of a task.
#[derive(Debug, Object)]
pub struct TaskEvent {
    /// create, update, delete, restore or overdue.
    pub action: String,
    /// `{field: {from, to}}`.
    pub changes: serde_json::Value,
    pub actor: Actor,
    pub at: DateTime<Utc>,
}

#[derive(ApiResponse)]
#[oai(bad_request_handler = "write_bad_request")]
pub enum CreateResponse {
    #[oai(status = 201)]
    Created(Json<TaskView>, #[oai(header = "ETag")] String),
    /// Malformed JSON.
    #[oai(status = 400, content_type = "application/problem+json")]
    BadRequest(Json<Problem>),
    /// A field is invalid or unknown; `errors` names it.
    #[oai(status = 422, content_type = "application/problem+json")]
    Invalid(Json<Problem>),
    /// Today's creation quota is used up; `Retry-After` is the time to the UTC day's end.
    #[oai(status = 429, content_type = "application/problem+json")]
    QuotaExceeded(Json<Problem>, #[oai(header = "Retry-After")] u64),
}

#[derive(ApiResponse)]
#[oai(bad_request_handler = "bulk_bad_request")]
pub enum BulkResponse {
    #[oai(status = 201)]
    Created(Json<TaskList>),
    /// Malformed JSON.
    #[oai(status = 400, content_type = "application/problem+json")]
    BadRequest(Json<Problem>),
    /// An item is invalid: `errors` names it as `tasks[i].field`. Nothing was created.
    #[oai(status = 422, content_type = "application/problem+json")]
    Invalid(Json<Problem>),
    /// The whole batch does not fit in today's quota. Nothing was created.
    #[oai(status = 429, content_type = "application/problem+json")]
    QuotaExceeded(Json<Problem>, #[oai(header = "Retry-After")] u64),
}

#[derive(ApiResponse)]
pub enum GetResponse {
    /// `X-Cache` says whether the server's cache answered (`hit`) or the database (`miss`).
    #[oai(status = 200)]
    Ok(
        RawJson<TaskView>,
        #[oai(header = "ETag")] String,
        #[oai(header = "Cache-Control")] String,
        #[oai(header = "X-Cache")] String,
    ),
    /// `If-None-Match` matched: the copy you have is current.
    #[oai(status = 304)]
    NotModified(
        #[oai(header = "ETag")] String,
        #[oai(header = "Cache-Control")] String,
        #[oai(header = "X-Cache")] String,
    ),
    /// No such task (or not yours).
    #[oai(status = 404, content_type = "application/problem+json")]
    NotFound(Json<Problem>),
}

#[derive(ApiResponse)]
#[oai(bad_request_handler = "patch_bad_request")]
pub enum PatchResponse {
    #[oai(status = 200)]
    Ok(Json<TaskView>, #[oai(header = "ETag")] String),
    /// Malformed JSON.
    #[oai(status = 400, content_type = "application/problem+json")]
    BadRequest(Json<Problem>),
    /// No such task (or not yours).
    #[oai(status = 404, content_type = "application/problem+json")]
    NotFound(Json<Problem>),
    /// `If-Match` names another version; `current_version` is the task's.
    #[oai(status = 412, content_type = "application/problem+json")]
    PreconditionFailed(Json<Problem>, #[oai(header = "ETag")] String),
    /// A field is invalid or unknown.
    #[oai(status = 422, content_type = "application/problem+json")]
    Invalid(Json<Problem>),
    /// `If-Match: "<version>"` is required, so a stale copy never overwrites a newer one.
    #[oai(status = 428, content_type = "application/problem+json")]
    PreconditionRequired(Json<Problem>),
}

#[derive(ApiResponse)]
pub enum DeleteResponse {
    /// In the trash (restorable for 30 days).
    #[oai(status = 204)]
    NoContent,
    /// No such live task (or not yours).
    #[oai(status = 404, content_type = "application/problem+json")]
    NotFound(Json<Problem>),
}

#[derive(ApiResponse)]
pub enum RestoreResponse {
    #[oai(status = 200)]
    Ok(Json<TaskView>, #[oai(header = "ETag")] String),
    /// No such task in the trash (or not yours).
    #[oai(status = 404, content_type = "application/problem+json")]
    NotFound(Json<Problem>),
}

#[derive(ApiResponse)]
pub enum HistoryResponse {
    #[oai(status = 200)]
    Ok(Json<Vec<TaskEvent>>),
    #[oai(status = 404, content_type = "application/problem+json")]
    NotFound(Json<Problem>),
}

#[derive(ApiResponse)]
pub enum ListResponse {
    #[oai(status = 200)]
    Ok(Json<TaskPage>, #[oai(header = "X-Cache")] String),
    /// `q` is used but the `task_search` flag is off for you (`feature_disabled`).
    #[oai(status = 403, content_type = "application/problem+json")]
    FeatureDisabled(Json<Problem>),
    /// A filter, sort or paging parameter is invalid.
    #[oai(status = 422, content_type = "application/problem+json")]
    Invalid(Json<Problem>),
}

/// poem-openapi's own parse errors: an unknown field is a 422 naming it, the rest a 400.
pub(crate) fn parse_problem(err: &poem::Error) -> Result<Problem, Problem> {
    let message = err.to_string();
    // poem-openapi says: unknown field `owner_id`.
    let Some((_, rest)) = message.split_once("unknown field `") else {
        return Ok(Problem::new(StatusCode::BAD_REQUEST, "bad_request", message));
    };
    let field = rest.split('`').next().unwrap_or_default().to_owned();
    let mut problem = Problem::validation(vec![FieldError::new(
        field.clone(),
        "unknown_field",
        "is not a field you can set",
    )]);
    problem.detail = format!("unknown field {field:?}: it is not a field you can set");
    Err(problem)
}

fn write_bad_request(err: poem::Error) -> CreateResponse {
    match parse_problem(&err) {
        Ok(bad) => CreateResponse::BadRequest(Json(bad)),
        Err(invalid) => CreateResponse::Invalid(Json(invalid)),
    }
}

fn bulk_bad_request(err: poem::Error) -> BulkResponse {
    match parse_problem(&err) {
        Ok(bad) => BulkResponse::BadRequest(Json(bad)),
        Err(invalid) => BulkResponse::Invalid(Json(invalid)),
    }
}

fn patch_bad_request(err: poem::Error) -> PatchResponse {
    match parse_problem(&err) {
        Ok(bad) => PatchResponse::BadRequest(Json(bad)),
        Err(invalid) => PatchResponse::Invalid(Json(invalid)),
    }
}

fn not_found() -> Problem {
    Problem::new(StatusCode::NOT_FOUND, "not_found", "no such task")
}

fn etag(version: i32) -> String {
    format!("\"{version}\"")
}

/// The version an `If-Match`/`If-None-Match` value names (`"3"` or `W/"3"`).
fn tag_version(raw: &str) -> Option<i32> {
    raw.trim().trim_start_matches("W/").trim_matches('"').parse().ok()
}

fn quota_problem(limit: u32) -> Problem {
    Problem::new(
        StatusCode::TOO_MANY_REQUESTS,
        "quota_exceeded",
        format!("the daily limit of {limit} task creations is reached; it resets at midnight UTC"),
    )
}

/// Validates a creation; `prefix` names the item in a bulk (`tasks[3].`).
fn new_row(
    prefix: &str,
    owner: Uuid,
    req: CreateTaskRequest,
    errors: &mut Vec<FieldError>,
) -> TaskRow {
    // At the database's precision, so the response and the event show what is stored.
    let now = Utc::now().trunc_subsecs(6);
    let status = req.status.unwrap_or(TaskStatus::Todo);
    TaskRow {
        id: Uuid::now_v7(),
        owner_id: owner,
        title: model::title(prefix, &req.title, errors),
        description: model::description(prefix, req.description, errors),
        status: status.as_str().to_owned(),
        priority: req.priority.unwrap_or(TaskPriority::Normal).rank(),
        tags: model::tags(prefix, req.tags.unwrap_or_default(), errors),
        due_at: req.due_at,
        overdue: false,
        completed_at: (status == TaskStatus::Done).then_some(now),
        created_at: now,
        updated_at: now,
        deleted_at: None,
        version: 1,
    }
}

/// Records the event of a change on its transaction: `{task, changes?}`.
async fn task_event(
    tx: &mut PgConnection,
    event_type: &str,
    task: &TaskRow,
    changes: Option<&serde_json::Map<String, serde_json::Value>>,
) -> Result<(), sqlx::Error> {
    let mut data = serde_json::json!({ "task": TaskView::from(task.clone()) });
    if let Some(changes) = changes {
        data["changes"] = serde_json::Value::Object(changes.clone());
    }
    events::record(tx, task.owner_id, event_type, data).await
}

/// Writes an audit entry on the change's transaction.
pub async fn audit(
    tx: &mut PgConnection,
    task: Uuid,
    action: &str,
    changes: serde_json::Map<String, serde_json::Value>,
    actor: Option<Uuid>,
) -> Result<(), sqlx::Error> {
    sqlx::query("insert into task_events (id, task_id, action, changes, actor_id) values ($1, $2, $3, $4, $5)")
        .bind(Uuid::now_v7())
        .bind(task)
        .bind(action)
        .bind(serde_json::Value::Object(changes))
        .bind(actor)
        .execute(tx)
        .await?;
    Ok(())
}

async fn find_live(
    tx: &mut PgConnection,
    id: Uuid,
    owner: Uuid,
    lock: bool,
) -> Result<Option<TaskRow>, sqlx::Error> {
    let lock = if lock { " for update" } else { "" };
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "select {TASK_COLUMNS} from tasks where id = $1 and owner_id = $2 and deleted_at is null{lock}"
    )))
    .bind(id)
    .bind(owner)
    .fetch_optional(tx)
    .await
}

#[OpenApi(prefix_path = "/api/v1/tasks", tag = "ApiTags::Tasks")]
impl TasksApi {
    /// Create a task.
    ///
    /// Counts against the daily creation quota (default 50 per UTC day); a refused or
    /// failed request uses none of it.
    #[oai(path = "/", method = "post")]
    async fn create(
        &self,
        auth: BearerAuth,
        state: Data<&AppState>,
        body: Json<CreateTaskRequest>,
    ) -> Result<CreateResponse, AuthedError> {
        let user = auth.0.id;
        let mut errors = Vec::new();
        let row = new_row("", user, body.0, &mut errors);
        if !errors.is_empty() {
            return Ok(CreateResponse::Invalid(Json(Problem::validation(errors))));
        }
        let Some(reservation) = store::reserve(&state, user, 1).await? else {
            return Ok(CreateResponse::QuotaExceeded(
                Json(quota_problem(state.settings.tasks_daily_quota)),
                store::seconds_to_reset(),
            ));
        };
        // The writer keeps the reservation once the task is committed, and gives it back
        // otherwise.
        let created = state.task_writer.create(vec![row], reservation).await?;
        let task = created
            .into_iter()
            .next()
            .ok_or_else(|| ServerError::internal("the writer handed back no task"))?;
        let tag = etag(task.version);
        Ok(CreateResponse::Created(Json(task.into()), tag))
    }

    /// Create 1-100 tasks at once, all or nothing.
    ///
    /// Errors name the item (`tasks[3].title`). The batch counts against the quota as a
    /// whole: it fits entirely or is refused.
    #[oai(path = "/bulk", method = "post")]
    async fn bulk(
        &self,
        auth: BearerAuth,
        state: Data<&AppState>,
        body: Json<BulkCreateRequest>,
    ) -> Result<BulkResponse, AuthedError> {
        let user = auth.0.id;
        let items = body.0.tasks;
        let mut errors = Vec::new();
        if items.is_empty() || items.len() > 100 {
            errors.push(FieldError::new("tasks", "invalid_length", "must hold 1 to 100 tasks"));
        }
        let rows: Vec<TaskRow> = items
            .into_iter()
            .enumerate()
            .map(|(i, item)| new_row(&format!("tasks[{i}]."), user, item, &mut errors))
            .collect();
        if !errors.is_empty() {
            return Ok(BulkResponse::Invalid(Json(Problem::validation(errors))));
        }
        let n = u32::try_from(rows.len()).unwrap_or(u32::MAX);
        let Some(reservation) = store::reserve(&state, user, n).await? else {
            return Ok(BulkResponse::QuotaExceeded(
                Json(quota_problem(state.settings.tasks_daily_quota)),
                store::seconds_to_reset(),
            ));
        };
        let tasks = state.task_writer.create(rows, reservation).await?;
        Ok(BulkResponse::Created(Json(TaskList {
            data: tasks.into_iter().map(TaskView::from).collect(),
            next_cursor: None,
        })))
    }

    /// One task, with its `ETag`; `If-None-Match` with the current tag gives 304.
    ///
    /// Kept 30 s in the server's cache and invalidated by any write of your tasks, like lists
    /// (`X-Cache: hit|miss`): a read after your change always sees it.
    #[oai(path = "/:id", method = "get")]
    async fn get(
        &self,
        auth: BearerAuth,
        state: Data<&AppState>,
        id: Path<Uuid>,
        #[oai(name = "If-None-Match")] if_none_match: Header<Option<String>>,
    ) -> Result<GetResponse, AuthedError> {
        let user = auth.0.id;
        let mut lookup = store::cached_task(&state, user, id.0).await;
        let (task, x_cache) = match lookup.hit.take() {
            Some(task) => (task, "hit"),
            None => {
                let mut conn = state.db.acquire().await?;
                let Some(row) = find_live(&mut conn, id.0, user, false).await? else {
                    return Ok(GetResponse::NotFound(Json(not_found())));
                };
                drop(conn);
                let task = store::CachedTask::render(&TaskView::from(row));
                store::store_task(&state, user, id.0, &lookup, &task).await;
                (task, "miss")
            }
        };
        let tag = etag(task.version);
        // Private (per user), and always revalidated: the ETag makes that cheap.
        let cache = "private, no-cache".to_owned();
        let matches = if_none_match.0.as_deref().is_some_and(|raw| {
            raw.split(',').any(|t| t.trim() == "*" || tag_version(t) == Some(task.version))
        });
        if matches {
            return Ok(GetResponse::NotModified(tag, cache, x_cache.to_owned()));
        }
        Ok(GetResponse::Ok(task.body, tag, cache, x_cache.to_owned()))
    }

    /// Change a task (JSON merge patch).
    ///
    /// Requires `If-Match: "<version>"` from a previous read: without it 428, with a stale
    /// version 412 (two concurrent changes of one version: exactly one wins). Absent fields
    /// stay; `null` clears `description`, `due_at` and `tags`. Setting `done` stamps
    /// `completed_at`; moving `due_at` into the future clears `overdue`.
    #[oai(path = "/:id", method = "patch")]
    async fn update(
        &self,
        auth: BearerAuth,
        state: Data<&AppState>,
        id: Path<Uuid>,
        #[oai(name = "If-Match")] if_match: Header<Option<String>>,
        body: Json<UpdateTaskRequest>,
    ) -> Result<PatchResponse, AuthedError> {
        let Some(expected) = if_match.0.as_deref() else {
            let problem = Problem::new(
                StatusCode::PRECONDITION_REQUIRED,
                "precondition_required",
                "send If-Match: \"<version>\" with the ETag of your copy",
            );
            return Ok(PatchResponse::PreconditionRequired(Json(problem)));
        };
        let user = auth.0.id;
        let mut tx = state.db.begin().await?;
        let Some(before) = find_live(&mut tx, id.0, user, true).await? else {
            return Ok(PatchResponse::NotFound(Json(not_found())));
        };
        if tag_version(expected) != Some(before.version) && expected.trim() != "*" {
            let mut problem = Problem::new(
                StatusCode::PRECONDITION_FAILED,
                "version_mismatch",
                format!(
                    "the task changed since your copy; its current version is {}",
                    before.version
                ),
            );
            problem.current_version = Some(before.version);
            return Ok(PatchResponse::PreconditionFailed(Json(problem), etag(before.version)));
        }
        let patch = body.0;
        let mut errors = Vec::new();
        let mut after = before.clone();
        match patch.title {
            MaybeUndefined::Value(title) => after.title = model::title("", &title, &mut errors),
            MaybeUndefined::Null => {
                errors.push(FieldError::new("title", "required", "cannot be null"))
            }
            MaybeUndefined::Undefined => {}
        }
        match patch.description {
            MaybeUndefined::Value(d) => {
                after.description = model::description("", Some(d), &mut errors)
            }
            MaybeUndefined::Null => after.description = None,
            MaybeUndefined::Undefined => {}
        }
        match patch.status {
            MaybeUndefined::Value(status) => after.status = status.as_str().to_owned(),
            MaybeUndefined::Null => {
                errors.push(FieldError::new("status", "required", "cannot be null"))
            }
            MaybeUndefined::Undefined => {}
        }
        match patch.priority {
            MaybeUndefined::Value(priority) => after.priority = priority.rank(),
            MaybeUndefined::Null => {
                errors.push(FieldError::new("priority", "required", "cannot be null"))
            }
            MaybeUndefined::Undefined => {}
        }
        match patch.tags {
            MaybeUndefined::Value(tags) => after.tags = model::tags("", tags, &mut errors),
            MaybeUndefined::Null => after.tags = Vec::new(),
            MaybeUndefined::Undefined => {}
        }
        match patch.due_at {
            MaybeUndefined::Value(due) => after.due_at = Some(due),
            MaybeUndefined::Null => after.due_at = None,
            MaybeUndefined::Undefined => {}
        }
        if !errors.is_empty() {
            return Ok(PatchResponse::Invalid(Json(Problem::validation(errors))));
        }
        let now = Utc::now();
        if after.status != before.status {
            after.completed_at = (after.status == TaskStatus::Done.as_str()).then_some(now);
        }
        if after.due_at != before.due_at && after.due_at.is_none_or(|due| due > now) {
            after.overdue = false;
        }
        let changes = before.diff(&after);
        if changes.is_empty() {
            tx.commit().await?;
            let tag = etag(before.version);
            return Ok(PatchResponse::Ok(Json(before.into()), tag));
        }
        let updated: TaskRow = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "update tasks set title = $3, description = $4, status = $5, priority = $6, tags = $7, due_at = $8,
                 overdue = $9, completed_at = $10, updated_at = now(), version = version + 1
             where id = $1 and owner_id = $2
             returning {TASK_COLUMNS}"
        )))
        .bind(before.id)
        .bind(user)
        .bind(&after.title)
        .bind(&after.description)
        .bind(&after.status)
        .bind(after.priority)
        .bind(&after.tags)
        .bind(after.due_at)
        .bind(after.overdue)
        .bind(after.completed_at)
        .fetch_one(&mut *tx)
        .await?;
        task_event(&mut tx, events::TASK_UPDATED, &updated, Some(&changes)).await?;
        audit(&mut tx, updated.id, "update", changes, Some(user)).await?;
        tx.commit().await?;
        store::invalidate(&state, user).await;
        let tag = etag(updated.version);
        Ok(PatchResponse::Ok(Json(updated.into()), tag))
    }

    /// Move a task to the trash. A daily job deletes tasks trashed over 30 days ago.
    #[oai(path = "/:id", method = "delete")]
    async fn delete(
        &self,
        auth: BearerAuth,
        state: Data<&AppState>,
        id: Path<Uuid>,
    ) -> Result<DeleteResponse, AuthedError> {
        let user = auth.0.id;
        let mut tx = state.db.begin().await?;
        let deleted: Option<DateTime<Utc>> = sqlx::query_scalar(
            "update tasks set deleted_at = now(), updated_at = now(), version = version + 1
             where id = $1 and owner_id = $2 and deleted_at is null returning deleted_at",
        )
        .bind(id.0)
        .bind(user)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(at) = deleted else {
            return Ok(DeleteResponse::NotFound(Json(not_found())));
        };
        let mut changes = serde_json::Map::new();
        changes.insert("deleted_at".into(), serde_json::json!({ "from": null, "to": at }));
        audit(&mut tx, id.0, "delete", changes, Some(user)).await?;
        events::record(&mut tx, user, events::TASK_DELETED, serde_json::json!({ "task_id": id.0 }))
            .await?;
        tx.commit().await?;
        store::invalidate(&state, user).await;
        Ok(DeleteResponse::NoContent)
    }

    /// Take a task out of the trash.
    #[oai(path = "/:id/restore", method = "post")]
    async fn restore(
        &self,
        auth: BearerAuth,
        state: Data<&AppState>,
        id: Path<Uuid>,
    ) -> Result<RestoreResponse, AuthedError> {
        let user = auth.0.id;
        let mut tx = state.db.begin().await?;
        let before: Option<DateTime<Utc>> =
            sqlx::query_scalar("select deleted_at from tasks where id = $1 and owner_id = $2 and deleted_at is not null for update")
                .bind(id.0)
                .bind(user)
                .fetch_optional(&mut *tx)
                .await?;
        let Some(deleted_at) = before else {
            return Ok(RestoreResponse::NotFound(Json(not_found())));
        };
        let task: TaskRow = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "update tasks set deleted_at = null, updated_at = now(), version = version + 1
             where id = $1 returning {TASK_COLUMNS}"
        )))
        .bind(id.0)
        .fetch_one(&mut *tx)
        .await?;
        let mut changes = serde_json::Map::new();
        changes.insert("deleted_at".into(), serde_json::json!({ "from": deleted_at, "to": null }));
        audit(&mut tx, id.0, "restore", changes, Some(user)).await?;
        task_event(&mut tx, events::TASK_RESTORED, &task, None).await?;
        tx.commit().await?;
        store::invalidate(&state, user).await;
        let tag = etag(task.version);
        Ok(RestoreResponse::Ok(Json(task.into()), tag))
    }

    /// A task's audit history, oldest first.
    #[oai(path = "/:id/history", method = "get")]
    async fn history(
        &self,
        auth: BearerAuth,
        state: Data<&AppState>,
        id: Path<Uuid>,
    ) -> Result<HistoryResponse, AuthedError> {
        let owned: bool = sqlx::query_scalar(
            "select exists(select 1 from tasks where id = $1 and owner_id = $2)",
        )
        .bind(id.0)
        .bind(auth.0.id)
        .fetch_one(&state.db)
        .await?;
        if !owned {
            return Ok(HistoryResponse::NotFound(Json(not_found())));
        }
        let rows: Vec<(String, serde_json::Value, Option<Uuid>, DateTime<Utc>)> =
            sqlx::query_as("select action, changes, actor_id, at from task_events where task_id = $1 order by at, id")
                .bind(id.0)
                .fetch_all(&state.db)
                .await?;
        let events = rows
            .into_iter()
            .map(|(action, changes, actor, at)| TaskEvent {
                action,
                changes,
                actor: Actor {
                    actor_type: if actor.is_some() { "user" } else { "system" }.into(),
                    id: actor,
                },
                at,
            })
            .collect();
        Ok(HistoryResponse::Ok(Json(events)))
    }

    /// List your tasks.
    ///
    /// Filters: `status` (comma list), `priority` (comma list), `tag`, `q` (full text over
    /// title and description), `due_before`, `due_after`, `overdue`, `deleted=true` (the
    /// trash). `sort`: comma list of `[-]created_at|updated_at|due_at|priority|title`
    /// (default `-created_at`), tie-broken by id. `limit` 1-100 (default 20) with either
    /// `cursor` (from `next_cursor`; keyset, stable while rows change) or `page` (from 1, adds
    /// totals), not both. `q` needs the `task_search` flag (403 `feature_disabled` otherwise). Responses are cached 30 s per user and query (`X-Cache`), and any
    /// change of yours invalidates them.
    #[oai(path = "/", method = "get")]
    #[allow(clippy::too_many_arguments)] // one per query parameter
    async fn list(
        &self,
        auth: BearerAuth,
        state: Data<&AppState>,
        status: Query<Option<String>>,
        priority: Query<Option<String>>,
        tag: Query<Option<String>>,
        q: Query<Option<String>>,
        due_before: Query<Option<DateTime<Utc>>>,
        due_after: Query<Option<DateTime<Utc>>>,
        overdue: Query<Option<bool>>,
        deleted: Query<Option<bool>>,
        sort: Query<Option<String>>,
        limit: Query<Option<u32>>,
        cursor: Query<Option<String>>,
        page: Query<Option<u32>>,
    ) -> Result<ListResponse, AuthedError> {
        let mut errors = Vec::new();
        let mut filters = Filters {
            tag: tag.0.filter(|t| !t.is_empty()),
            q: q.0.map(|q| q.trim().to_owned()).filter(|q| !q.is_empty()),
            due_before: due_before.0,
            due_after: due_after.0,
            overdue: overdue.0,
            deleted: deleted.0.unwrap_or(false),
            ..Filters::default()
        };
        for raw in
            status.0.iter().flat_map(|s| s.split(',')).map(str::trim).filter(|s| !s.is_empty())
        {
            match TaskStatus::parse(raw) {
                Some(s) => filters.statuses.push(s),
                None => errors.push(FieldError::new(
                    "status",
                    "invalid",
                    format!("{raw:?} is not todo, in_progress or done"),
                )),
            }
        }
        for raw in
            priority.0.iter().flat_map(|s| s.split(',')).map(str::trim).filter(|s| !s.is_empty())
        {
            match TaskPriority::parse(raw) {
                Some(p) => filters.priorities.push(p),
                None => errors.push(FieldError::new(
                    "priority",
                    "invalid",
                    format!("{raw:?} is not low, normal, high or urgent"),
                )),
            }
        }
        let keys = match list::parse_sort(sort.0.as_deref()) {
            Ok(keys) => keys,
            Err(error) => {
                errors.push(error);
                Vec::new()
            }
        };
        let limit = limit.0.unwrap_or(20);
        if !(1..=100).contains(&limit) {
            errors.push(FieldError::new("limit", "out_of_range", "must be between 1 and 100"));
        }
        if cursor.0.is_some() && page.0.is_some() {
            errors.push(FieldError::new("page", "conflict", "use either cursor or page, not both"));
        }
        if page.0 == Some(0) {
            errors.push(FieldError::new("page", "out_of_range", "pages start at 1"));
        }
        let after = match cursor.0.as_deref() {
            Some(raw) if !keys.is_empty() => match Cursor::parse(raw, &keys) {
                Ok(c) => Some(c),
                Err(error) => {
                    errors.push(error);
                    None
                }
            },
            _ => None,
        };
        if !errors.is_empty() {
            return Ok(ListResponse::Invalid(Json(Problem::validation(errors))));
        }
        if filters.q.is_some()
            && !crate::routes::flags::is_on(&state.db, crate::routes::flags::TASK_SEARCH, auth.0.id)
                .await?
        {
            let problem = Problem::new(
                StatusCode::FORBIDDEN,
                "feature_disabled",
                "full-text search (task_search) is not enabled for you",
            );
            return Ok(ListResponse::FeatureDisabled(Json(problem)));
        }

        let normalized = format!(
            "{:?}|{}|{limit}|{:?}|{:?}",
            filters,
            list::sort_signature(&keys),
            cursor.0,
            page.0
        );
        let key = store::cache_key(&state, auth.0.id, &normalized).await;
        if let Some(key) = &key
            && let Some(body) = store::cached(&state, key).await
            && let Ok(page) = serde_json::from_str::<TaskPage>(&body)
        {
            return Ok(ListResponse::Ok(Json(page), "hit".into()));
        }
        let (rows, next_cursor, total) =
            list::page(&state.db, auth.0.id, &filters, &keys, limit, after.as_ref(), page.0)
                .await?;
        let data = rows.into_iter().map(TaskView::from).collect();
        let body = TaskPage {
            data,
            next_cursor,
            page: page.0,
            total,
            total_pages: total.map(|t| (t + i64::from(limit) - 1) / i64::from(limit)),
        };
        if let (Some(key), Ok(json)) = (&key, serde_json::to_string(&body)) {
            store::store(&state, key, json.as_str()).await;
        }
        Ok(ListResponse::Ok(Json(body), "miss".into()))
    }
}
