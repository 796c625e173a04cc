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

use std::collections::HashMap;
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
static RETRY: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("retry.lua")));

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
    /// For kinds that run once per key: the key (under the queue's namespace) and how long
    /// its claim lasts. A second job with a claimed key is skipped.
    pub unique: Option<(String, Duration)>,
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
    Retry {
        error: String,
        delay: Duration,
    },
    /// Failed for good (last attempt, or a permanent error).
    Dead {
        error: String,
    },
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

    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    pub fn settings(&self) -> QueueSettings {
        self.settings
    }

    /// The namespace of a queue: `<prefix>:{<queue>}:`, one hash tag.
    fn ns(&self, queue: Queue) -> String {
        format!("{}:", self.keys.queue(queue.as_str()))
    }

    /// A key of a queue's namespace.
    pub fn key(&self, queue: Queue, name: &str) -> String {
        format!("{}{name}", self.ns(queue))
    }

    /// Adds jobs to a queue; returns how many were new (ids already present are skipped).
    pub async fn push(&self, queue: Queue, jobs: &[NewJob]) -> redis::RedisResult<usize> {
        if jobs.is_empty() {
            return Ok(0);
        }
        let mut invocation = PUSH.prepare_invoke();
        invocation.key(self.key(queue, "running")).arg(self.ns(queue)).arg(WAKE_CAP);
        for job in jobs {
            invocation
                .arg(job.id.to_string())
                .arg(&job.kind)
                .arg(&job.payload)
                .arg(job.max_attempts)
                .arg(job.request_id.as_deref().unwrap_or(""));
            match &job.unique {
                Some((key, ttl)) => invocation.arg(key).arg(millis(*ttl)),
                None => invocation.arg("").arg(0),
            };
        }
        invocation.invoke_async(&mut self.conn.clone()).await
    }

    /// Claims up to `n` jobs of `kind` for `worker`, after moving due retries and expired
    /// leases back to pending.
    pub async fn claim(
        &self,
        queue: Queue,
        kind: &str,
        worker: &str,
        n: usize,
    ) -> redis::RedisResult<Vec<Claim>> {
        type Row = (String, String, String, u32, u32, String, String);
        let rows: Vec<Row> = FETCH
            .key(self.key(queue, "running"))
            .arg(self.ns(queue))
            .arg(kind)
            .arg(worker)
            .arg(millis(self.settings.lease))
            .arg(n)
            .arg(millis(self.settings.done_retention))
            .arg(millis(self.settings.dead_retention))
            .arg(SWEEP_LIMIT)
            .arg(WAKE_CAP)
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
    pub async fn finish(
        &self,
        claim: &Claim,
        outcome: &Outcome,
        took: Duration,
    ) -> redis::RedisResult<bool> {
        let recorded = self.finish_many(claim.queue, &[(claim, outcome, took)]).await?;
        Ok(recorded.first().copied().unwrap_or(false))
    }

    /// Records the outcomes of several attempts on one queue in one call; per attempt,
    /// whether it was accepted.
    pub async fn finish_many(
        &self,
        queue: Queue,
        outcomes: &[(&Claim, &Outcome, Duration)],
    ) -> redis::RedisResult<Vec<bool>> {
        if outcomes.is_empty() {
            return Ok(Vec::new());
        }
        let mut invocation = FINISH.prepare_invoke();
        invocation
            .key(self.key(queue, "running"))
            .arg(self.ns(queue))
            .arg(millis(self.settings.done_retention))
            .arg(millis(self.settings.dead_retention));
        for (claim, outcome, took) in outcomes {
            let (name, error, delay) = match outcome {
                Outcome::Succeeded => ("ok", "", Duration::ZERO),
                Outcome::Retry { error, delay } => ("retry", error.as_str(), *delay),
                Outcome::Dead { error } => ("dead", error.as_str(), Duration::ZERO),
            };
            invocation
                .arg(&claim.id)
                .arg(&claim.token)
                .arg(name)
                .arg(millis(*took))
                .arg(error)
                .arg(millis(delay));
        }
        let recorded: Vec<i64> = invocation.invoke_async(&mut self.conn.clone()).await?;
        Ok(recorded.into_iter().map(|r| r == 1).collect())
    }

    /// Extends the leases of claims still held (a worker's heartbeat).
    pub async fn renew(
        &self,
        queue: Queue,
        claims: &[(String, String)],
    ) -> redis::RedisResult<usize> {
        self.renew_or_release(queue, "renew", claims).await
    }

    /// Hands claims back to the front of their queue without counting the attempt
    /// (graceful shutdown).
    pub async fn release(
        &self,
        queue: Queue,
        claims: &[(String, String)],
    ) -> redis::RedisResult<usize> {
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
            .arg(self.ns(queue))
            .arg(mode)
            .arg(millis(self.settings.lease))
            .arg(WAKE_CAP);
        for (id, token) in claims {
            invocation.arg(id).arg(token);
        }
        invocation.invoke_async(&mut self.conn.clone()).await
    }

    /// Blocks on a kind's wake list for up to `timeout`, on a connection of the caller's
    /// own (a blocking command would stall every user of a shared multiplexed connection).
    pub async fn wait_for_work(
        &self,
        blocking: &mut ConnectionManager,
        queue: Queue,
        kind: &str,
        timeout: Duration,
    ) -> redis::RedisResult<()> {
        let _: Option<(String, String)> = redis::cmd("BLPOP")
            .arg(self.key(queue, &format!("wake:{kind}")))
            .arg(timeout.as_secs_f64())
            .query_async(blocking)
            .await?;
        Ok(())
    }
}

