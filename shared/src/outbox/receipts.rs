//! Request receipts (SPEC section 13): what one request of a caller set in motion, for that
//! caller. A job's record names the request (`request_id`) and the user it runs for
//! (`user_id`); event rows are deleted once published, so the relay keeps what a receipt
//! shows of them (type, stream id, time; never their data) in `request_events`, pruned with
//! the job records. The worker's outcome recorder keeps each attempt of those jobs in
//! `job_attempts`, with a reason safe to show ([`crate::jobs::safe_reason`]). The relay
//! tells the caller's event stream when a job of theirs is queued (`request.progress`), and
//! the outcome recorder when an attempt fails and when the job ends.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::events::{self, Recorded};
use crate::queue::AttemptEnd;
use crate::redis::Keys;

/// The event type of a job's progress on the caller's stream.
pub const REQUEST_PROGRESS: &str = "request.progress";

/// What one relay batch adds to receipts.
#[derive(Default)]
pub(super) struct Receipts {
    /// Event rows of the batch that came from a request: row id -> request id.
    expected: HashMap<Uuid, String>,
    /// Events published: (request id, user, stream id, type).
    events: Vec<(String, Uuid, String, String)>,
    /// Jobs relayed for a user's request: (job id, kind, request id, user).
    queued: Vec<(Uuid, String, String, Uuid)>,
}

impl Receipts {
    pub(super) fn expect_event(&mut self, id: Uuid, request_id: Option<String>) {
        if let Some(request_id) = request_id {
            self.expected.insert(id, request_id);
        }
    }

    pub(super) fn event(&mut self, id: Uuid, event_type: &str, user: Uuid, stream_id: String) {
        if let Some(request_id) = self.expected.remove(&id) {
            self.events.push((request_id, user, stream_id, event_type.to_owned()));
        }
    }

    pub(super) fn job(
        &mut self,
        id: Uuid,
        kind: &str,
        request_id: Option<&str>,
        user: Option<Uuid>,
    ) {
        if let (Some(request_id), Some(user)) = (request_id, user) {
            self.queued.push((id, kind.to_owned(), request_id.to_owned(), user));
        }
    }

    /// Keeps the published events of requests, in the relay's transaction.
    pub(super) async fn keep_events(&self, tx: &mut PgConnection) -> sqlx::Result<()> {
        if self.events.is_empty() {
            return Ok(());
        }
        let mut requests = Vec::new();
        let mut users = Vec::new();
        let mut ids = Vec::new();
        let mut types = Vec::new();
        for (request_id, user, stream_id, event_type) in &self.events {
            requests.push(request_id.clone());
            users.push(*user);
            ids.push(stream_id.clone());
            types.push(event_type.clone());
        }
        sqlx::query!(
            "insert into request_events (request_id, user_id, event_id, event_type)
             select * from unnest($1::text[], $2::uuid[], $3::text[], $4::text[])
             on conflict do nothing",
            &requests,
            &users,
            &ids,
            &types,
        )
        .execute(tx)
        .await?;
        Ok(())
    }

    /// Tells each caller that the jobs of their requests are queued (after commit; at most
    /// once, a lost progress event is only a missed update: the receipt still shows it).
    pub(super) async fn announce(self, conn: &mut crate::redis::Conn, keys: &Keys) {
        for (id, kind, request_id, user) in self.queued {
            let progress = Progress { request_id, job_id: id, kind, state: "queued", failed: None };
            publish(conn, keys, user, &progress).await;
        }
    }
}

/// One step of one job, as the caller's stream gets it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Progress {
    pub request_id: String,
    pub job_id: Uuid,
    pub kind: String,
    /// `queued`, `retrying` (an attempt failed, another follows), then `succeeded`,
    /// `failed` (out of attempts) or `rejected` (it could never run), as in the receipt.
    pub state: &'static str,
    /// For `retrying`: the attempt that failed, why, and when the next one is due.
    #[serde(flatten)]
    pub failed: Option<FailedAttempt>,
}

/// A failed attempt after which another follows.
#[derive(Debug, Clone, serde::Serialize)]
pub struct FailedAttempt {
    pub attempt: i32,
    pub reason: String,
    pub retry_at: DateTime<Utc>,
}

