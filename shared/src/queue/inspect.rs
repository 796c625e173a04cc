//! Reading the store for operators: a job with its history, the ids in a state, how deep
//! each queue is, failures in the last hour, and the one write an operator makes, retrying
//! a dead job. Workers never call these; the admin API and the worker's gauges do.

use std::collections::HashMap;
use std::sync::LazyLock;
use std::time::Duration;

use redis::{AsyncCommands, Script};

use super::WAKE_CAP;
use super::record::{Pushed, Run, job_field};
use super::{QueueStore, kinds_of};
use crate::domain::jobs::JobState;
use crate::jobs::Queue;

static RETRY: LazyLock<Script> = LazyLock::new(|| super::script(include_str!("retry.lua")));

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
    pub state: JobState,
    pub attempts: u32,
    pub max_attempts: u32,
    pub created_ms: i64,
    pub finished_ms: Option<i64>,
    /// The worker holding it, when running.
    pub worker: Option<String>,
    pub last_error: Option<String>,
    pub request_id: Option<String>,
    /// The trace the job belongs to (from its `traceparent`), to find it in a trace viewer.
    pub trace_id: Option<String>,
    pub history: Vec<AttemptRecord>,
}

/// How many jobs a queue holds in each state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Depth {
    pub pending: u64,
    pub running: u64,
    pub scheduled: u64,
    pub done: u64,
    pub dead: u64,
    pub cancelled: u64,
    /// How long the job at the head of the queue has waited (zero when empty).
    pub oldest_pending_age: Duration,
}

impl Depth {
    /// How many jobs are in `state`.
    pub fn of(&self, state: JobState) -> u64 {
        match state {
            JobState::Pending => self.pending,
            JobState::Running => self.running,
            JobState::Scheduled => self.scheduled,
            JobState::Done => self.done,
            JobState::Dead => self.dead,
            JobState::Cancelled => self.cancelled,
        }
    }
}

/// What fetching holds back in a queue, as Redis has it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pauses {
    /// Whether Redis has a copy of the controls at all: without one, fetching claims nothing
    /// until a process copies them back from Postgres (within a second).
    pub copied: bool,
    /// The whole queue is paused.
    pub queue: bool,
    /// The kinds of the queue paused on their own.
    pub kinds: Vec<String>,
}

