//! [`Relay`]: moves committed outbox rows into Redis (SPEC sections 7 and 9).
//!
//! Woken by `NOTIFY` at commit, with a poll as the fallback, it locks waiting rows with
//! `FOR UPDATE SKIP LOCKED` (any number of relays share the work without taking the same
//! row), pushes each job to its queue, and marks the rows relayed in the transaction that
//! pushed them: the row stays as the job's record until its outcome is recorded. A push that
//! reached Redis but whose transaction failed to commit is pushed again later; the store
//! skips ids it already holds, so that is still one job. While Redis is down (or out of
//! memory) rows simply wait, and flow when it returns.
//!
//! Each relayed job's wait in the outbox becomes a span of the trace that wrote it
//! ([`crate::trace`]), and rows of a caller's request feed its receipt ([`super::receipts`]).
//!
//! A row that can never run (a kind this release does not know for its queue, a payload that
//! does not decode, an event that does not decode) is quarantined with its reason instead
//! of being pushed: it never stalls the rows behind it.

use std::future::Future;
use std::time::Duration;

use sqlx::postgres::{PgListener, PgPool};
use uuid::Uuid;

use super::receipts::Receipts;
use super::{CHANNEL, EVENTS};
use crate::jobs::{self, Queue};
use crate::queue::{NewJob, QueueStore};

/// A row's wait in the outbox, recorded in its trace once the row is relayed.
struct OutboxWait {
    id: Uuid,
    kind: String,
    parent: opentelemetry::Context,
    since: std::time::SystemTime,
}

impl OutboxWait {
    fn new(
        id: Uuid,
        kind: &str,
        traceparent: &str,
        created_at: chrono::DateTime<chrono::Utc>,
    ) -> Self {
        let parent = crate::trace::context_from(Some(traceparent), None);
        Self { id, kind: kind.to_owned(), parent, since: created_at.into() }
    }

    fn record(self, until: std::time::SystemTime) {
        let attributes = vec![
            opentelemetry::KeyValue::new("job.id", self.id.to_string()),
            opentelemetry::KeyValue::new("job.kind", self.kind),
        ];
        crate::trace::record_wait("outbox.wait", &self.parent, self.since, until, attributes);
    }
}

/// Moves committed outbox rows into Redis.
#[derive(Clone)]
pub struct Relay {
    db: PgPool,
    store: QueueStore,
    /// Rows per transaction: large enough to drain a backlog quickly, small enough that one
    /// transaction holds few locks.
    batch_size: i64,
    poll_interval: Duration,
}

impl Relay {
    pub fn new(db: PgPool, store: QueueStore, poll_interval: Duration) -> Self {
        Self { db, store, batch_size: 200, poll_interval }
    }

    /// Relays one batch; returns how many rows it took (pushed, published or quarantined).
    pub async fn relay_batch(&self) -> anyhow::Result<usize> {
        let mut tx = self.db.begin().await?;
        // Rows of a queue this release does not know (written by a newer one) are left for
        // the release that does, without ever filling a batch.
        let known: Vec<String> =
            Queue::ALL.map(Queue::as_str).into_iter().chain([EVENTS]).map(str::to_owned).collect();
        let rows = sqlx::query!(
            r#"select id, queue, kind, payload::text as "payload!", max_attempts, request_id,
                      traceparent, user_id, created_at,
                      (extract(epoch from run_at) * 1000)::bigint as run_at_ms
             from outbox
             where relayed_at is null and finished_at is null and queue = any($2)
             order by created_at, id
             limit $1
             for update skip locked"#,
            self.batch_size,
            &known,
        )
        .fetch_all(&mut *tx)
        .await?;
        if rows.is_empty() {
            return Ok(0);
        }
        let taken = rows.len();
        let mut by_queue: Vec<(Queue, Vec<NewJob>)> = Vec::new();
        let mut events = Vec::new();
        let mut poison: Vec<(Uuid, String)> = Vec::new();
        let mut waits = Vec::new();
        let mut receipts = Receipts::default();
        for row in rows {
            if row.queue == EVENTS {
                match serde_json::from_str::<crate::events::Recorded>(&row.payload) {
                    Ok(recorded) => {
                        receipts.expect_event(row.id, row.request_id);
                        events.push((row.id, row.kind, recorded))
                    }
                    Err(err) => {
                        poison.push((row.id, format!("event payload does not decode: {err}")))
                    }
                }
                continue;
            }
            let Some(queue) = Queue::named(&row.queue) else {
                continue;
            };
            let checked = match jobs::spec(&row.kind) {
                Some(spec) if spec.queue != queue => Err(format!(
                    "job kind {:?} belongs to queue {:?}, not {:?}",
                    row.kind,
                    spec.queue.as_str(),
                    row.queue
                )),
                _ => jobs::check_payload(&row.kind, &row.payload),
            };
            if let Err(reason) = checked {
                poison.push((row.id, reason));
                continue;
            }
            if let Some(traceparent) = &row.traceparent {
                waits.push(OutboxWait::new(row.id, &row.kind, traceparent, row.created_at));
            }
            receipts.job(row.id, &row.kind, row.request_id.as_deref(), row.user_id);
            let job = NewJob {
                id: row.id,
                kind: row.kind,
                payload: row.payload,
                max_attempts: u32::try_from(row.max_attempts).unwrap_or(1),
                request_id: row.request_id,
                traceparent: row.traceparent,
                unique: None,
                due_ms: row.run_at_ms,
            };
            match by_queue.iter_mut().find(|(q, _)| *q == queue) {
                Some((_, jobs)) => jobs.push(job),
                None => by_queue.push((queue, vec![job])),
            }
        }
        // The outbox wait of these rows ends as they are handed to Redis (where the queue
        // wait starts), not when this transaction commits.
        let pushing = std::time::SystemTime::now();
        for (queue, jobs) in &by_queue {
            if let Err(err) = self.store.push(*queue, jobs).await {
                drop(tx);
                self.note_failure(jobs.iter().map(|job| job.id).collect(), &err).await?;
                return Err(err.into());
            }
        }
        // Events in commit order, after the jobs: published at most once more if this
        // transaction then fails to commit (at-least-once, like jobs).
        let mut conn = self.store.connection();
        for (id, kind, recorded) in &events {
            match crate::events::publish(&mut conn, self.store.keys(), kind, recorded).await {
                Ok(stream_id) => receipts.event(*id, kind, recorded.user_id, stream_id),
                Err(err) => {
                    drop(tx);
                    self.note_failure(vec![*id], &err).await?;
                    return Err(err.into());
                }
            }
        }
        let relayed: Vec<Uuid> =
            by_queue.iter().flat_map(|(_, jobs)| jobs.iter().map(|job| job.id)).collect();
        sqlx::query!("update outbox set relayed_at = now() where id = any($1)", &relayed)
            .execute(&mut *tx)
            .await?;
        let published: Vec<Uuid> = events.iter().map(|(id, _, _)| *id).collect();
        sqlx::query!("delete from outbox where id = any($1)", &published).execute(&mut *tx).await?;
        receipts.keep_events(&mut tx).await?;
        if !poison.is_empty() {
            let (ids, reasons): (Vec<Uuid>, Vec<String>) = poison.into_iter().unzip();
            for (id, reason) in ids.iter().zip(&reasons) {
                tracing::error!(%id, %reason, "outbox row quarantined");
            }
            sqlx::query!(
                "update outbox set finished_at = now(), outcome = 'quarantined', last_error = x.reason
                 from unnest($1::uuid[], $2::text[]) as x(id, reason) where outbox.id = x.id",
                &ids,
                &reasons,
            )
            .execute(&mut *tx)
            .await?;
            metrics::counter!("outbox_quarantined_total").increment(ids.len() as u64);
        }
        tx.commit().await?;
        let relayed_ids: std::collections::HashSet<Uuid> = relayed.iter().copied().collect();
        for wait in waits.into_iter().filter(|wait| relayed_ids.contains(&wait.id)) {
            wait.record(pushing);
        }
        receipts.announce(&mut conn, self.store.keys()).await;
        metrics::counter!("outbox_relayed_total")
            .increment((relayed.len() + published.len()) as u64);
        Ok(taken)
    }

