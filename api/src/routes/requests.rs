//! `GET /api/v1/requests/{request_id}`: a request receipt (SPEC section 13), for the caller
//! rather than the operator: what one of their own requests set in motion — each job with
//! its kind, state, attempts and times, and the events it published — without payloads,
//! addresses or tokens. Someone else's request id is a 404, like an unknown one.

use chrono::{DateTime, TimeZone, Utc};
use poem::http::StatusCode;
use poem::web::Data;
use poem_openapi::param::Path;
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Object, OpenApi};
use tasklane_shared::outbox::receipts::{self, ReceiptAttempt, ReceiptJob};
use tasklane_shared::{domain::jobs::JobState, jobs};

use crate::problem::{AuthedError, Problem};
use crate::security::BearerAuth;
use crate::state::AppState;
use crate::tags::ApiTags;

pub struct RequestsApi;

/// One job a request caused.
#[derive(Debug, Object)]
pub struct ReceiptJobView {
    pub id: String,
    /// What it does, e.g. `send_email`.
    pub kind: String,
    /// `waiting` (not yet queued), `queued`, `running`, `retrying` (an attempt failed, another
    /// follows), `succeeded`, `failed` (out of attempts) or `rejected` (it could never run).
    pub state: String,
    /// Attempts started so far (known while the queue keeps the job; then the last count).
    pub attempts: Option<u32>,
    pub created_at: DateTime<Utc>,
    /// When it was handed to the queue.
    pub queued_at: Option<DateTime<Utc>>,
    /// When it succeeded or failed for good.
    pub finished_at: Option<DateTime<Utc>>,
    /// Each attempt that ended, in order: "attempt 1 failed, retrying at 10:01; attempt 2
    /// succeeded".
    pub history: Vec<ReceiptAttemptView>,
}

/// One attempt of a job.
#[derive(Debug, Object)]
pub struct ReceiptAttemptView {
    /// Its number, from 1.
    pub attempt: u32,
    /// `succeeded`, `failed` (another attempt follows at `retry_at`) or `dead` (none does).
    pub outcome: String,
    /// Why it failed, in a few words (an SMTP reply code, `timed out`): never the job's data.
    pub reason: Option<String>,
    /// When the next attempt is due, after a failure.
    pub retry_at: Option<DateTime<Utc>>,
    pub ended_at: DateTime<Utc>,
}

/// One event a request published to the caller's stream.
#[derive(Debug, Object)]
pub struct ReceiptEventView {
    /// The event's id in `GET /events` (the SSE `id:` field).
    pub id: String,
    #[oai(rename = "type")]
    pub event_type: String,
    pub published_at: DateTime<Utc>,
}

/// What one of your requests set in motion.
#[derive(Debug, Object)]
pub struct RequestReceipt {
    /// The request's `X-Request-Id`.
    pub request_id: String,
    pub jobs: Vec<ReceiptJobView>,
    pub events: Vec<ReceiptEventView>,
}

#[derive(ApiResponse)]
pub enum ReceiptResponse {
    #[oai(status = 200)]
    Ok(Json<RequestReceipt>),
    /// No request of yours has this id (or its receipt expired with its jobs' records).
    #[oai(status = 404, content_type = "application/problem+json")]
    NotFound(Json<Problem>),
}

#[OpenApi(prefix_path = "/api/v1", tag = "ApiTags::Account")]
impl RequestsApi {
    /// The receipt of one of your requests: the jobs it caused and the events it published.
    ///
    /// Pass the `X-Request-Id` of a response. A registration's receipt, and a password
    /// reset's, belong to the account it is for. Job progress also reaches your event stream
    /// as `request.progress` events (`{request_id, job_id, kind, state}`: `queued`,
    /// `retrying` with `attempt`, `reason` and `retry_at` after each failed attempt, then
    /// `succeeded`, `failed` or `rejected`).
    #[oai(path = "/requests/:request_id", method = "get")]
    async fn receipt(
        &self,
        auth: BearerAuth,
        state: Data<&AppState>,
        request_id: Path<String>,
    ) -> Result<ReceiptResponse, AuthedError> {
        let Some(receipt) = receipts::receipt(&state.db, &request_id.0, auth.0.id).await? else {
            let detail = "no request of yours has this id";
            return Ok(ReceiptResponse::NotFound(Json(Problem::new(
                StatusCode::NOT_FOUND,
                "not_found",
                detail,
            ))));
        };
        let mut views = Vec::with_capacity(receipt.jobs.len());
        for job in receipt.jobs {
            let id = job.id;
            let history = receipt.attempts.iter().filter(|a| a.job_id == id);
            views.push(job_view(&state, job, history.map(attempt_view).collect()).await);
        }
        Ok(ReceiptResponse::Ok(Json(RequestReceipt {
            request_id: request_id.0,
            jobs: views,
            events: receipt
                .events
                .into_iter()
                .map(|event| ReceiptEventView {
                    id: event.event_id,
                    event_type: event.event_type,
                    published_at: event.published_at,
                })
                .collect(),
        })))
    }
}

fn attempt_view(attempt: &ReceiptAttempt) -> ReceiptAttemptView {
    ReceiptAttemptView {
        attempt: u32::try_from(attempt.attempt).unwrap_or_default(),
        outcome: attempt.outcome.clone(),
        reason: attempt.reason.clone(),
        retry_at: attempt.retry_at,
        ended_at: attempt.ended_at,
    }
}

/// A job as the caller sees it: its record and attempts, with the queue's live state and
/// attempt count while Redis holds it (a Redis outage just leaves them out; the count is
/// then the last attempt that ended).
async fn job_view(
    state: &AppState,
    job: ReceiptJob,
    history: Vec<ReceiptAttemptView>,
) -> ReceiptJobView {
    let live = match jobs::spec(&job.kind) {
        Some(spec) => state.queue.job(spec.queue, &job.id.to_string()).await.ok().flatten(),
        None => None,
    };
    let finished_at = job.finished_at.or_else(|| {
        let ms = live.as_ref()?.finished_ms?;
        Utc.timestamp_millis_opt(ms).single()
    });
    let live_state = live.as_ref().map(|live| live.state);
    let state = match (job.outcome.as_deref(), job.relayed_at, live_state) {
        (Some("succeeded"), _, _) | (None, _, Some(JobState::Done)) => "succeeded",
        (Some("dead"), _, _) | (None, _, Some(JobState::Dead)) => "failed",
        (Some(_), _, _) => "rejected",
        (None, None, _) => "waiting",
        (None, Some(_), Some(JobState::Running)) => "running",
        (None, Some(_), Some(JobState::Scheduled)) => "retrying",
        (None, Some(_), _) => "queued",
    };
    ReceiptJobView {
        id: job.id.to_string(),
        kind: job.kind,
        state: state.to_owned(),
        attempts: live.map(|live| live.attempts).or(history.last().map(|a| a.attempt)),
        created_at: job.created_at,
        queued_at: job.relayed_at,
        finished_at,
        history,
    }
}
