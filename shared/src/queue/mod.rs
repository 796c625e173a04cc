//! Tasklane's Redis job store: durable queues with leases timed by Redis.
//!
//! Per queue, under the hash-tagged namespace `<prefix>:{<queue>}`:
//! - `job:<id>` hash: kind, payload, attempts, max attempts, state, history of attempts;
//! - `pending` list (FIFO), `running` zset (score: lease expiry), `scheduled` zset (score:
//!   when a retry is due), `done` and `dead` zsets (score: when it ended);
//! - `wake` list: one token per pushed job, so an idle worker blocks in `BLPOP` instead of
//!   polling and starts a new job within milliseconds.
//!
//! Every state change is one Lua script, so it is atomic, and every time comes from Redis'
//! `TIME`, never a worker's clock. An attempt is counted when it is claimed (a job that kills
//! its worker still uses an attempt), and its outcome is accepted only with the claim's token
//! (a worker whose lease expired cannot overwrite the next run's result). The README says
//! why this replaces apalis-redis' storage.

pub mod backend;

pub use backend::{HeldClaims, RedisBackend};

use std::time::Duration;

use redis::Script;
use redis::aio::ConnectionManager;
use std::sync::LazyLock;
use uuid::Uuid;

use crate::jobs::Queue;
use crate::redis::Keys;

static PUSH: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("push.lua")));
static FETCH: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("fetch.lua")));
static FINISH: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("finish.lua")));
static RENEW: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("renew.lua")));

/// Wake tokens kept when no worker consumes them.
const WAKE_CAP: usize = 1024;
/// Most due retries and expired leases one fetch moves, so one call stays short.
const SWEEP_LIMIT: usize = 500;

/// Timing of the store.
#[derive(Debug, Clone, Copy)]
pub struct QueueSettings {
    /// How long a claim lasts without a heartbeat; a dead worker's jobs return after this.
    pub lease: Duration,
    /// How long finished jobs stay inspectable.
    pub done_retention: Duration,
    /// How long dead jobs stay inspectable and retryable.
    pub dead_retention: Duration,
}

impl Default for QueueSettings {
    fn default() -> Self {
        Self {
            lease: Duration::from_secs(15),
            done_retention: Duration::from_secs(24 * 3600),
            dead_retention: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

/// A job to add to a queue.
#[derive(Debug, Clone)]
pub struct NewJob {
    pub id: Uuid,
    pub kind: String,
    /// The payload as JSON.
    pub payload: String,
    pub max_attempts: u32,
    pub request_id: Option<String>,
}

/// A job claimed by a worker for one attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    pub queue: Queue,
    pub id: String,
    pub kind: String,
    pub payload: String,
    /// This attempt's number, from 1.
    pub attempt: u32,
    pub max_attempts: u32,
    pub request_id: Option<String>,
    /// Fences this attempt's outcome; see the module doc.
    pub token: String,
}

/// What became of an attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Succeeded,
    /// Failed; run again after the delay.
    Retry { error: String, delay: Duration },
    /// Failed for good (last attempt, or a permanent error).
    Dead { error: String },
}

/// Client of the store; cheap to clone.
#[derive(Clone)]
pub struct QueueStore {
    conn: ConnectionManager,
    keys: Keys,
    settings: QueueSettings,
}

impl QueueStore {
    pub fn new(conn: ConnectionManager, keys: Keys, settings: QueueSettings) -> Self {
        Self { conn, keys, settings }
    }

    pub fn settings(&self) -> QueueSettings {
        self.settings
    }

    /// A key of a queue's namespace.
    pub fn key(&self, queue: Queue, name: &str) -> String {
        format!("{}:{name}", self.keys.queue(queue.as_str()))
    }

    fn job_prefix(&self, queue: Queue) -> String {
        self.key(queue, "job:")
    }

    /// Adds jobs to a queue; returns how many were new (ids already present are skipped).
    pub async fn push(&self, queue: Queue, jobs: &[NewJob]) -> redis::RedisResult<usize> {
        if jobs.is_empty() {
            return Ok(0);
        }
        let mut invocation = PUSH.prepare_invoke();
        invocation
            .key(self.key(queue, "pending"))
            .key(self.key(queue, "wake"))
            .arg(self.job_prefix(queue))
            .arg(WAKE_CAP);
        for job in jobs {
            invocation
                .arg(job.id.to_string())
                .arg(&job.kind)
                .arg(&job.payload)
                .arg(job.max_attempts)
                .arg(job.request_id.as_deref().unwrap_or(""));
        }
        invocation.invoke_async(&mut self.conn.clone()).await
    }

    /// Claims up to `n` jobs for `worker`, after moving due retries and expired leases back
    /// to pending.
    pub async fn claim(&self, queue: Queue, worker: &str, n: usize) -> redis::RedisResult<Vec<Claim>> {
        type Row = (String, String, String, u32, u32, String, String);
        let rows: Vec<Row> = FETCH
            .key(self.key(queue, "pending"))
            .key(self.key(queue, "running"))
            .key(self.key(queue, "scheduled"))
            .key(self.key(queue, "done"))
            .key(self.key(queue, "dead"))
            .arg(self.job_prefix(queue))
            .arg(worker)
            .arg(millis(self.settings.lease))
            .arg(n)
            .arg(millis(self.settings.done_retention))
            .arg(millis(self.settings.dead_retention))
            .arg(SWEEP_LIMIT)
            .invoke_async(&mut self.conn.clone())
            .await?;
        Ok(rows
            .into_iter()
            .map(|(id, kind, payload, attempt, max_attempts, request_id, token)| Claim {
                queue,
                id,
                kind,
                payload,
                attempt,
                max_attempts,
                request_id: Some(request_id).filter(|r| !r.is_empty()),
                token,
            })
            .collect())
    }

