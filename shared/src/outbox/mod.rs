//! The transactional outbox, and Postgres' record of every accepted job (SPEC sections 7
//! and 9). This module owns the `outbox` table: every producer writes its rows through the
//! functions below, in the transaction of the change that causes them, so a job or event
//! exists exactly when its change does.
//!
//! A job's row lives on after the relay pushed it to Redis, as the job's record, until its
//! outcome is recorded: Redis is the fast path, not the only copy.
//! - [`enqueue`], [`enqueue_once`], [`fan_out`]: job rows (the last two with ids the caller
//!   derives, so a repeated tick or fan-out adds nothing);
//! - [`record_event`], [`record_events`], [`event_payload`]: event rows (the pseudo-queue
//!   [`EVENTS`]), which the relay publishes and deletes instead of queueing;
//! - [`relay`]: moves waiting rows to Redis and quarantines poison;
//! - [`records`]: records jobs' outcomes in batches;
//! - [`reconcile`]: puts back jobs Redis lost;
//! - [`reopen`], [`overview`], [`quarantined`]: for operators;
//! - [`receipts`]: what a caller's request set in motion, for that caller.
//!
//! One statement writes rows itself: the task writer's group commit
//! (`api/src/services/tasks/writer.rs`) inserts its `task.created` rows in the same statement
//! as the tasks, with [`EVENTS`] and [`event_payload`] from here.

pub mod receipts;
pub mod reconcile;
pub mod records;
pub mod relay;

pub use reconcile::Reconciler;
pub use records::OutcomeRecorder;
pub use relay::Relay;

use chrono::{DateTime, Utc};
use sqlx::PgConnection;
use sqlx::postgres::PgPool;
use uuid::Uuid;

use crate::events::Recorded;
use crate::jobs::{Job, JobSpec};

/// The channel the `outbox_notify` trigger notifies at commit.
pub const CHANNEL: &str = "tasklane_outbox";

/// The `queue` of event rows: the relay publishes them instead of queueing jobs.
pub const EVENTS: &str = "events";

fn encode<T: serde::Serialize>(value: &T) -> Result<serde_json::Value, sqlx::Error> {
    serde_json::to_value(value).map_err(|err| sqlx::Error::Encode(Box::new(err)))
}

fn max_attempts<J: Job>() -> i32 {
    i32::try_from(J::SPEC.max_attempts).unwrap_or(i32::MAX)
}

/// Writes a job into the outbox on the caller's connection, normally inside the transaction
/// of the change that causes it. Returns the job id (also its id in Redis). The row keeps the
/// current span's trace context and, inside an authenticated API request, its caller (the
/// job then shows in the receipt of that request, [`receipts`]).
pub async fn enqueue<J: Job>(
    conn: &mut PgConnection,
    job: &J,
    request_id: Option<&str>,
) -> Result<Uuid, sqlx::Error> {
    enqueue_as(conn, &J::SPEC, encode(job)?, request_id, None).await
}

/// Like [`enqueue`], for a job due at `run_at` (a delayed job: it waits in the queue's
/// schedule until then).
pub async fn enqueue_at<J: Job>(
    conn: &mut PgConnection,
    job: &J,
    request_id: Option<&str>,
    run_at: DateTime<Utc>,
) -> Result<Uuid, sqlx::Error> {
    enqueue_as(conn, &J::SPEC, encode(job)?, request_id, Some(run_at)).await
}

/// Writes a job of the kind `spec` with an already encoded payload, which the caller has
/// checked decodes as that kind ([`crate::jobs::check_payload`]); see [`enqueue`].
pub async fn enqueue_as(
    conn: &mut PgConnection,
    spec: &JobSpec,
    payload: serde_json::Value,
    request_id: Option<&str>,
    run_at: Option<DateTime<Utc>>,
) -> Result<Uuid, sqlx::Error> {
    let id = Uuid::now_v7();
    sqlx::query!(
        "insert into outbox (id, queue, kind, payload, max_attempts, request_id, traceparent, user_id,
                             run_at)
         values ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        id,
        spec.queue.as_str(),
        spec.kind,
        payload,
        i32::try_from(spec.max_attempts).unwrap_or(i32::MAX),
        request_id,
        crate::trace::current_traceparent(),
        // The authenticated caller of the request, whose receipt shows the job.
        crate::trace::current_caller(),
        run_at,
    )
    .execute(conn)
    .await?;
    Ok(id)
}

