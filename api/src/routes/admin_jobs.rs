//! `/api/v1/admin/queues`, `/admin/jobs`, `/admin/schedules`: the job queues seen and steered
//! from Swagger UI (admins only). Reads come straight from the Redis store; nothing here
//! changes a job except retrying a dead one ([`super::admin_ops`] has the other writes).

use chrono::{DateTime, Utc};
use poem::http::StatusCode;
use poem::web::Data;
use poem_openapi::param::{Path, Query};
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Object, OpenApi};
use tasklane_shared::domain::jobs::JobState;
use tasklane_shared::jobs::{self, Queue};
use tasklane_shared::queue::breaker::HeldKind;
use tasklane_shared::schedules;

use crate::problem::{AuthedError, FieldError, Problem, ServerError};
use crate::routes::job_view::JobView;
use crate::security::BearerAuth;
use crate::services::audit;
use crate::state::AppState;
use crate::tags::ApiTags;

pub struct AdminJobsApi;

/// The state of a queue right now.
#[derive(Debug, Object)]
pub struct QueueStats {
    pub queue: String,
    /// Waiting to run.
    pub pending: u64,
    /// Claimed by a worker.
    pub running: u64,
    /// Waiting out a retry backoff.
    pub scheduled: u64,
    /// Failed attempts (errors and expired leases) in the last hour.
    pub failed_last_hour: u64,
    /// Out of attempts; kept 7 days, retryable.
    pub dead: u64,
    /// Finished and still kept (24 h).
    pub done: u64,
    /// Seconds the oldest pending job has waited.
    pub oldest_pending_age_seconds: f64,
    /// Paused by an operator: no worker starts its jobs until it is resumed.
    pub paused: bool,
    /// Kinds of this queue held because a dependency is down: their jobs wait, attempts
    /// uncounted, until a probe finds it back (SPEC section 9).
    pub held: Vec<HeldKindView>,
}

/// A job kind held by a worker's circuit breaker.
#[derive(Debug, Object)]
pub struct HeldKindView {
    pub kind: String,
    /// What is down: `smtp`, `s3` or `postgres`.
    pub dependency: String,
    /// When it was first found down.
    pub since: Option<DateTime<Utc>>,
    /// The last error that said so.
    pub error: String,
    /// The worker that reported it last.
    pub worker: String,
}

impl From<&HeldKind> for HeldKindView {
    fn from(held: &HeldKind) -> Self {
        Self {
            kind: held.kind.clone(),
            dependency: held.dependency.clone(),
            since: DateTime::from_timestamp_millis(held.since_ms),
            error: held.error.clone(),
            worker: held.worker.clone(),
        }
    }
}

#[derive(Debug, Object)]
pub struct QueueOverview {
    pub queues: Vec<QueueStats>,
    /// Rows in the outbox not yet moved to Redis.
    pub outbox_backlog: i64,
}

#[derive(Debug, Object)]
pub struct JobPage {
    pub data: Vec<JobView>,
    pub next_cursor: Option<String>,
}

/// A schedule of the worker fleet.
#[derive(Debug, Object)]
pub struct ScheduleView {
    pub kind: String,
    pub queue: String,
    /// Cron with seconds (`sec min hour day month weekday`), after `TASKLANE_CRON_<KIND>`.
    pub cron: String,
    /// The scheduled time of the last tick that was enqueued.
    pub last_run: Option<DateTime<Utc>>,
    pub next_run: Option<DateTime<Utc>>,
    /// Paused by an operator: its ticks enqueue nothing until it is resumed.
    pub paused: bool,
}

#[derive(ApiResponse)]
pub enum OverviewResponse {
    #[oai(status = 200)]
    Ok(Json<QueueOverview>),
    /// The caller is not an admin.
    #[oai(status = 403, content_type = "application/problem+json")]
    Forbidden(Json<Problem>),
}

#[derive(ApiResponse)]
pub enum JobsResponse {
    #[oai(status = 200)]
    Ok(Json<JobPage>),
    /// An unknown queue or kind, or a bad limit or cursor.
    #[oai(status = 422, content_type = "application/problem+json")]
    Invalid(Json<Problem>),
    /// The caller is not an admin.
    #[oai(status = 403, content_type = "application/problem+json")]
    Forbidden(Json<Problem>),
}

#[derive(ApiResponse)]
pub enum JobResponse {
    #[oai(status = 200)]
    Ok(Json<JobView>),
    /// The caller is not an admin.
    #[oai(status = 403, content_type = "application/problem+json")]
    Forbidden(Json<Problem>),
    /// No such job (or it expired: done jobs are kept 24 h, dead ones 7 days).
    #[oai(status = 404, content_type = "application/problem+json")]
    NotFound(Json<Problem>),
}

