//! `/api/v1/admin/outbox`: the outbox as operators see it (SPEC sections 9 and 10): the
//! relay's backlog and its oldest row, the jobs in flight Postgres keeps records of, and the
//! rows quarantined because they can never run, each with its reason. Also the job record
//! `GET /admin/jobs/{id}` falls back to when Redis no longer holds a job.

use chrono::{DateTime, Utc};
use poem::web::Data;
use poem_openapi::param::Query;
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Object, OpenApi};
use tasklane_shared::outbox;
use uuid::Uuid;

use crate::problem::{AuthedError, FieldError, Problem};
use crate::security::BearerAuth;
use crate::state::AppState;
use crate::tags::ApiTags;

pub struct AdminOutboxApi;

/// A row set aside because it can never run.
#[derive(Debug, Object)]
pub struct QuarantinedRow {
    /// Also the job's id: `GET /admin/jobs/{id}` shows its record.
    pub id: String,
    pub queue: String,
    pub kind: String,
    /// Why it cannot run.
    pub reason: String,
    pub created_at: DateTime<Utc>,
    pub quarantined_at: DateTime<Utc>,
}

/// The outbox right now.
#[derive(Debug, Object)]
pub struct OutboxView {
    /// Rows not yet moved to Redis.
    pub backlog: i64,
    /// Seconds the oldest of them has waited (0 when none waits).
    pub oldest_age_seconds: f64,
    /// Jobs in Redis whose outcome is not recorded yet; the reconciler puts back any of them
    /// Redis loses.
    pub in_flight: i64,
    /// Rows quarantined in all.
    pub quarantined_total: i64,
    /// Quarantined rows, newest first, a page of them.
    pub quarantined: Vec<QuarantinedRow>,
    /// Pass as `cursor` for the next page of quarantined rows.
    pub next_cursor: Option<String>,
}

#[derive(ApiResponse)]
pub enum OutboxResponse {
    #[oai(status = 200)]
    Ok(Json<OutboxView>),
    /// A bad limit or cursor.
    #[oai(status = 422, content_type = "application/problem+json")]
    Invalid(Json<Problem>),
    /// The caller is not an admin.
    #[oai(status = 403, content_type = "application/problem+json")]
    Forbidden(Json<Problem>),
}

#[OpenApi(prefix_path = "/api/v1/admin", tag = "ApiTags::Admin")]
impl AdminOutboxApi {
    /// The outbox: backlog, its oldest row, jobs in flight, and quarantined rows with why.
    ///
    /// `limit` 1-100 (default 20) quarantined rows per page; `next_cursor` continues.
    #[oai(path = "/outbox", method = "get")]
    async fn outbox(
        &self,
        auth: BearerAuth,
        state: Data<&AppState>,
        limit: Query<Option<u32>>,
        cursor: Query<Option<String>>,
    ) -> Result<OutboxResponse, AuthedError> {
        if let Err(problem) = auth.require_admin() {
            return Ok(OutboxResponse::Forbidden(Json(problem)));
        }
        let mut errors = Vec::new();
        let limit = limit.0.unwrap_or(20);
        if !(1..=100).contains(&limit) {
            errors.push(FieldError::new("limit", "out_of_range", "must be between 1 and 100"));
        }
        let after = match cursor.0.as_deref().map(Uuid::parse_str) {
            None => None,
            Some(Ok(id)) => Some(id),
            Some(Err(_)) => {
                errors.push(FieldError::new("cursor", "invalid", "is not a cursor from this list"));
                None
            }
        };
        if !errors.is_empty() {
            return Ok(OutboxResponse::Invalid(Json(Problem::validation(errors))));
        }
        let overview = outbox::overview(&state.db).await?;
        let mut rows = outbox::quarantined(&state.db, after, i64::from(limit) + 1).await?;
        let more = rows.len() > limit as usize;
        rows.truncate(limit as usize);
        let next_cursor = more.then(|| rows.last().map(|row| row.id.to_string())).flatten();
        Ok(OutboxResponse::Ok(Json(OutboxView {
            backlog: overview.waiting,
            oldest_age_seconds: overview.oldest_waiting_age_seconds,
            in_flight: overview.in_flight,
            quarantined_total: overview.quarantined,
            quarantined: rows
                .into_iter()
                .map(|row| QuarantinedRow {
                    id: row.id.to_string(),
                    queue: row.queue,
                    kind: row.kind,
                    reason: row.reason,
                    created_at: row.created_at,
                    quarantined_at: row.quarantined_at,
                })
                .collect(),
            next_cursor,
        })))
    }
}