    /// Notes on rows that must wait (Redis down or full) why they wait, for operators.
    async fn note_failure(&self, ids: Vec<Uuid>, err: &redis::RedisError) -> sqlx::Result<()> {
        sqlx::query!(
            "update outbox set relay_attempts = relay_attempts + 1, last_error = $2 where id = any($1)",
            &ids,
            err.to_string(),
        )
        .execute(&self.db)
        .await?;
        Ok(())
    }

    /// Relays until `shutdown` resolves: drains the backlog, then waits for a notification
    /// or the poll interval. Failures (Redis or Postgres down) back off up to five seconds and
    /// never stop the loop.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        let mut listener: Option<PgListener> = None;
        let mut failures: u32 = 0;
        loop {
            if listener.is_none() {
                listener = self.listen().await;
            }
            let wait = match self.relay_batch().await {
                Ok(moved) if moved as i64 >= self.batch_size => {
                    failures = 0;
                    // Draining a backlog, but a stop still stops at once.
                    if futures::FutureExt::now_or_never(&mut shutdown).is_some() {
                        break;
                    }
                    continue;
                }
                Ok(_) => {
                    failures = 0;
                    None
                }
                Err(err) => {
                    failures = failures.saturating_add(1);
                    let delay = Duration::from_millis(100 * 2u64.pow(failures.min(6)))
                        .min(Duration::from_secs(5));
                    tracing::warn!(error = %err, retry_in_ms = delay.as_millis() as u64, "outbox relay failed");
                    Some(delay)
                }
            };
            let lost = tokio::select! {
                () = &mut shutdown => break,
                lost = self.wait(listener.as_mut(), wait) => lost,
            };
            if lost {
                listener = None;
            }
        }
        tracing::info!("outbox relay stopped");
    }

    /// Waits for a notification, the poll interval, or the failure backoff; `true` when the
    /// listener's connection was lost (it is then re-created; until then we poll).
    async fn wait(&self, listener: Option<&mut PgListener>, backoff: Option<Duration>) -> bool {
        match (listener, backoff) {
            (_, Some(_)) | (None, None) => {
                tokio::time::sleep(backoff.unwrap_or(self.poll_interval)).await;
                false
            }
            (Some(listener), None) => {
                match tokio::time::timeout(self.poll_interval, listener.recv()).await {
                    Ok(Ok(_)) | Err(_) => false,
                    Ok(Err(err)) => {
                        tracing::warn!(error = %err, "outbox listener lost; polling until it is back");
                        true
                    }
                }
            }
        }
    }

    async fn listen(&self) -> Option<PgListener> {
        let mut listener = PgListener::connect_with(&self.db).await.ok()?;
        listener.listen(CHANNEL).await.ok()?;
        Some(listener)
    }
}