async fn publish(conn: &mut crate::redis::Conn, keys: &Keys, user: Uuid, progress: &Progress) {
    let data = serde_json::to_value(progress).unwrap_or_default();
    let recorded = Recorded { user_id: user, at: Utc::now(), data };
    if let Err(err) = events::publish(conn, keys, REQUEST_PROGRESS, &recorded).await {
        tracing::warn!(error = %err, "request.progress not published");
    }
}

/// Keeps the attempts of jobs that have a receipt (others have no reader: nothing is
/// written); returns the failed attempts after which another follows, to announce.
pub(super) async fn keep_attempts(
    tx: &mut PgConnection,
    attempts: &[(Uuid, u32, AttemptEnd)],
) -> sqlx::Result<Vec<Retrying>> {
    if attempts.is_empty() {
        return Ok(Vec::new());
    }
    let mut ids = Vec::with_capacity(attempts.len());
    let mut numbers = Vec::with_capacity(attempts.len());
    let mut outcomes = Vec::with_capacity(attempts.len());
    let mut reasons: Vec<Option<String>> = Vec::with_capacity(attempts.len());
    let mut retry_in: Vec<Option<f64>> = Vec::with_capacity(attempts.len());
    for (id, attempt, end) in attempts {
        ids.push(*id);
        numbers.push(i32::try_from(*attempt).unwrap_or(i32::MAX));
        let (outcome, reason, delay) = match end {
            AttemptEnd::Succeeded => ("succeeded", None, None),
            AttemptEnd::Failed { reason, retry_in } => {
                ("failed", Some(reason.clone()), Some(retry_in.as_secs_f64()))
            }
            AttemptEnd::Dead { reason } => ("dead", Some(reason.clone()), None),
        };
        outcomes.push(outcome.to_owned());
        reasons.push(reason);
        retry_in.push(delay);
    }
    let rows = sqlx::query!(
        r#"with kept as (
             insert into job_attempts (job_id, attempt, outcome, reason, retry_at)
             select x.id, x.attempt, x.outcome, x.reason, now() + make_interval(secs => x.retry_in)
             from unnest($1::uuid[], $2::int[], $3::text[], $4::text[], $5::float8[])
                  as x(id, attempt, outcome, reason, retry_in)
             join outbox o on o.id = x.id
             where o.user_id is not null and o.request_id is not null
             returning job_id, attempt, outcome, reason, retry_at
           )
           select k.job_id as "job_id!", k.attempt as "attempt!", k.reason as "reason!",
                  k.retry_at as "retry_at!", o.kind as "kind!", o.request_id as "request_id!",
                  o.user_id as "user_id!"
           from kept k join outbox o on o.id = k.job_id
           where k.outcome = 'failed'"#,
        &ids,
        &numbers,
        &outcomes,
        &reasons as &[Option<String>],
        &retry_in as &[Option<f64>],
    )
    .fetch_all(tx)
    .await?;
    Ok(rows
        .into_iter()
        .map(|row| Retrying {
            request_id: row.request_id,
            user: row.user_id,
            job_id: row.job_id,
            kind: row.kind,
            failed: FailedAttempt {
                attempt: row.attempt,
                reason: row.reason,
                retry_at: row.retry_at,
            },
        })
        .collect())
}

/// A failed attempt of a job of a user's request, another attempt to follow.
#[derive(Debug, Clone)]
pub struct Retrying {
    request_id: String,
    user: Uuid,
    job_id: Uuid,
    kind: String,
    failed: FailedAttempt,
}

/// Tells each caller that an attempt of a job of theirs failed and when the next is due
/// (best effort, like the ends).
pub(super) async fn announce_retries(
    conn: &mut crate::redis::Conn,
    keys: &Keys,
    retrying: Vec<Retrying>,
) {
    for retry in retrying {
        let progress = Progress {
            request_id: retry.request_id,
            job_id: retry.job_id,
            kind: retry.kind,
            state: "retrying",
            failed: Some(retry.failed),
        };
        publish(conn, keys, retry.user, &progress).await;
    }
}

/// A job of a user's request whose outcome was just recorded.
#[derive(Debug, Clone)]
pub struct Ended {
    pub id: Uuid,
    pub kind: String,
    pub request_id: String,
    pub user: Uuid,
    /// `succeeded`, `dead` or `quarantined`.
    pub outcome: String,
}

