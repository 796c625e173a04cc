//! What the operating routes take and return.

use chrono::{DateTime, Utc};
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Object};
use tasklane_shared::controls::Limits;
use tasklane_shared::domain::jobs::JobState;
use uuid::Uuid;

use crate::problem::{AuthedError, Problem};
use crate::routes::admin_jobs::HeldKindView;

/// A kind's fleet-wide limits; `null` is no limit.
#[derive(Debug, Clone, Object)]
#[oai(deny_unknown_fields)]
pub struct KindLimits {
    /// Jobs started per second across every worker (above 0, at most 100000).
    pub rate_per_second: Option<f64>,
    /// Jobs running at once across every worker (1-100000).
    pub concurrency: Option<u32>,
}

impl From<Limits> for KindLimits {
    fn from(limits: Limits) -> Self {
        Self { rate_per_second: limits.rate_per_second, concurrency: limits.concurrency }
    }
}

/// A job kind and how it is steered.
#[derive(Debug, Object)]
pub struct KindView {
    pub kind: String,
    pub queue: String,
    /// `high`, `normal` or `low`: a kind's workers claim nothing while a kind of the same
    /// queue with a higher priority has jobs waiting.
    pub priority: String,
    /// Paused by an operator, as a kind (`queue_paused` says whether its whole queue is).
    pub paused: bool,
    pub queue_paused: bool,
    pub limits: KindLimits,
    /// Held by a worker's circuit breaker because a dependency is down.
    pub held: Option<HeldKindView>,
    /// Waiting in its list.
    pub pending: u64,
    /// Claimed by a worker now, across the fleet.
    pub running: u64,
    /// Its schedule, for a scheduled kind.
    pub cron: Option<String>,
}

/// The pause state of a queue, kind or schedule after a pause or resume.
#[derive(Debug, Object)]
pub struct PauseView {
    /// `queue`, `kind` or `schedule`.
    pub scope: String,
    pub name: String,
    pub paused: bool,
    /// Whether this call changed it (pausing a paused queue changes nothing).
    pub changed: bool,
}

/// What cancelling a job did.
#[derive(Debug, Object)]
pub struct CancelView {
    pub id: String,
    pub kind: String,
    /// Always `cancelled`.
    pub state: JobState,
    /// What it was: `waiting` (in the outbox), `pending`, `scheduled` or `running` (its
    /// handler is stopped within seconds, and its late outcome refused).
    pub was: String,
}

/// Which dead jobs a bulk retry or discard takes. Every field narrows; none takes the whole
/// dead set.
#[derive(Debug, Object)]
#[oai(deny_unknown_fields)]
pub struct DeadJobsFilter {
    pub queue: Option<String>,
    pub kind: Option<String>,
    /// Must be `dead`: only dead jobs are retried or discarded in bulk.
    pub state: JobState,
    /// A piece of the job's last error, case-insensitive.
    pub error_contains: Option<String>,
    /// Died at or after this time.
    pub failed_after: Option<DateTime<Utc>>,
    /// Died at or before this time.
    pub failed_before: Option<DateTime<Utc>>,
}

/// What a bulk action found and changed. Running it again finds nothing more.
#[derive(Debug, Object)]
pub struct BulkResult {
    /// Dead jobs that matched the filter.
    pub matched: u64,
    /// Of those, how many were retried or discarded.
    pub changed: u64,
}

/// An extra run of a schedule, enqueued now.
#[derive(Debug, Object)]
pub struct RunView {
    pub kind: String,
    /// The job's id, to follow it at `/admin/jobs/{id}`.
    pub job_id: String,
}

/// A live worker process.
#[derive(Debug, Object)]
pub struct WorkerView {
    pub id: String,
    pub host: String,
    pub pid: u32,
    pub version: String,
    pub started_at: DateTime<Utc>,
    pub last_seen: Option<DateTime<Utc>>,
    /// Jobs it runs at once per kind.
    pub concurrency: u64,
    /// Jobs it runs now, by kind.
    pub running: std::collections::BTreeMap<String, u64>,
}

/// One audited admin write.
#[derive(Debug, Object)]
pub struct AuditEntry {
    pub id: i64,
    /// The admin's account id.
    pub actor: Uuid,
    /// What was done: `queue.pause`, `kind.limits`, `job.cancel`, `jobs.retry`,
    /// `schedule.run`, `user.update`…
    pub action: String,
    /// What it was done to: `queue:emails`, `kind:send_email`, `job:<id>`…
    pub target: String,
    /// What the write was given and what it changed.
    pub detail: serde_json::Value,
    pub at: DateTime<Utc>,
}

#[derive(Debug, Object)]
pub struct AuditPage {
    pub data: Vec<AuditEntry>,
    pub next_cursor: Option<String>,
}

#[derive(ApiResponse)]
pub enum Admin<T: poem_openapi::types::ToJSON + Send + Sync> {
    #[oai(status = 200)]
    Ok(Json<T>),
    /// Accepted: the job runs as soon as a worker takes it.
    #[oai(status = 202)]
    Accepted(Json<T>),
    /// The caller is not an admin.
    #[oai(status = 403, content_type = "application/problem+json")]
    Forbidden(Json<Problem>),
    /// No such queue, kind, schedule or job.
    #[oai(status = 404, content_type = "application/problem+json")]
    NotFound(Json<Problem>),
    /// The job has already ended.
    #[oai(status = 409, content_type = "application/problem+json")]
    Conflict(Json<Problem>),
    /// A field or parameter is out of range.
    #[oai(status = 422, content_type = "application/problem+json")]
    Invalid(Json<Problem>),
}

pub type Reply<T> = Result<Admin<T>, AuthedError>;