/// One attempt of a job, as kept in its history.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct AttemptRecord {
    pub attempt: u32,
    pub worker: Option<String>,
    pub started_ms: Option<i64>,
    pub duration_ms: Option<i64>,
    /// Why it failed; `None` when it succeeded.
    pub error: Option<String>,
    /// For a failure that was retried: the backoff chosen before the next attempt.
    pub retry_in_ms: Option<i64>,
}

/// A job as stored, for inspection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobRecord {
    pub id: String,
    pub queue: Queue,
    pub kind: String,
    pub payload: String,
    /// `pending`, `running`, `scheduled`, `done` or `dead`.
    pub state: String,
    pub attempts: u32,
    pub max_attempts: u32,
    pub created_ms: i64,
    pub finished_ms: Option<i64>,
    /// The worker holding it, when running.
    pub worker: Option<String>,
    pub last_error: Option<String>,
    pub request_id: Option<String>,
    pub history: Vec<AttemptRecord>,
}

/// The states a job can be listed by, with the index that holds them.
pub const STATES: [&str; 5] = ["pending", "running", "scheduled", "done", "dead"];

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
    /// Sends a dead job back to its queue with fresh attempts; `false` unless it was dead.
    pub async fn retry_dead(&self, queue: Queue, id: &str) -> redis::RedisResult<bool> {
        let retried: i64 = RETRY
            .key(self.key(queue, "running"))
            .arg(self.ns(queue))
            .arg(id)
            .arg(WAKE_CAP)
            .invoke_async(&mut self.conn.clone())
            .await?;
        Ok(retried == 1)
    }

    /// Failed attempts (errors and expired leases) in the last hour.
    pub async fn failed_last_hour(&self, queue: Queue) -> redis::RedisResult<u64> {
        let (seconds, _): (u64, u64) =
            redis::cmd("TIME").query_async(&mut self.conn.clone()).await?;
        let minute = seconds / 60;
        let keys: Vec<String> =
            (0..60).map(|ago| self.key(queue, &format!("failed:{}", minute - ago))).collect();
        let counts: Vec<Option<u64>> =
            redis::cmd("MGET").arg(&keys).query_async(&mut self.conn.clone()).await?;
        Ok(counts.into_iter().flatten().sum())
    }

    /// A job by id in whichever queue holds it.
    pub async fn find_job(&self, id: &str) -> redis::RedisResult<Option<JobRecord>> {
        for queue in Queue::ALL {
            if let Some(job) = self.job(queue, id).await? {
                return Ok(Some(job));
            }
        }
        Ok(None)
    }

    /// One job, if it still exists.
    pub async fn job(&self, queue: Queue, id: &str) -> redis::RedisResult<Option<JobRecord>> {
        let fields: HashMap<String, String> = redis::cmd("HGETALL")
            .arg(self.key(queue, &format!("job:{id}")))
            .query_async(&mut self.conn.clone())
            .await?;
        if fields.is_empty() {
            return Ok(None);
        }
        let text = |name: &str| fields.get(name).filter(|v| !v.is_empty()).cloned();
        let number = |name: &str| text(name).and_then(|v| v.parse::<i64>().ok());
        let mut history: Vec<AttemptRecord> =
            text("history").and_then(|h| serde_json::from_str(&h).ok()).unwrap_or_default();
        // A successful attempt is kept in the flat fields (see finish.lua): it is the last one.
        if text("state").as_deref() == Some("done") {
            history.push(AttemptRecord {
                attempt: number("attempts").and_then(|n| u32::try_from(n).ok()).unwrap_or(1),
                worker: text("worker"),
                started_ms: number("started_ms"),
                duration_ms: number("duration_ms"),
                error: None,
                retry_in_ms: None,
            });
        }
        Ok(Some(JobRecord {
            id: id.to_owned(),
            queue,
            kind: text("kind").unwrap_or_default(),
            payload: text("payload").unwrap_or_default(),
            state: text("state").unwrap_or_default(),
            attempts: number("attempts").and_then(|n| u32::try_from(n).ok()).unwrap_or(0),
            max_attempts: number("max_attempts").and_then(|n| u32::try_from(n).ok()).unwrap_or(0),
            created_ms: number("created_ms").unwrap_or(0),
            finished_ms: number("finished_ms"),
            worker: text("worker").filter(|_| text("state").as_deref() == Some("running")),
            last_error: text("last_error"),
            request_id: text("request_id"),
            history,
        }))
    }

    /// Ids of jobs in one state, oldest first (pending: per kind, in declaration order), at
    /// most `limit`.
    pub async fn ids(
        &self,
        queue: Queue,
        state: &str,
        limit: usize,
    ) -> redis::RedisResult<Vec<String>> {
        let stop = isize::try_from(limit).unwrap_or(isize::MAX).saturating_sub(1);
        let mut conn = self.conn.clone();
        if state != "pending" {
            return redis::cmd("ZRANGE")
                .arg(self.key(queue, state))
                .arg(0)
                .arg(stop)
                .query_async(&mut conn)
                .await;
        }
        let mut ids = Vec::new();
        for kind in kinds_of(queue) {
            let more: Vec<String> = redis::cmd("LRANGE")
                .arg(self.key(queue, &format!("pending:{kind}")))
                .arg(0)
                .arg(stop)
                .query_async(&mut conn)
                .await?;
            ids.extend(more);
        }
        ids.truncate(limit);
        Ok(ids)
    }

    /// Records that a schedule's tick at `at_ms` was enqueued (for `GET /admin/schedules`).
    pub async fn record_tick(&self, kind: &str, at_ms: i64) -> redis::RedisResult<()> {
        redis::cmd("HSET")
            .arg(self.keys.global("schedules:last_tick"))
            .arg(kind)
            .arg(at_ms)
            .query_async(&mut self.conn.clone())
            .await
    }

    /// The last enqueued tick of a schedule, in Unix milliseconds.
    pub async fn last_tick(&self, kind: &str) -> redis::RedisResult<Option<i64>> {
        redis::cmd("HGET")
            .arg(self.keys.global("schedules:last_tick"))
            .arg(kind)
            .query_async(&mut self.conn.clone())
            .await
    }

    /// A clone of the store's shared connection.
    pub fn connection(&self) -> ConnectionManager {
        self.conn.clone()
    }

    /// Counts per state, and the age of the oldest pending job.
    pub async fn depth(&self, queue: Queue) -> redis::RedisResult<Depth> {
        let mut conn = self.conn.clone();
        let (running, scheduled, done, dead, time): (u64, u64, u64, u64, (u64, u64)) =
            redis::pipe()
                .zcard(self.key(queue, "running"))
                .zcard(self.key(queue, "scheduled"))
                .zcard(self.key(queue, "done"))
                .zcard(self.key(queue, "dead"))
                .cmd("TIME")
                .query_async(&mut conn)
                .await?;
        let now_ms = time.0 * 1000 + time.1 / 1000;
        let (mut pending, mut oldest_ms) = (0, now_ms);
        for kind in kinds_of(queue) {
            let list = self.key(queue, &format!("pending:{kind}"));
            let (len, head): (u64, Option<String>) =
                redis::pipe().llen(&list).lindex(&list, 0).query_async(&mut conn).await?;
            pending += len;
            if let Some(id) = head {
                let created: Option<u64> = redis::cmd("HGET")
                    .arg(self.key(queue, &format!("job:{id}")))
                    .arg("created_ms")
                    .query_async(&mut conn)
                    .await?;
                oldest_ms = oldest_ms.min(created.unwrap_or(now_ms));
            }
        }
        Ok(Depth {
            pending,
            running,
            scheduled,
            done,
            dead,
            oldest_pending_age: Duration::from_millis(now_ms.saturating_sub(oldest_ms)),
        })
    }
}

/// The declared kinds of a queue.
fn kinds_of(queue: Queue) -> impl Iterator<Item = &'static str> {
    crate::jobs::ALL.iter().filter(move |spec| spec.queue == queue).map(|spec| spec.kind)
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}
