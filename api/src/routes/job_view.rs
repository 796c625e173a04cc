//! A job as admins see it ([`JobView`]): from the Redis store while it holds the job, else
//! from its Postgres record; payloads with secrets redacted. Shared by the admin job and
//! outbox routes.

use chrono::{DateTime, Utc};
use poem_openapi::Object;
use serde_json::Value;
use tasklane_shared::outbox;
use tasklane_shared::queue::JobRecord;
use uuid::Uuid;

use crate::state::AppState;

/// One attempt of a job.
#[derive(Debug, Object)]
pub struct AttemptView {
    pub attempt: u32,
    pub worker: Option<String>,
    pub started_at: Option<DateTime<Utc>>,
    pub duration_ms: Option<i64>,
    /// Why it failed; absent when it succeeded.
    pub error: Option<String>,
    /// The backoff chosen before the next attempt, for a failure that was retried.
    pub retry_in_ms: Option<i64>,
}

/// A job and its history.
#[derive(Debug, Object)]
pub struct JobView {
    pub id: String,
    pub queue: String,
    pub kind: String,
    pub state: String,
    pub attempts: u32,
    pub max_attempts: u32,
    pub created_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    /// The worker holding it, while running.
    pub worker: Option<String>,
    pub last_error: Option<String>,
    /// The API request that caused it.
    pub request_id: Option<String>,
    /// The trace it belongs to (W3C trace id), from the request that caused it through each
    /// attempt: look it up in the trace viewer.
    pub trace_id: Option<String>,
    /// The payload, with secrets (tokens, passwords) redacted and long strings cut.
    pub payload: Value,
    pub history: Vec<AttemptView>,
}

impl From<JobRecord> for JobView {
    fn from(job: JobRecord) -> Self {
        let payload = serde_json::from_str(&job.payload).map(redact).unwrap_or(Value::Null);
        Self {
            id: job.id,
            queue: job.queue.as_str().into(),
            kind: job.kind,
            state: job.state.to_string(),
            attempts: job.attempts,
            max_attempts: job.max_attempts,
            created_at: DateTime::from_timestamp_millis(job.created_ms),
            finished_at: job.finished_ms.and_then(DateTime::from_timestamp_millis),
            worker: job.worker,
            last_error: job.last_error,
            request_id: job.request_id,
            trace_id: job.trace_id,
            payload,
            history: job
                .history
                .into_iter()
                .map(|a| AttemptView {
                    attempt: a.attempt,
                    worker: a.worker,
                    started_at: a.started_ms.and_then(DateTime::from_timestamp_millis),
                    duration_ms: a.duration_ms,
                    error: a.error,
                    retry_in_ms: a.retry_in_ms,
                })
                .collect(),
        }
    }
}

/// Hides secrets (reset and verification tokens travel in email jobs) and cuts long strings.
fn redact(value: Value) -> Value {
    const SECRET: [&str; 4] = ["token", "password", "secret", "key"];
    match value {
        Value::Object(map) => Value::Object(
            map.into_iter()
                .map(|(k, v)| {
                    let secret = SECRET.iter().any(|s| k.to_ascii_lowercase().contains(s))
                        && k != "idempotency_key";
                    (k, if secret { Value::String("[redacted]".into()) } else { redact(v) })
                })
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.into_iter().map(redact).collect()),
        Value::String(s) if s.chars().count() > 200 => {
            Value::String(format!("{}…", s.chars().take(200).collect::<String>()))
        }
        other => other,
    }
}

/// A job Redis does not hold, as its Postgres record shows it (a quarantined row, a job
/// finished and expired from Redis, one waiting for the relay).
pub(crate) async fn record_view(
    state: &AppState,
    id: &str,
) -> Result<Option<JobView>, sqlx::Error> {
    let Ok(id) = Uuid::parse_str(id) else {
        return Ok(None);
    };
    let Some(record) = outbox::record(&state.db, id).await? else {
        return Ok(None);
    };
    Ok(Some(JobView {
        id: record.id.to_string(),
        state: record.state().to_owned(),
        queue: record.queue,
        kind: record.kind,
        attempts: 0,
        max_attempts: u32::try_from(record.max_attempts).unwrap_or(0),
        created_at: Some(record.created_at),
        finished_at: record.finished_at,
        worker: None,
        last_error: record.last_error,
        request_id: record.request_id,
        trace_id: record
            .traceparent
            .as_deref()
            .and_then(tasklane_shared::trace::trace_id_of)
            .map(str::to_owned),
        payload: redact(record.payload),
        history: Vec::<_>::new(),
    }))
}
