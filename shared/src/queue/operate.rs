//! The writes operators make to the store (SPEC section 10): cancelling a job, retrying or
//! discarding dead jobs in bulk, and applying the queues' controls (pauses and limits) that
//! fetching obeys. The admin API and the workers' control sync call these; handlers never do.

use std::collections::HashMap;
use std::sync::LazyLock;

use redis::Script;

use super::QueueStore;
use super::WAKE_CAP;
use crate::domain::jobs::JobState;
use crate::jobs::Queue;

static CANCEL: LazyLock<Script> = LazyLock::new(|| super::script(include_str!("cancel.lua")));
static BULK: LazyLock<Script> = LazyLock::new(|| super::script(include_str!("bulk.lua")));
static CONTROLS: LazyLock<Script> = LazyLock::new(|| super::script(include_str!("controls.lua")));

/// Dead jobs one step of a bulk action looks at: about a millisecond of Redis' time each.
const BULK_STEP: usize = 2_000;

/// What cancelling a job found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cancelled {
    /// It was pending, scheduled or running (its handler stops at its next lease renewal);
    /// now it is cancelled.
    Now { was: JobState },
    /// It had already ended (done, dead or cancelled): nothing changed.
    AlreadyEnded(JobState),
    /// Redis does not have it.
    Missing,
}

/// What a bulk action does to each dead job it matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BulkAction {
    /// Back to its queue with fresh attempts, history kept.
    Retry,
    /// Deleted for good.
    Discard,
}

/// Which dead jobs a bulk action takes: all of them, narrowed by kind, by a piece of their
/// last error (case-insensitive), and by when they died (Redis milliseconds, inclusive).
#[derive(Debug, Clone, Default)]
pub struct DeadFilter {
    pub kind: Option<String>,
    pub error_contains: Option<String>,
    pub failed_after_ms: Option<i64>,
    pub failed_before_ms: Option<i64>,
}

impl QueueStore {
    /// Cancels a job of `queue` that has not ended.
    pub async fn cancel(&self, queue: Queue, id: &str) -> redis::RedisResult<Cancelled> {
        let mut was = String::new();
        for shard in self.shards.homes(id) {
            self.learn_kinds(queue, shard).await?;
            let mut invocation = CANCEL.prepare_invoke();
            for key in self.full_layout(queue, shard, &[]) {
                invocation.key(key);
            }
            was = invocation.arg(id).invoke_async(&mut self.connection()).await?;
            if was.parse::<JobState>().is_ok() {
                break;
            }
        }
        Ok(match was.parse::<JobState>() {
            Err(_) => Cancelled::Missing,
            Ok(was @ (JobState::Pending | JobState::Scheduled | JobState::Running)) => {
                Cancelled::Now { was }
            }
            Ok(ended) => Cancelled::AlreadyEnded(ended),
        })
    }

    /// Retries or discards the dead jobs of `queue` that match `filter`, in steps of
    /// [`BULK_STEP`] so Redis never blocks for long; returns the ids it changed. Running it
    /// again changes nothing more: what it changed is no longer dead.
    pub async fn bulk_dead(
        &self,
        queue: Queue,
        action: BulkAction,
        filter: &DeadFilter,
    ) -> redis::RedisResult<Vec<String>> {
        let bound = |ms: Option<i64>, open: &str| ms.map_or(open.to_owned(), |ms| ms.to_string());
        let (min, max) =
            (bound(filter.failed_after_ms, "-inf"), bound(filter.failed_before_ms, "+inf"));
        let needle = filter.error_contains.as_deref().unwrap_or("").to_lowercase();
        let mut changed = Vec::new();
        for shard in self.shards.all() {
            self.learn_kinds(queue, shard).await?;
            let keys = self.full_layout(queue, shard, &[]);
            let mut skip = 0usize;
            loop {
                let mut invocation = BULK.prepare_invoke();
                for key in &keys {
                    invocation.key(key);
                }
                let reply: Vec<redis::Value> = invocation
                    .arg(match action {
                        BulkAction::Retry => "retry",
                        BulkAction::Discard => "discard",
                    })
                    .arg(filter.kind.as_deref().unwrap_or(""))
                    .arg(&needle)
                    .arg(&min)
                    .arg(&max)
                    .arg(skip)
                    .arg(BULK_STEP)
                    .arg(WAKE_CAP)
                    .invoke_async(&mut self.connection())
                    .await?;
                let mut reply = reply.into_iter();
                let looked_at: usize =
                    redis::from_redis_value(reply.next().unwrap_or(redis::Value::Nil))?;
                let skipped: usize =
                    redis::from_redis_value(reply.next().unwrap_or(redis::Value::Nil))?;
                for id in reply {
                    changed.push(redis::from_redis_value::<String>(id)?);
                }
                if looked_at < BULK_STEP {
                    break;
                }
                skip += skipped;
            }
        }
        Ok(changed)
    }

    /// Replaces the controls fetching reads for `queue` with `fields` (see `controls.lua`),
    /// unless Redis has a newer `version`; `true` when applied. A sharded queue gets a copy
    /// in every shard (its limits are read from the first shard's, see `spread`).
    pub async fn apply_controls(
        &self,
        queue: Queue,
        version: i64,
        fields: &[(String, String)],
    ) -> redis::RedisResult<bool> {
        let mut applied = true;
        for shard in self.shards.all() {
            let mut invocation = CONTROLS.key(self.key_in(queue, shard, "controls"));
            invocation.arg(version);
            for (field, value) in fields {
                invocation.arg(field).arg(value);
            }
            let done: i64 = invocation.invoke_async(&mut self.connection()).await?;
            applied &= done == 1;
        }
        Ok(applied)
    }

    /// Jobs of each kind of `queue` waiting to be claimed.
    pub async fn pending_by_kind(&self, queue: Queue) -> redis::RedisResult<HashMap<String, u64>> {
        let kinds: Vec<&str> = super::kinds_of(queue).collect();
        let mut waiting: HashMap<String, u64> = HashMap::new();
        for shard in self.shards.all() {
            let mut pipe = redis::pipe();
            for kind in &kinds {
                pipe.llen(self.key_in(queue, shard, &format!("pending:{kind}")));
                // What waits its owner's turn in a kind fair by owner.
                pipe.zcard(self.key_in(queue, shard, &format!("fair:{kind}")));
            }
            let lengths: Vec<Option<u64>> = pipe.query_async(&mut self.connection()).await?;
            for (kind, pair) in kinds.iter().zip(lengths.chunks(2)) {
                *waiting.entry((*kind).to_owned()).or_default() +=
                    pair.iter().flatten().sum::<u64>();
            }
        }
        Ok(waiting)
    }

    /// Jobs of each kind of `queue` running now (claimed, outcome not yet recorded).
    pub async fn running_by_kind(&self, queue: Queue) -> redis::RedisResult<HashMap<String, u64>> {
        let mut running: HashMap<String, u64> = HashMap::new();
        for shard in self.shards.all() {
            let active: HashMap<String, u64> = redis::cmd("HGETALL")
                .arg(self.key_in(queue, shard, "active"))
                .query_async(&mut self.connection())
                .await?;
            for (kind, count) in active {
                *running.entry(kind).or_default() += count;
            }
        }
        Ok(running)
    }
}
