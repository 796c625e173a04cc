//! The transactional outbox and its relay (SPEC section 7).
//!
//! The API never pushes to Redis inside a request. It calls [`enqueue`] with the same
//! transaction as the change that causes the job, so the job exists exactly when the change
//! does. The [`Relay`] (run by every worker) moves committed rows into the Redis queues:
//! woken by `NOTIFY` at commit, with a poll as the fallback, locking rows with
//! `FOR UPDATE SKIP LOCKED` so any number of relays share the work without taking the same
//! row, and deleting rows in the transaction that pushed them. A push that reached Redis
//! but whose delete failed to commit is pushed again later; the store skips ids it already
//! holds, so that is still one job. While Redis is down rows simply stay, and flow when it
//! returns.

use std::future::Future;
use std::time::Duration;

use sqlx::PgConnection;
use sqlx::postgres::{PgListener, PgPool};
use uuid::Uuid;

use crate::jobs::{Job, Queue};
use crate::queue::{NewJob, QueueStore};

/// The channel the `outbox_notify` trigger notifies at commit.
pub const CHANNEL: &str = "tasklane_outbox";

/// Writes a job into the outbox on the caller's connection, normally inside the transaction
/// of the change that causes it. Returns the job id (also its id in Redis).
pub async fn enqueue<J: Job>(
    conn: &mut PgConnection,
    job: &J,
    request_id: Option<&str>,
) -> Result<Uuid, sqlx::Error> {
    let id = Uuid::now_v7();
    let payload = serde_json::to_value(job).map_err(|err| sqlx::Error::Encode(Box::new(err)))?;
    sqlx::query!(
        "insert into outbox (id, queue, kind, payload, max_attempts, request_id)
         values ($1, $2, $3, $4, $5, $6)",
        id,
        J::SPEC.queue.as_str(),
        J::SPEC.kind,
        payload,
        i32::try_from(J::SPEC.max_attempts).unwrap_or(i32::MAX),
        request_id,
    )
    .execute(conn)
    .await?;
    Ok(id)
}

/// Rows waiting to be relayed (the relay backlog), for metrics and health.
pub async fn backlog(pool: &PgPool) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar!(r#"select count(*) as "count!" from outbox"#).fetch_one(pool).await
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

    /// Relays one batch; returns how many rows it moved.
    pub async fn relay_batch(&self) -> anyhow::Result<usize> {
        let mut tx = self.db.begin().await?;
        // Rows of a queue this release does not know (written by a newer one) are left for
        // the release that does, without ever filling a batch.
        let known: Vec<String> = Queue::ALL
            .map(Queue::as_str)
            .into_iter()
            .chain([crate::events::OUTBOX_QUEUE])
            .map(str::to_owned)
            .collect();
        let rows = sqlx::query!(
            r#"select id, queue, kind, payload::text as "payload!", max_attempts, request_id
             from outbox
             where queue = any($2)
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
        let mut by_queue: Vec<(Queue, Vec<NewJob>)> = Vec::new();
        let mut events = Vec::new();
        let mut ids = Vec::with_capacity(rows.len());
        for row in rows {
            let id = row.id;
            let queue_name = row.queue;
            if queue_name == crate::events::OUTBOX_QUEUE {
                match serde_json::from_str::<crate::events::Recorded>(&row.payload) {
                    Ok(recorded) => events.push((id, row.kind, recorded)),
                    Err(err) => {
                        tracing::error!(%id, error = %err, "outbox event does not decode; dropped")
                    }
                }
                ids.push(id);
                continue;
            }
            let Some(queue) = Queue::ALL.into_iter().find(|q| q.as_str() == queue_name) else {
                // Written by a newer release that knows a queue we don't: leave it for that
                // release's workers rather than lose it.
                tracing::warn!(%id, queue = %queue_name, "outbox row for an unknown queue left in place");
                continue;
            };
            let job = NewJob {
                id,
                kind: row.kind,
                payload: row.payload,
                max_attempts: u32::try_from(row.max_attempts).unwrap_or(1),
                request_id: row.request_id,
                unique: None,
            };
            match by_queue.iter_mut().find(|(q, _)| *q == queue) {
                Some((_, jobs)) => jobs.push(job),
                None => by_queue.push((queue, vec![job])),
            }
            ids.push(id);
        }
        for (queue, jobs) in &by_queue {
            if let Err(err) = self.store.push(*queue, jobs).await {
                // Keep the rows (roll back the locks) but note why they wait.
                drop(tx);
                let ids: Vec<Uuid> = jobs.iter().map(|job| job.id).collect();
                sqlx::query!(
                    "update outbox set relay_attempts = relay_attempts + 1, last_error = $2
                     where id = any($1)",
                    &ids,
                    err.to_string(),
                )
                .execute(&self.db)
                .await?;
                return Err(err.into());
            }
        }
        // Events in commit order, after the jobs: published at most once more if this
        // transaction then fails to commit (at-least-once, like jobs).
        let mut conn = self.store.connection();
        for (id, kind, recorded) in &events {
            if let Err(err) =
                crate::events::publish(&mut conn, self.store.keys(), kind, recorded).await
            {
                drop(tx);
                sqlx::query!(
                    "update outbox set relay_attempts = relay_attempts + 1, last_error = $2
                     where id = $1",
                    id,
                    err.to_string(),
                )
                .execute(&self.db)
                .await?;
                return Err(err.into());
            }
        }
        sqlx::query!("delete from outbox where id = any($1)", &ids).execute(&mut *tx).await?;
        tx.commit().await?;
        metrics::counter!("outbox_relayed_total").increment(ids.len() as u64);
        Ok(ids.len())
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