/// Tells each caller how the jobs of their requests ended (best effort: the receipt keeps
/// the outcome either way).
pub(super) async fn announce_ends(conn: &mut crate::redis::Conn, keys: &Keys, ended: Vec<Ended>) {
    for end in ended {
        let state = match end.outcome.as_str() {
            "succeeded" => "succeeded",
            "dead" => "failed",
            _ => "rejected",
        };
        let progress = Progress {
            request_id: end.request_id,
            job_id: end.id,
            kind: end.kind,
            state,
            failed: None,
        };
        publish(conn, keys, end.user, &progress).await;
    }
}

/// One job of a receipt, from its record.
#[derive(Debug, Clone, PartialEq)]
pub struct ReceiptJob {
    pub id: Uuid,
    pub kind: String,
    /// `waiting`, `in_flight`, `succeeded`, `dead` or `quarantined` (see `Record::state`).
    pub outcome: Option<String>,
    pub created_at: DateTime<Utc>,
    pub relayed_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
}

/// One event a request published.
#[derive(Debug, Clone, PartialEq)]
pub struct ReceiptEvent {
    pub event_id: String,
    pub event_type: String,
    pub published_at: DateTime<Utc>,
}

/// One attempt of a receipt's job that ended.
#[derive(Debug, Clone, PartialEq)]
pub struct ReceiptAttempt {
    pub job_id: Uuid,
    pub attempt: i32,
    /// `succeeded`, `failed` (another attempt follows) or `dead` (none does).
    pub outcome: String,
    /// Why it failed, safe to show ([`crate::jobs::safe_reason`]).
    pub reason: Option<String>,
    pub retry_at: Option<DateTime<Utc>>,
    pub ended_at: DateTime<Utc>,
}

/// What one request set in motion: its jobs, their attempts, and its events.
#[derive(Debug, Clone, PartialEq)]
pub struct Receipt {
    pub jobs: Vec<ReceiptJob>,
    /// The attempts of all of `jobs`, in the order they ended.
    pub attempts: Vec<ReceiptAttempt>,
    pub events: Vec<ReceiptEvent>,
}

/// The jobs and events of `user`'s request `request_id`; `None` when the request is not
/// theirs (or unknown, or pruned): one answer, so a request id says nothing about others.
pub async fn receipt(db: &PgPool, request_id: &str, user: Uuid) -> sqlx::Result<Option<Receipt>> {
    let jobs = sqlx::query_as!(
        ReceiptJob,
        "select id, kind, outcome, created_at, relayed_at, finished_at from outbox
         where request_id = $1 and user_id = $2 and queue <> $3
         order by id",
        request_id,
        user,
        super::EVENTS,
    )
    .fetch_all(db)
    .await?;
    let events = sqlx::query_as!(
        ReceiptEvent,
        "select event_id, event_type, published_at from request_events
         where request_id = $1 and user_id = $2
         order by published_at, event_id",
        request_id,
        user,
    )
    .fetch_all(db)
    .await?;
    if jobs.is_empty() && events.is_empty() {
        return Ok(None);
    }
    let ids: Vec<Uuid> = jobs.iter().map(|job| job.id).collect();
    let attempts = sqlx::query_as!(
        ReceiptAttempt,
        "select job_id, attempt, outcome, reason, retry_at, ended_at from job_attempts
         where job_id = any($1)
         order by id",
        &ids,
    )
    .fetch_all(db)
    .await?;
    Ok(Some(Receipt { jobs, attempts, events }))
}

/// Deletes kept events and attempts older than `retention` (the dead-job retention:
/// receipts last as long as the job records).
pub async fn prune(db: &PgPool, retention: std::time::Duration) -> sqlx::Result<u64> {
    let events = sqlx::query!(
        "delete from request_events where published_at < now() - make_interval(secs => $1::float8)",
        retention.as_secs_f64(),
    )
    .execute(db)
    .await?;
    let attempts = sqlx::query!(
        "delete from job_attempts where ended_at < now() - make_interval(secs => $1::float8)",
        retention.as_secs_f64(),
    )
    .execute(db)
    .await?;
    Ok(events.rows_affected() + attempts.rows_affected())
}
