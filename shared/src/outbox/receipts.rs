//! Request receipts (SPEC section 13): what one request of a caller set in motion, for that
//! caller. A job's record names the request (`request_id`) and the user it runs for
//! (`user_id`); event rows are deleted once published, so the relay keeps what a receipt
//! shows of them (type, stream id, time; never their data) in `request_events`, pruned with
//! the job records. The relay also tells the caller's event stream when a job of theirs is
//! queued (`request.progress`), and the worker's outcome recorder when it ends.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::events::{self, Recorded};
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
    pub(super) async fn announce(self, conn: &mut redis::aio::ConnectionManager, keys: &Keys) {
        for (id, kind, request_id, user) in self.queued {
            let progress = Progress { request_id, job_id: id, kind, state: "queued" };
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
    /// `queued`, then `succeeded`, `failed` (out of attempts) or `rejected` (it could never
    /// run), as in the receipt.
    pub state: &'static str,
}

async fn publish(
    conn: &mut redis::aio::ConnectionManager,
    keys: &Keys,
    user: Uuid,
    progress: &Progress,
) {
    let data = serde_json::to_value(progress).unwrap_or_default();
    let recorded = Recorded { user_id: user, at: Utc::now(), data };
    if let Err(err) = events::publish(conn, keys, REQUEST_PROGRESS, &recorded).await {
        tracing::warn!(error = %err, "request.progress not published");
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
pub(super) async fn announce_ends(
    conn: &mut redis::aio::ConnectionManager,
    keys: &Keys,
    ended: Vec<Ended>,
) {
    for end in ended {
        let state = match end.outcome.as_str() {
            "succeeded" => "succeeded",
            "dead" => "failed",
            _ => "rejected",
        };
        let progress =
            Progress { request_id: end.request_id, job_id: end.id, kind: end.kind, state };
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

/// The jobs and events of `user`'s request `request_id`; `None` when the request is not
/// theirs (or unknown, or pruned): one answer, so a request id says nothing about others.
pub async fn receipt(
    db: &PgPool,
    request_id: &str,
    user: Uuid,
) -> sqlx::Result<Option<(Vec<ReceiptJob>, Vec<ReceiptEvent>)>> {
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
    Ok((!jobs.is_empty() || !events.is_empty()).then_some((jobs, events)))
}

/// Deletes kept events older than `retention` (the dead-job retention: receipts last as
/// long as the job records).
pub async fn prune(db: &PgPool, retention: std::time::Duration) -> sqlx::Result<u64> {
    let pruned = sqlx::query!(
        "delete from request_events where published_at < now() - make_interval(secs => $1::float8)",
        retention.as_secs_f64(),
    )
    .execute(db)
    .await?;
    Ok(pruned.rows_affected())
}