/// Writes a job under an id the caller derives (a schedule's tick, a user's digest of a
/// day); `false` when a job with that id was already accepted, so however many workers
/// enqueue it, it is one job.
pub async fn enqueue_once<J: Job>(
    conn: &mut PgConnection,
    id: Uuid,
    job: &J,
) -> Result<bool, sqlx::Error> {
    let inserted = sqlx::query!(
        "insert into outbox (id, queue, kind, payload, max_attempts)
         values ($1, $2, $3, $4, $5)
         on conflict (id) do nothing",
        id,
        J::SPEC.queue.as_str(),
        J::SPEC.kind,
        encode(job)?,
        max_attempts::<J>(),
    )
    .execute(conn)
    .await?
    .rows_affected();
    Ok(inserted == 1)
}

/// Writes many jobs of one kind in one statement, each under the id the caller derives (ids
/// already accepted are skipped); returns how many were new. A fan-out (one job per user)
/// commits whole or not at all, and running it again adds nothing.
pub async fn fan_out<J: Job>(
    conn: &mut PgConnection,
    jobs: &[(Uuid, J)],
) -> Result<u64, sqlx::Error> {
    let ids: Vec<Uuid> = jobs.iter().map(|(id, _)| *id).collect();
    let payloads = jobs.iter().map(|(_, job)| encode(job)).collect::<Result<Vec<_>, _>>()?;
    let inserted = sqlx::query!(
        "insert into outbox (id, queue, kind, payload, max_attempts)
         select id, $3, $4, payload, $5 from unnest($1::uuid[], $2::jsonb[]) as x(id, payload)
         on conflict (id) do nothing",
        &ids,
        &payloads,
        J::SPEC.queue.as_str(),
        J::SPEC.kind,
        max_attempts::<J>(),
    )
    .execute(conn)
    .await?
    .rows_affected();
    Ok(inserted)
}

/// The payload of an event row for `user`.
pub fn event_payload(
    user: Uuid,
    data: serde_json::Value,
) -> Result<serde_json::Value, sqlx::Error> {
    encode(&Recorded { user_id: user, at: Utc::now(), data })
}

