//! The requests and responses of `/api/v1/tasks`, as the OpenAPI document shows them.

use chrono::{DateTime, Utc};
use poem::http::StatusCode;
use poem_openapi::payload::Json;
use poem_openapi::types::MaybeUndefined;
use poem_openapi::{ApiResponse, Object};
use tasklane_shared::domain::tasks::{TaskPriority, TaskStatus, TaskView};
use uuid::Uuid;

use crate::problem::{FieldError, Problem};
use crate::raw_json::RawJson;

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
    /// When to email a reminder of the task: in the future, within 5 years.
    pub remind_at: Option<DateTime<Utc>>,
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
    /// Moves the reminder (in the future, within 5 years); `null` drops it.
    pub remind_at: MaybeUndefined<DateTime<Utc>>,
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
#[derive(Debug, Object)]
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
    Ok(RawJson<TaskPage>, #[oai(header = "X-Cache")] String),
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
