//! `/api/v1/tasks`: the domain API (SPEC section 5).
//!
//! Every change runs in one transaction with its audit entry; the user's cached lists are
//! invalidated after commit. Another user's task is 404 everywhere (no existence leak). The
//! handlers check and answer; the work is in [`crate::services::tasks`].
//!
//! # Layout
//! - [`types`]: the requests and responses.
//! - [`validate`]: the checks of a new task, a patch and the list's parameters.

pub mod types;
pub mod validate;

use chrono::{DateTime, Utc};
use poem::http::StatusCode;
use poem::web::Data;
use poem_openapi::OpenApi;
use poem_openapi::param::{Header, Path, Query};
use poem_openapi::payload::Json;
use tasklane_shared::domain::tasks::{TaskRow, TaskView};
use uuid::Uuid;

pub use self::types::*;
use self::validate::ListParams;
use crate::problem::{AuthedError, Checked, FieldError, Problem, ServerError};
use crate::raw_json::RawJson;
use crate::security::BearerAuth;
use crate::services::tasks::cache::{CachedTask, TaskCache};
use crate::services::tasks::quota::{self, CreationQuota};
use crate::services::tasks::{list, records};
use crate::state::AppState;
use crate::tags::ApiTags;

pub struct TasksApi;

fn cache(state: &AppState) -> TaskCache<'_> {
    TaskCache::new(&state.redis, &state.keys, &state.task_cache)
}

fn creation_quota(state: &AppState) -> CreationQuota<'_> {
    CreationQuota::new(&state.redis, &state.keys, state.settings.tasks_daily_quota)
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

fn precondition_required() -> Problem {
    Problem::new(
        StatusCode::PRECONDITION_REQUIRED,
        "precondition_required",
        "send If-Match: \"<version>\" with the ETag of your copy",
    )
}

fn version_mismatch(current: i32) -> Problem {
    let mut problem = Problem::new(
        StatusCode::PRECONDITION_FAILED,
        "version_mismatch",
        format!("the task changed since your copy; its current version is {current}"),
    );
    problem.current_version = Some(current);
    problem
}