/// Records an event for `user` in the caller's transaction (SPEC section 8).
pub async fn record_event(
    conn: &mut PgConnection,
    user: Uuid,
    event_type: &str,
    data: serde_json::Value,
) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "insert into outbox (id, queue, kind, payload, max_attempts, request_id)
         values ($1, $2, $3, $4, 1, $5)",
        Uuid::now_v7(),
        EVENTS,
        event_type,
        event_payload(user, data)?,
        // Only the caller's own events go into the receipt of their request.
        crate::trace::current_request_id().filter(|_| crate::trace::current_caller() == Some(user)),
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// Records one event of `event_type` per `(user, data)` in one statement.
pub async fn record_events(
    conn: &mut PgConnection,
    event_type: &str,
    events: Vec<(Uuid, serde_json::Value)>,
) -> Result<(), sqlx::Error> {
    let mut ids = Vec::with_capacity(events.len());
    let mut payloads = Vec::with_capacity(events.len());
    for (user, data) in events {
        ids.push(Uuid::now_v7());
        payloads.push(event_payload(user, data)?);
    }
    sqlx::query!(
        "insert into outbox (id, queue, kind, payload, max_attempts)
         select id, $3, $4, payload, 1 from unnest($1::uuid[], $2::jsonb[]) as x(id, payload)",
        &ids,
        &payloads,
        EVENTS,
        event_type,
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// Makes finished jobs' records in flight again: an operator sent dead jobs back to their
/// queue, so the reconciler must watch them again.
pub async fn reopen(db: &PgPool, ids: &[Uuid]) -> Result<(), sqlx::Error> {
    for chunk in ids.chunks(10_000) {
        sqlx::query!(
            "update outbox set finished_at = null, outcome = null
             where id = any($1) and relayed_at is not null and outcome = 'dead'",
            chunk,
        )
        .execute(db)
        .await?;
    }
    Ok(())
}

/// Cancels a job still waiting in the outbox (not yet relayed): it never reaches Redis.
/// `None` when it is not waiting (relayed meanwhile, finished, or no such row); else its
/// kind.
pub async fn cancel_waiting(
    conn: &mut PgConnection,
    id: Uuid,
) -> Result<Option<String>, sqlx::Error> {
    // Blocks while a relay holds the row; once it committed, the row is relayed and this
    // matches nothing, so the caller cancels the job in Redis instead.
    sqlx::query_scalar!(
        "update outbox set relayed_at = now(), finished_at = now(), outcome = 'cancelled',
                last_error = 'cancelled by an operator'
         where id = $1 and relayed_at is null and finished_at is null and queue <> 'events'
         returning kind",
        id,
    )
    .fetch_optional(conn)
    .await
}

/// Records that an operator cancelled a job in flight (Redis already has it cancelled).
pub async fn record_cancelled(conn: &mut PgConnection, id: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "update outbox set finished_at = now(), outcome = 'cancelled',
                last_error = 'cancelled by an operator'
         where id = $1 and finished_at is null",
        id,
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// Rows waiting to be relayed (the relay backlog), for metrics and health.
pub async fn backlog(pool: &PgPool) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar!(
        r#"select count(*) as "count!" from outbox where relayed_at is null and finished_at is null"#
    )
    .fetch_one(pool)
    .await
}

/// The outbox as operators see it.
#[derive(Debug, Clone, PartialEq)]
pub struct Overview {
    /// Rows waiting for the relay.
    pub waiting: i64,
    /// Seconds the oldest waiting row has waited.
    pub oldest_waiting_age_seconds: f64,
    /// Jobs relayed whose outcome is not recorded yet (in Redis: pending, scheduled, running).
    pub in_flight: i64,
    /// Rows set aside because they can never be run.
    pub quarantined: i64,
}

pub async fn overview(pool: &PgPool) -> Result<Overview, sqlx::Error> {
    let row = sqlx::query!(
        r#"select
             (select count(*) from outbox where relayed_at is null and finished_at is null) as "waiting!",
             (select coalesce(extract(epoch from now() - min(created_at)), 0)::float8 from outbox
               where relayed_at is null and finished_at is null) as "oldest!",
             (select count(*) from outbox where relayed_at is not null and finished_at is null) as "in_flight!",
             (select count(*) from outbox where outcome = 'quarantined') as "quarantined!""#
    )
    .fetch_one(pool)
    .await?;
    Ok(Overview {
        waiting: row.waiting,
        oldest_waiting_age_seconds: row.oldest,
        in_flight: row.in_flight,
        quarantined: row.quarantined,
    })
}

/// A row set aside, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Quarantined {
    pub id: Uuid,
    pub queue: String,
    pub kind: String,
    pub reason: String,
    pub created_at: DateTime<Utc>,
    pub quarantined_at: DateTime<Utc>,
}

/// Quarantined rows, newest first, `limit` of them after the cursor (the last id seen).
pub async fn quarantined(
    pool: &PgPool,
    after: Option<Uuid>,
    limit: i64,
) -> Result<Vec<Quarantined>, sqlx::Error> {
    sqlx::query_as!(
        Quarantined,
        r#"select id, queue, kind, coalesce(last_error, '') as "reason!", created_at,
                  finished_at as "quarantined_at!"
           from outbox
           where outcome = 'quarantined' and ($1::uuid is null or id < $1)
           order by id desc
           limit $2"#,
        after,
        limit,
    )
    .fetch_all(pool)
    .await
}

/// A job's record as Postgres keeps it, for operators when Redis no longer holds the job (a
/// quarantined row never reaches Redis).
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub id: Uuid,
    pub queue: String,
    pub kind: String,
    pub payload: serde_json::Value,
    pub max_attempts: i32,
    pub request_id: Option<String>,
    /// The W3C trace context of the span that wrote the row.
    pub traceparent: Option<String>,
    pub created_at: DateTime<Utc>,
    pub relayed_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    /// `succeeded`, `dead` or `quarantined` once finished.
    pub outcome: Option<String>,
    pub last_error: Option<String>,
}

impl Record {
    /// Where the job stands by its record: its outcome, `in_flight` or `waiting`.
    pub fn state(&self) -> &str {
        match (&self.outcome, self.relayed_at) {
            (Some(outcome), _) => outcome,
            (None, Some(_)) => "in_flight",
            (None, None) => "waiting",
        }
    }
}

pub async fn record(pool: &PgPool, id: Uuid) -> Result<Option<Record>, sqlx::Error> {
    sqlx::query_as!(
        Record,
        "select id, queue, kind, payload, max_attempts, request_id, traceparent, created_at,
                relayed_at, finished_at, outcome, last_error
         from outbox where id = $1 and queue <> $2",
        id,
        EVENTS,
    )
    .fetch_optional(pool)
    .await
}