#[derive(ApiResponse)]
pub enum RetryResponse {
    /// Back in its queue with a fresh set of attempts.
    #[oai(status = 202)]
    Accepted(Json<JobView>),
    /// The caller is not an admin.
    #[oai(status = 403, content_type = "application/problem+json")]
    Forbidden(Json<Problem>),
    /// No such job.
    #[oai(status = 404, content_type = "application/problem+json")]
    NotFound(Json<Problem>),
    /// Only dead jobs can be retried.
    #[oai(status = 409, content_type = "application/problem+json")]
    Conflict(Json<Problem>),
}

#[derive(ApiResponse)]
pub enum SchedulesResponse {
    #[oai(status = 200)]
    Ok(Json<Vec<ScheduleView>>),
    /// The caller is not an admin.
    #[oai(status = 403, content_type = "application/problem+json")]
    Forbidden(Json<Problem>),
}

/// The queues a `queue` filter names: all of them when absent; none, with a field error,
/// when it names no queue.
pub(crate) fn queue_filter(name: Option<&str>, errors: &mut Vec<FieldError>) -> Vec<Queue> {
    match name.map(|name| (name, Queue::named(name))) {
        None => Queue::ALL.to_vec(),
        Some((_, Some(queue))) => vec![queue],
        Some((_, None)) => {
            errors.push(FieldError::new(
                "queue",
                "unknown",
                "must be emails, uploads or maintenance",
            ));
            Vec::new()
        }
    }
}

fn not_found() -> Problem {
    Problem::new(
        StatusCode::NOT_FOUND,
        "not_found",
        "no such job (done jobs are kept 24 h, dead ones 7 days)",
    )
}

#[OpenApi(prefix_path = "/api/v1/admin", tag = "ApiTags::Admin")]
impl AdminJobsApi {
    /// Queue overview: per queue, jobs by state, the age of the oldest pending job, and the
    /// kinds held because a dependency is down.
    #[oai(path = "/queues", method = "get")]
    async fn queues(
        &self,
        auth: BearerAuth,
        state: Data<&AppState>,
    ) -> Result<OverviewResponse, AuthedError> {
        if let Err(problem) = auth.require_admin() {
            return Ok(OverviewResponse::Forbidden(Json(problem)));
        }
        let held = state.queue.held_kinds().await?;
        let controls = tasklane_shared::controls::all(&state.db).await?;
        let paused: Vec<&str> = controls
            .iter()
            .filter(|control| control.scope == "queue" && control.paused)
            .map(|control| control.name.as_str())
            .collect();
        let mut queues = Vec::new();
        for queue in Queue::ALL {
            let depth = state.queue.depth(queue).await?;
            queues.push(QueueStats {
                queue: queue.as_str().into(),
                pending: depth.pending,
                running: depth.running,
                scheduled: depth.scheduled,
                failed_last_hour: state.queue.failed_last_hour(queue).await?,
                dead: depth.dead,
                done: depth.done,
                oldest_pending_age_seconds: depth.oldest_pending_age.as_secs_f64(),
                paused: paused.contains(&queue.as_str()),
                held: held
                    .iter()
                    .filter(|held| held.queue == queue)
                    .map(HeldKindView::from)
                    .collect(),
            });
        }
        let outbox_backlog = tasklane_shared::outbox::backlog(&state.db).await?;
        Ok(OverviewResponse::Ok(Json(QueueOverview { queues, outbox_backlog })))
    }