/// `GET /tasks/{id}`'s answer with the task found: its `ETag`, and 304 when `If-None-Match`
/// names it (the hot reads answer with it too).
pub(crate) fn task_answer(
    task: CachedTask,
    x_cache: &str,
    if_none_match: Option<&str>,
) -> GetResponse {
    let tag = etag(task.version);
    // Private (per user), and always revalidated: the ETag makes that cheap.
    let cache_control = "private, no-cache".to_owned();
    let matches = if_none_match.is_some_and(|raw| {
        raw.split(',').any(|t| t.trim() == "*" || tag_version(t) == Some(task.version))
    });
    if matches {
        return GetResponse::NotModified(tag, cache_control, x_cache.to_owned());
    }
    GetResponse::Ok(task.body, tag, cache_control, x_cache.to_owned())
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
    ) -> Result<Checked<CreateResponse>, AuthedError> {
        let response: Result<CreateResponse, AuthedError> = async move {
            let user = auth.0.id;
            let mut errors = Vec::new();
            let row = validate::new_row("", user, body.0, &mut errors);
            if !errors.is_empty() {
                return Ok(CreateResponse::Invalid(Json(Problem::validation(errors))));
            }
            let Some(reservation) = creation_quota(&state).reserve(user, 1).await? else {
                return Ok(CreateResponse::QuotaExceeded(
                    Json(quota_problem(state.settings.tasks_daily_quota)),
                    quota::seconds_to_reset(),
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
        .await;
        response.map(Checked::Ran)
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
    ) -> Result<Checked<BulkResponse>, AuthedError> {
        let response: Result<BulkResponse, AuthedError> = async move {
            let user = auth.0.id;
            let items = body.0.tasks;
            let mut errors = Vec::new();
            if items.is_empty() || items.len() > 100 {
                errors.push(FieldError::new("tasks", "invalid_length", "must hold 1 to 100 tasks"));
            }
            let rows: Vec<TaskRow> = items
                .into_iter()
                .enumerate()
                .map(|(i, item)| {
                    validate::new_row(&format!("tasks[{i}]."), user, item, &mut errors)
                })
                .collect();
            if !errors.is_empty() {
                return Ok(BulkResponse::Invalid(Json(Problem::validation(errors))));
            }
            let n = u32::try_from(rows.len()).unwrap_or(u32::MAX);
            let Some(reservation) = creation_quota(&state).reserve(user, n).await? else {
                return Ok(BulkResponse::QuotaExceeded(
                    Json(quota_problem(state.settings.tasks_daily_quota)),
                    quota::seconds_to_reset(),
                ));
            };
            let tasks = state.task_writer.create(rows, reservation).await?;
            Ok(BulkResponse::Created(Json(TaskList {
                data: tasks.into_iter().map(TaskView::from).collect(),
                next_cursor: None,
            })))
        }
        .await;
        response.map(Checked::Ran)
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
        let cache = cache(&state);
        let mut lookup = cache.task(user, id.0).await;
        let (task, x_cache) = match lookup.hit.take() {
            Some(task) => (task, "hit"),
            None => {
                let mut conn = state.db.acquire().await?;
                let Some(row) = records::find(&mut conn, id.0, user).await? else {
                    return Ok(GetResponse::NotFound(Json(not_found())));
                };
                drop(conn);
                let task = CachedTask::render(&TaskView::from(row));
                cache.store_task(user, id.0, &lookup, &task).await;
                (task, "miss")
            }
        };
        Ok(task_answer(task, x_cache, if_none_match.0.as_deref()))
    }

    /// Change a task (JSON merge patch).
    ///
    /// The body is checked first (422 for an invalid one, whatever the headers). Then
    /// `If-Match: "<version>"` from a previous read is required: without it (or empty) 428,
    /// with a stale version 412 (two concurrent changes of one version: exactly one wins),
    /// and 404 comes before 412 for a task that is not yours. Absent fields
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
    ) -> Result<Checked<PatchResponse>, AuthedError> {
        let response: Result<PatchResponse, AuthedError> = async move {
            // The body first: a patch that could never apply is 422 whatever the precondition.
            let mut errors = Vec::new();
            let patch = validate::patch(body.0, &mut errors);
            if !errors.is_empty() {
                return Ok(PatchResponse::Invalid(Json(Problem::validation(errors))));
            }
            // An empty `If-Match` names no version: as good as none.
            let Some(expected) = if_match.0.as_deref().filter(|v| !v.trim().is_empty()) else {
                return Ok(PatchResponse::PreconditionRequired(Json(precondition_required())));
            };
            let user = auth.0.id;
            let mut tx = state.db.begin().await?;
            let Some(before) = records::find_for_update(&mut tx, id.0, user).await? else {
                return Ok(PatchResponse::NotFound(Json(not_found())));
            };
            if tag_version(expected) != Some(before.version) && expected.trim() != "*" {
                let problem = version_mismatch(before.version);
                return Ok(PatchResponse::PreconditionFailed(Json(problem), etag(before.version)));
            }
            let after = validate::patched(&before, patch);
            let changes = before.diff(&after);
            if changes.is_empty() {
                tx.commit().await?;
                let tag = etag(before.version);
                return Ok(PatchResponse::Ok(Json(before.into()), tag));
            }
            let updated = records::save(&mut tx, user, &after, changes).await?;
            tx.commit().await?;
            cache(&state).invalidate(user).await;
            let tag = etag(updated.version);
            Ok(PatchResponse::Ok(Json(updated.into()), tag))
        }
        .await;
        response.map(Checked::Ran)
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
        if !records::trash(&mut tx, id.0, user).await? {
            return Ok(DeleteResponse::NotFound(Json(not_found())));
        }
        tx.commit().await?;
        cache(&state).invalidate(user).await;
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
        let Some(task) = records::restore(&mut tx, id.0, user).await? else {
            return Ok(RestoreResponse::NotFound(Json(not_found())));
        };
        tx.commit().await?;
        cache(&state).invalidate(user).await;
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
        let Some(entries) = records::history(&state.db, id.0, auth.0.id).await? else {
            return Ok(HistoryResponse::NotFound(Json(not_found())));
        };
        let events = entries
            .into_iter()
            .map(|entry| TaskEvent {
                action: entry.action,
                changes: entry.changes,
                actor: Actor {
                    actor_type: if entry.actor_id.is_some() { "user" } else { "system" }.into(),
                    id: entry.actor_id,
                },
                at: entry.at,
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
        let user = auth.0.id;
        let params = ListParams {
            status: status.0,
            priority: priority.0,
            tag: tag.0,
            q: q.0,
            due_before: due_before.0,
            due_after: due_after.0,
            overdue: overdue.0,
            deleted: deleted.0,
            sort: sort.0,
            limit: limit.0,
            cursor: cursor.0,
            page: page.0,
        };
        let request = match validate::list_request(params) {
            Ok(request) => request,
            Err(errors) => return Ok(ListResponse::Invalid(Json(Problem::validation(errors)))),
        };
        if request.filters.q.is_some()
            && !crate::services::flags::is_on(&state.db, crate::services::flags::TASK_SEARCH, user)
                .await?
        {
            let problem = Problem::new(
                StatusCode::FORBIDDEN,
                "feature_disabled",
                "full-text search (task_search) is not enabled for you",
            );
            return Ok(ListResponse::FeatureDisabled(Json(problem)));
        }

        let cache = cache(&state);
        let normalized = request.normalized();
        let mut lookup = cache.list(user, &normalized).await;
        if let Some(body) = lookup.hit.take() {
            return Ok(ListResponse::Ok(body, "hit".into()));
        }
        let limit = request.limit;
        let (rows, next_cursor, total) = list::page(
            &state.db,
            user,
            &request.filters,
            &request.keys,
            limit,
            request.after.as_ref(),
            request.page,
        )
        .await?;
        let body = RawJson::render(&TaskPage {
            data: rows.into_iter().map(TaskView::from).collect(),
            next_cursor,
            page: request.page,
            total,
            total_pages: total.map(|t| (t + i64::from(limit) - 1) / i64::from(limit)),
        });
        cache.store_list(user, &normalized, &lookup, &body).await;
        Ok(ListResponse::Ok(body, "miss".into()))
    }
}