    /// Records an attempt's outcome; `false` when the claim was no longer this worker's.
    pub async fn finish(&self, claim: &Claim, outcome: &Outcome, took: Duration) -> redis::RedisResult<bool> {
        let (name, error, delay) = match outcome {
            Outcome::Succeeded => ("ok", "", Duration::ZERO),
            Outcome::Retry { error, delay } => ("retry", error.as_str(), *delay),
            Outcome::Dead { error } => ("dead", error.as_str(), Duration::ZERO),
        };
        let queue = claim.queue;
        let accepted: i64 = FINISH
            .key(self.key(queue, "running"))
            .key(self.key(queue, "done"))
            .key(self.key(queue, "scheduled"))
            .key(self.key(queue, "dead"))
            .arg(format!("{}{}", self.job_prefix(queue), claim.id))
            .arg(&claim.id)
            .arg(&claim.token)
            .arg(name)
            .arg(millis(took))
            .arg(error)
            .arg(millis(delay))
            .arg(millis(self.settings.done_retention))
            .arg(millis(self.settings.dead_retention))
            .invoke_async(&mut self.conn.clone())
            .await?;
        Ok(accepted == 1)
    }

    /// Extends the leases of claims still held (a worker's heartbeat).
    pub async fn renew(&self, queue: Queue, claims: &[(String, String)]) -> redis::RedisResult<usize> {
        self.renew_or_release(queue, "renew", claims).await
    }

    /// Hands claims back to the front of their queue without counting the attempt
    /// (graceful shutdown).
    pub async fn release(&self, queue: Queue, claims: &[(String, String)]) -> redis::RedisResult<usize> {
        self.renew_or_release(queue, "release", claims).await
    }

    async fn renew_or_release(
        &self,
        queue: Queue,
        mode: &str,
        claims: &[(String, String)],
    ) -> redis::RedisResult<usize> {
        if claims.is_empty() {
            return Ok(0);
        }
        let mut invocation = RENEW.prepare_invoke();
        invocation
            .key(self.key(queue, "running"))
            .key(self.key(queue, "pending"))
            .arg(self.job_prefix(queue))
            .arg(mode)
            .arg(millis(self.settings.lease));
        for (id, token) in claims {
            invocation.arg(id).arg(token);
        }
        invocation.invoke_async(&mut self.conn.clone()).await
    }

    /// Blocks on the queue's wake list for up to `timeout`, on a connection of the caller's
    /// own (a blocking command would stall every user of a shared multiplexed connection).
    pub async fn wait_for_work(
        &self,
        blocking: &mut ConnectionManager,
        queue: Queue,
        timeout: Duration,
    ) -> redis::RedisResult<()> {
        let _: Option<(String, String)> = redis::cmd("BLPOP")
            .arg(self.key(queue, "wake"))
            .arg(timeout.as_secs_f64())
            .query_async(blocking)
            .await?;
        Ok(())
    }

    /// The state of one job (`pending`, `running`, `scheduled`, `done`, `dead`), if it exists.
    pub async fn state(&self, queue: Queue, id: &str) -> redis::RedisResult<Option<String>> {
        redis::cmd("HGET")
            .arg(format!("{}{id}", self.job_prefix(queue)))
            .arg("state")
            .query_async(&mut self.conn.clone())
            .await
    }
}

/// How many jobs a queue holds in each state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Depth {
    pub pending: u64,
    pub running: u64,
    pub scheduled: u64,
    pub done: u64,
    pub dead: u64,
    /// How long the job at the head of the queue has waited (zero when empty).
    pub oldest_pending_age: Duration,
}

impl QueueStore {
    /// A clone of the store's shared connection.
    pub fn connection(&self) -> ConnectionManager {
        self.conn.clone()
    }

    /// Counts per state, read in one round trip.
    pub async fn depth(&self, queue: Queue) -> redis::RedisResult<Depth> {
        let (pending, running, scheduled, done, dead, head, time): (u64, u64, u64, u64, u64, Option<String>, (u64, u64)) =
            redis::pipe()
                .llen(self.key(queue, "pending"))
                .zcard(self.key(queue, "running"))
                .zcard(self.key(queue, "scheduled"))
                .zcard(self.key(queue, "done"))
                .zcard(self.key(queue, "dead"))
                .lindex(self.key(queue, "pending"), 0)
                .cmd("TIME")
                .query_async(&mut self.conn.clone())
                .await?;
        let mut oldest_pending_age = Duration::ZERO;
        if let Some(id) = head {
            let created: Option<u64> = redis::cmd("HGET")
                .arg(format!("{}{id}", self.job_prefix(queue)))
                .arg("created_ms")
                .query_async(&mut self.conn.clone())
                .await?;
            let now_ms = time.0 * 1000 + time.1 / 1000;
            oldest_pending_age = Duration::from_millis(now_ms.saturating_sub(created.unwrap_or(now_ms)));
        }
        Ok(Depth { pending, running, scheduled, done, dead, oldest_pending_age })
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}