    /// List jobs by queue, state and kind, oldest first.
    ///
    /// `state` defaults to `dead` (what usually needs attention); `queue` and `kind` narrow
    /// it down. `limit` 1-100 (default 20); `next_cursor` continues.
    #[oai(path = "/jobs", method = "get")]
    #[allow(clippy::too_many_arguments)] // one per query parameter
    async fn jobs(
        &self,
        auth: BearerAuth,
        state: Data<&AppState>,
        queue: Query<Option<String>>,
        #[oai(name = "state")] job_state: Query<Option<JobState>>,
        kind: Query<Option<String>>,
        limit: Query<Option<u32>>,
        cursor: Query<Option<String>>,
    ) -> Result<JobsResponse, AuthedError> {
        if let Err(problem) = auth.require_admin() {
            return Ok(JobsResponse::Forbidden(Json(problem)));
        }
        let mut errors = Vec::new();
        let queues = queue_filter(queue.0.as_deref(), &mut errors);
        if let Some(kind) = kind.0.as_deref()
            && jobs::spec(kind).is_none()
        {
            errors.push(FieldError::new(
                "kind",
                "unknown",
                format!("no job kind is called {kind:?}"),
            ));
        }
        let limit = limit.0.unwrap_or(20);
        if !(1..=100).contains(&limit) {
            errors.push(FieldError::new("limit", "out_of_range", "must be between 1 and 100"));
        }
        let skip = match cursor.0.as_deref().map(str::parse::<usize>) {
            None => 0,
            Some(Ok(skip)) => skip,
            Some(Err(_)) => {
                errors.push(FieldError::new("cursor", "invalid", "is not a cursor from this list"));
                0
            }
        };
        if !errors.is_empty() {
            return Ok(JobsResponse::Invalid(Json(Problem::validation(errors))));
        }
        let wanted = job_state.0.unwrap_or(JobState::Dead);
        let limit = limit as usize;
        // Scans at most this many ids per queue; listing is an operator's tool, not a feed.
        const SCAN: usize = 10_000;
        let mut matched = Vec::new();
        'queues: for queue in queues {
            for id in state.queue.ids(queue, wanted, SCAN).await? {
                let Some(job) = state.queue.job(queue, &id).await? else { continue };
                if kind.0.as_deref().is_some_and(|k| k != job.kind) {
                    continue;
                }
                matched.push(job);
                if matched.len() > skip + limit {
                    break 'queues;
                }
            }
        }
        let more = matched.len() > skip + limit;
        let data: Vec<JobView> =
            matched.into_iter().skip(skip).take(limit).map(JobView::from).collect();
        let next_cursor = more.then(|| (skip + limit).to_string());
        Ok(JobsResponse::Ok(Json(JobPage { data, next_cursor })))
    }

    /// One job: payload summary, every attempt with its error, timestamps.
    #[oai(path = "/jobs/:id", method = "get")]
    async fn job(
        &self,
        auth: BearerAuth,
        state: Data<&AppState>,
        id: Path<String>,
    ) -> Result<JobResponse, AuthedError> {
        if let Err(problem) = auth.require_admin() {
            return Ok(JobResponse::Forbidden(Json(problem)));
        }
        if let Some(job) = state.queue.find_job(&id.0).await? {
            return Ok(JobResponse::Ok(Json(job.into())));
        }
        match super::job_view::record_view(&state, &id.0).await? {
            Some(record) => Ok(JobResponse::Ok(Json(record))),
            None => Ok(JobResponse::NotFound(Json(not_found()))),
        }
    }

    /// Retry a dead job: back to its queue with a fresh set of attempts, history kept.
    #[oai(path = "/jobs/:id/retry", method = "post")]
    async fn retry(
        &self,
        auth: BearerAuth,
        state: Data<&AppState>,
        id: Path<String>,
    ) -> Result<RetryResponse, AuthedError> {
        let admin = match auth.require_admin() {
            Ok(admin) => admin.id,
            Err(problem) => return Ok(RetryResponse::Forbidden(Json(problem))),
        };
        let Some(job) = state.queue.find_job(&id.0).await? else {
            return Ok(RetryResponse::NotFound(Json(not_found())));
        };
        if !state.queue.retry_dead(job.queue, &id.0).await? {
            let problem = Problem::new(
                StatusCode::CONFLICT,
                "not_dead",
                format!("the job is {}; only dead jobs can be retried", job.state),
            );
            return Ok(RetryResponse::Conflict(Json(problem)));
        }
        // Its record is in flight again, so the reconciler watches it.
        if let Ok(uuid) = uuid::Uuid::parse_str(&id.0) {
            tasklane_shared::outbox::reopen(&state.db, &[uuid]).await?;
        }
        let detail = serde_json::json!({ "kind": job.kind });
        let target = format!("job:{}", id.0);
        audit::record(&mut *state.db.acquire().await?, admin, "job.retry", &target, detail).await?;
        tracing::info!(%admin, job = %id.0, kind = %job.kind, "dead job retried by an admin");
        let job = state
            .queue
            .job(job.queue, &id.0)
            .await?
            .ok_or_else(|| ServerError::internal("the job vanished"))?;
        Ok(RetryResponse::Accepted(Json(job.into())))
    }

    /// The schedules the workers run: cron, last and next run.
    #[oai(path = "/schedules", method = "get")]
    async fn schedules(
        &self,
        auth: BearerAuth,
        state: Data<&AppState>,
    ) -> Result<SchedulesResponse, AuthedError> {
        if let Err(problem) = auth.require_admin() {
            return Ok(SchedulesResponse::Forbidden(Json(problem)));
        }
        let controls = tasklane_shared::controls::all(&state.db).await?;
        let mut schedules = Vec::new();
        for spec in jobs::ALL {
            let Some(cron) = schedules::expression(spec, &state.settings) else { continue };
            let next_run = schedules::next_run(&cron);
            let last_run =
                state.queue.last_tick(spec.kind).await?.and_then(DateTime::from_timestamp_millis);
            schedules.push(ScheduleView {
                kind: spec.kind.into(),
                queue: spec.queue.as_str().into(),
                cron,
                last_run,
                next_run,
                paused: controls.iter().any(|control| {
                    control.scope == "schedule" && control.name == spec.kind && control.paused
                }),
            });
        }
        Ok(SchedulesResponse::Ok(Json(schedules)))
    }
}