impl QueueStore {
    /// Sends a dead job back to its queue with fresh attempts; `false` unless it was dead.
    pub async fn retry_dead(&self, queue: Queue, id: &str) -> redis::RedisResult<bool> {
        for shard in self.shards.homes(id) {
            self.learn_kinds(queue, shard).await?;
            let mut invocation = RETRY.prepare_invoke();
            for key in self.full_layout(queue, shard, &[]) {
                invocation.key(key);
            }
            let retried: i64 =
                invocation.arg(id).arg(WAKE_CAP).invoke_async(&mut self.conn.clone()).await?;
            if retried == 1 {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Failed attempts (errors and expired leases) in the last hour.
    pub async fn failed_last_hour(&self, queue: Queue) -> redis::RedisResult<u64> {
        let (seconds, _): (u64, u64) =
            redis::cmd("TIME").query_async(&mut self.conn.clone()).await?;
        let minute = seconds / 60;
        let mut failed = 0;
        let minutes: Vec<u64> = (0..60).map(|ago| minute - ago).collect();
        for shard in self.shards.all() {
            let counts: Vec<Option<u64>> = redis::cmd("HMGET")
                .arg(self.key_in(queue, shard, "failed"))
                .arg(&minutes)
                .query_async(&mut self.conn.clone())
                .await?;
            failed += counts.into_iter().flatten().sum::<u64>();
        }
        Ok(failed)
    }

    /// Jobs of `queue` that succeeded within the last `window`, by Redis' clock: the done
    /// set is scored by finish time (`finish.lua`), so this is one `ZCOUNT`, no counter to
    /// keep. Finished jobs older than the retention are gone, so a window longer than it
    /// undercounts.
    pub async fn done_within(&self, queue: Queue, window: Duration) -> redis::RedisResult<u64> {
        let mut conn = self.conn.clone();
        let (seconds, micros): (u64, u64) = redis::cmd("TIME").query_async(&mut conn).await?;
        let now_ms = seconds * 1000 + micros / 1000;
        let since = now_ms.saturating_sub(u64::try_from(window.as_millis()).unwrap_or(u64::MAX));
        let mut done = 0;
        for shard in self.shards.all() {
            let count: u64 = redis::cmd("ZCOUNT")
                .arg(self.key_in(queue, shard, JobState::Done.as_str()))
                .arg(since)
                .arg("+inf")
                .query_async(&mut conn)
                .await?;
            done += count;
        }
        Ok(done)
    }

    /// The pauses fetching obeys in `queue` right now: Redis' copy of the controls
    /// (`crate::controls`), which may trail an admin's change by the copy's delay.
    pub async fn pauses(&self, queue: Queue) -> redis::RedisResult<Pauses> {
        let fields: HashMap<String, String> = redis::cmd("HGETALL")
            .arg(self.key(queue, "controls"))
            .query_async(&mut self.conn.clone())
            .await?;
        let on = |field: &str| fields.get(field).is_some_and(|value| value == "1");
        Ok(Pauses {
            copied: fields.contains_key("version"),
            queue: on("paused"),
            kinds: kinds_of(queue)
                .filter(|kind| on(&format!("paused:{kind}")))
                .map(str::to_owned)
                .collect(),
        })
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
        let mut fields: Vec<Option<String>> = Vec::new();
        for shard in self.shards.homes(id) {
            fields = redis::cmd("HMGET")
                .arg(self.key_in(queue, shard, "jobs"))
                .arg(
                    ["job", "run", "history", "last_error"]
                        .map(|name| job_field(id, name))
                        .as_slice(),
                )
                .query_async(&mut self.conn.clone())
                .await?;
            if fields.first().is_some_and(Option::is_some) {
                break;
            }
        }
        let [Some(pushed), Some(run), history, last_error] =
            <[Option<String>; 4]>::try_from(fields).unwrap_or_default()
        else {
            return Ok(None);
        };
        let (Some(pushed), Some(run)) = (Pushed::parse(&pushed), Run::parse(&run)) else {
            return Ok(None);
        };
        let state = run.state.parse().unwrap_or(JobState::Pending);
        let mut history: Vec<AttemptRecord> =
            history.and_then(|h| serde_json::from_str(&h).ok()).unwrap_or_default();
        let set = |ms: i64| Some(ms).filter(|ms| *ms > 0);
        let worker = Some(run.worker.to_owned()).filter(|w| !w.is_empty());
        // A successful attempt is kept in the run's fields (see finish.lua): it is the last one.
        if state == JobState::Done {
            history.push(AttemptRecord {
                attempt: run.attempts.max(1),
                worker: worker.clone(),
                started_ms: set(run.started_ms),
                duration_ms: Some(run.duration_ms),
                error: None,
                retry_in_ms: None,
            });
        }
        let text = |value: &str| Some(value.to_owned()).filter(|v| !v.is_empty());
        Ok(Some(JobRecord {
            id: id.to_owned(),
            queue,
            kind: pushed.kind.to_owned(),
            payload: pushed.payload.to_owned(),
            state,
            attempts: run.attempts,
            max_attempts: pushed.max_attempts,
            created_ms: pushed.created_ms,
            finished_ms: set(run.finished_ms),
            worker: worker.filter(|_| state == JobState::Running),
            last_error: last_error.filter(|e| !e.is_empty()),
            request_id: text(pushed.request_id),
            trace_id: crate::trace::trace_id_of(pushed.traceparent).map(str::to_owned),
            history,
        }))
    }

    /// Ids of jobs in one state, oldest first (pending: per kind, in declaration order; on
    /// a sharded queue, shard after shard), at most `limit`.
    pub async fn ids(
        &self,
        queue: Queue,
        state: JobState,
        limit: usize,
    ) -> redis::RedisResult<Vec<String>> {
        let stop = isize::try_from(limit).unwrap_or(isize::MAX).saturating_sub(1);
        let mut conn = self.conn.clone();
        if state != JobState::Pending {
            // Every other state has a sorted set of its name, scored by time: the shards'
            // oldest, merged.
            let mut scored: Vec<(String, f64)> = Vec::new();
            for shard in self.shards.all() {
                let more: Vec<(String, f64)> = redis::cmd("ZRANGE")
                    .arg(self.key_in(queue, shard, state.as_str()))
                    .arg(0)
                    .arg(stop)
                    .arg("WITHSCORES")
                    .query_async(&mut conn)
                    .await?;
                scored.extend(more);
            }
            scored.sort_by(|a, b| a.1.total_cmp(&b.1));
            return Ok(scored.into_iter().take(limit).map(|(id, _)| id).collect());
        }
        let mut ids = Vec::new();
        for shard in self.shards.all() {
            if ids.len() >= limit {
                break;
            }
            ids.extend(self.pending_ids(queue, shard, limit - ids.len()).await?);
        }
        ids.truncate(limit);
        Ok(ids)
    }

    /// Ids of pending jobs in one shard, per kind in declaration order, at most `limit`.
    async fn pending_ids(
        &self,
        queue: Queue,
        shard: u16,
        limit: usize,
    ) -> redis::RedisResult<Vec<String>> {
        let stop = isize::try_from(limit).unwrap_or(isize::MAX).saturating_sub(1);
        let mut conn = self.conn.clone();
        let mut ids = Vec::new();
        for kind in kinds_of(queue) {
            if ids.len() >= limit {
                break;
            }
            let list = self.key_in(queue, shard, &format!("pending:{kind}"));
            let more: Vec<String> = conn.lrange(list, 0, stop).await?;
            ids.extend(more);
            // A kind fair by owner: then its owners' jobs, in their turn's order.
            let owners: Vec<String> =
                conn.lrange(self.key_in(queue, shard, &format!("owners:{kind}")), 0, -1).await?;
            for owner in owners {
                if ids.len() >= limit {
                    break;
                }
                ids.extend(self.owner_turns(queue, shard, kind, &owner, limit - ids.len()).await?);
            }
        }
        ids.truncate(limit);
        Ok(ids)
    }

    /// Counts per state, and the age of the oldest pending job, over every shard.
    pub async fn depth(&self, queue: Queue) -> redis::RedisResult<Depth> {
        let mut total = Depth::default();
        for shard in self.shards.all() {
            let depth = self.depth_in(queue, shard).await?;
            total.pending += depth.pending;
            total.running += depth.running;
            total.scheduled += depth.scheduled;
            total.done += depth.done;
            total.dead += depth.dead;
            total.cancelled += depth.cancelled;
            total.oldest_pending_age = total.oldest_pending_age.max(depth.oldest_pending_age);
        }
        Ok(total)
    }

    async fn depth_in(&self, queue: Queue, shard: u16) -> redis::RedisResult<Depth> {
        let mut conn = self.conn.clone();
        #[allow(clippy::type_complexity)] // one count per sorted set, then the time
        let (running, scheduled, done, dead, cancelled, time): (
            u64,
            u64,
            u64,
            u64,
            u64,
            (u64, u64),
        ) = redis::pipe()
            .zcard(self.key_in(queue, shard, JobState::Running.as_str()))
            .zcard(self.key_in(queue, shard, JobState::Scheduled.as_str()))
            .zcard(self.key_in(queue, shard, JobState::Done.as_str()))
            .zcard(self.key_in(queue, shard, JobState::Dead.as_str()))
            .zcard(self.key_in(queue, shard, JobState::Cancelled.as_str()))
            .cmd("TIME")
            .query_async(&mut conn)
            .await?;
        let now_ms = time.0 * 1000 + time.1 / 1000;
        let (mut pending, mut oldest_ms) = (0, now_ms);
        for kind in kinds_of(queue) {
            let list = self.key_in(queue, shard, &format!("pending:{kind}"));
            let (len, owned, head, next_owner): (u64, u64, Option<String>, Option<String>) =
                redis::pipe()
                    .llen(&list)
                    .zcard(self.key_in(queue, shard, &format!("fair:{kind}")))
                    .lindex(&list, 0)
                    .lindex(self.key_in(queue, shard, &format!("owners:{kind}")), 0)
                    .query_async(&mut conn)
                    .await?;
            pending += len + owned;
            // A kind fair by owner: the owner whose turn is next has waited longest.
            let owned_head = match (head.is_none(), next_owner) {
                (true, Some(owner)) => self.owner_turns(queue, shard, kind, &owner, 1).await?.pop(),
                _ => None,
            };
            if let Some(id) = head.or(owned_head) {
                let pushed: Option<String> = redis::cmd("HGET")
                    .arg(self.key_in(queue, shard, "jobs"))
                    .arg(job_field(&id, "job"))
                    .query_async(&mut conn)
                    .await?;
                let created = pushed.as_deref().and_then(Pushed::parse).map(|p| p.created_ms);
                let created = created.and_then(|ms| u64::try_from(ms).ok());
                oldest_ms = oldest_ms.min(created.unwrap_or(now_ms));
            }
        }
        Ok(Depth {
            pending,
            running,
            scheduled,
            done,
            dead,
            cancelled,
            oldest_pending_age: Duration::from_millis(now_ms.saturating_sub(oldest_ms)),
        })
    }

    /// Up to `limit` ids of one owner's jobs waiting their turn in a kind fair by owner, in
    /// order (members `<owner>\0<seq>\0<id>`, see `ready.lua`).
    async fn owner_turns(
        &self,
        queue: Queue,
        shard: u16,
        kind: &str,
        owner: &str,
        limit: usize,
    ) -> redis::RedisResult<Vec<String>> {
        let turns: Vec<String> = redis::cmd("ZRANGEBYLEX")
            .arg(self.key_in(queue, shard, &format!("fair:{kind}")))
            .arg(format!("[{owner}\0"))
            .arg(format!("({owner}\u{1}"))
            .arg("LIMIT")
            .arg(0)
            .arg(limit)
            .query_async(&mut self.connection())
            .await?;
        Ok(turns
            .into_iter()
            .filter_map(|turn| turn.rsplit_once('\0').map(|(_, id)| id.to_owned()))
            .collect())
    }
}
