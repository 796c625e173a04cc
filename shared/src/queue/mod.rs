//! Tasklane's Redis job store: durable queues with leases timed by Redis.
//!
//! Per queue, under the hash-tagged namespace `<prefix>:{<queue>}` (and, for a queue spread
//! over several hash tags, under each of its shards' namespaces: see [`shards`]):
//! - `jobs` hash: every job's record in a few fields (see `record`): `<id>|job`, what it
//!   was pushed with (kind, payload, max attempts, the request and the trace that caused
//!   it); `<id>|run`, where it is in its life (state, attempts, claims, when it started, fell
//!   due or ended, the worker holding it); its history of attempts and last error; `kinds`
//!   set: every kind pushed;
//! - `pending:<kind>` lists (FIFO); for a kind fair by owner, also the owners' turns
//!   `fair:<kind>` and the ring of owners taking turns `owners:<kind>` (see `ready.lua`);
//!   `running` zset (score: lease expiry), `scheduled` zset (score: when a retry or a
//!   delayed job is due), `done`, `dead` and `cancelled` zsets (score: when it ended; a
//!   job's record goes when its retention ends there);
//! - `controls` hash: the operators' pauses and limits, copied from Postgres; `active` hash:
//!   jobs running per kind, and `bucket:<kind>`: a kind's rate limiter (see `fetch.lua`);
//!   `failed` hash: failed attempts per minute;
//! - `wake:<kind>` lists: one token per pushed job, so an idle worker blocks in `BLPOP`
//!   instead of polling and starts a new job within milliseconds.
//!
//! Every script is given every key it touches in `KEYS` (`layout`), as Redis Cluster
//! requires; test builds check it (`strict.lua`). [`QueueStore::migrate`] moves a queue
//! written by an earlier release into this layout.
//!
//! Every state change is one Lua script, so it is atomic, and every time comes from Redis'
//! `TIME`, never a worker's clock. An attempt is counted when it is claimed (a job that kills
//! its worker still uses an attempt), and its outcome is accepted only with the claim's token
//! (a worker whose lease expired cannot overwrite the next run's result). The README says
//! why this replaces apalis-redis' storage.
//!
//! # Layout
//! - this file: the store's vocabulary ([`NewJob`], [`Claim`], [`ClaimRef`], [`Outcome`],
//!   [`QueueSettings`]);
//! - [`store`]: [`QueueStore`] and the protocol workers speak (push, claim, finish, renew,
//!   release);
//! - [`inspect`]: reading jobs and depths, and retrying dead jobs, for operators;
//! - [`operate`]: what operators change: cancelling, bulk retry and discard, and the
//!   pauses and limits (`controls`) that fetching obeys;
//! - `layout`: the keys each script receives; `record`: a job's record read back;
//!   `migrate`: moving an earlier layout;
//! - [`ticks`]: when each schedule last enqueued a tick;
//! - [`shards`]: where each shard of a queue spread over several hash tags lives, and
//!   `spread`: what the store does across them (claiming round the shards, priorities);
//! - [`backend`]: the store as an apalis backend; [`held`]: the claims a process holds;
//!   [`lease`]: renewing them, and stopping a handler whose lease is lost; [`ack`]: the
//!   middleware recording each attempt's outcome; [`breaker`]: holding a kind whose
//!   dependency is down.

pub mod ack;
pub mod backend;
pub mod breaker;
mod handoff;
pub mod held;
pub mod inspect;
mod layout;
pub mod lease;
mod migrate;
pub mod operate;
pub(crate) mod record;
pub mod shards;
mod spread;
pub mod store;
pub mod ticks;

pub use backend::RedisBackend;
pub use held::HeldClaims;
pub use inspect::{AttemptRecord, Depth, JobRecord, Pauses};
pub use operate::{BulkAction, Cancelled, DeadFilter};
pub use record::job_field;
pub use shards::Shards;
pub(crate) use spread::grouped;
pub use store::QueueStore;

use std::time::Duration;

use uuid::Uuid;

use crate::config::Settings;
use crate::jobs::Queue;

/// Wake tokens kept when no worker consumes them.
const WAKE_CAP: usize = 1024;

/// Timing of the store.
#[derive(Debug, Clone, Copy)]
pub struct QueueSettings {
    /// How long a claim lasts without a heartbeat; a dead worker's jobs return after this.
    pub lease: Duration,
    /// How long finished jobs stay inspectable.
    pub done_retention: Duration,
    /// How long dead jobs stay inspectable and retryable.
    pub dead_retention: Duration,
    /// A factor on every retry delay and breaker cool-down (`TASKLANE_RETRY_SCALE`, 1 in
    /// production), so tests and dev can compress a day of retries into seconds.
    pub retry_scale: f64,
    /// Hash tags each queue is spread over (see [`shards`]).
    pub shards: u16,
}

impl Default for QueueSettings {
    fn default() -> Self {
        Self {
            lease: Duration::from_secs(15),
            done_retention: Duration::from_secs(24 * 3600),
            dead_retention: Duration::from_secs(7 * 24 * 3600),
            retry_scale: 1.0,
            shards: 1,
        }
    }
}

impl From<&Settings> for QueueSettings {
    /// The store's timing from `TASKLANE_JOB_*`, the same for the API and every worker.
    fn from(settings: &Settings) -> Self {
        Self {
            lease: settings.job_lease,
            done_retention: settings.job_retention,
            dead_retention: settings.dead_job_retention,
            retry_scale: settings.retry_scale,
            shards: settings.queue_shards,
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
    /// The W3C `traceparent` of the span that caused the job, continued by the worker.
    pub traceparent: Option<String>,
    /// For kinds that run once per key: the key (under the queue's namespace) and how long
    /// its claim lasts. A second job with a claimed key is skipped.
    pub unique: Option<(String, Duration)>,
    /// A delayed job: when it is due (milliseconds since the epoch); it waits in the
    /// schedule until then. `None` (or a time past) runs it now.
    pub due_ms: Option<i64>,
}

impl NewJob {
    /// A job of `kind` with `payload` (JSON) and `max_attempts`, to run now, with a fresh id
    /// and nothing else: no request, trace, unique key or delay.
    pub fn plain(kind: &str, payload: impl Into<String>, max_attempts: u32) -> Self {
        Self {
            id: Uuid::now_v7(),
            kind: kind.to_owned(),
            payload: payload.into(),
            max_attempts,
            request_id: None,
            traceparent: None,
            unique: None,
            due_ms: None,
        }
    }
}

/// A job claimed by a worker for one attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    pub queue: Queue,
    /// The shard of the queue that holds the job (see [`shards`]).
    pub shard: u16,
    pub id: String,
    pub kind: String,
    pub payload: String,
    /// This attempt's number, from 1.
    pub attempt: u32,
    pub max_attempts: u32,
    pub request_id: Option<String>,
    /// Fences this attempt's outcome; see the module doc.
    pub token: String,
    /// The trace the job continues (its `traceparent`), and when it last became claimable
    /// (pushed, its retry fell due, or it was handed back) and when it was claimed (Redis'
    /// clock, milliseconds): this attempt's wait in the queue, for its trace.
    pub traceparent: Option<String>,
    pub ready_ms: u64,
    pub claimed_ms: u64,
    /// Whether it holds a permit of its kind's fleet-wide limits, on a sharded queue (see
    /// `admit.lua`); the permit ends with the attempt.
    pub permit: bool,
}

impl Claim {
    /// What names this attempt to the store when renewing or releasing it.
    pub fn claim_ref(&self) -> ClaimRef {
        ClaimRef {
            id: self.id.clone(),
            token: self.token.clone(),
            shard: self.shard,
            permit: self.permit.then(|| self.kind.clone()),
        }
    }
}

/// One attempt of one job: the job's id and the token of the claim on it. The store accepts
/// a renewal, a release or an outcome only with the token of the current claim.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ClaimRef {
    pub id: String,
    pub token: String,
    /// The shard of its queue that holds the job.
    pub shard: u16,
    /// The job's kind, when the claim holds a permit of the kind's limits.
    pub permit: Option<String>,
}

impl ClaimRef {
    /// The name of its permit (see `permits.lua`).
    fn permit_name(&self) -> String {
        format!("{}|{}|{}", self.shard, self.id, self.token)
    }
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
    /// Not run: a dependency of the kind is down ([`crate::jobs::DependencyDown`]). The job
    /// goes back to the front of its queue with the attempt uncounted, and the kind is held
    /// ([`breaker`]). Not an outcome of the job: nothing to record beyond Redis.
    Held {
        error: String,
    },
}

/// How a job ended, as its Postgres record keeps it (SPEC section 9).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finished {
    Succeeded,
    /// Out of attempts, or failed for good; with the last error.
    Dead(String),
    /// Its payload does not decode: it can never run; with the reason.
    Quarantined(String),
}

impl Finished {
    /// The `outcome` column's value.
    pub fn as_str(&self) -> &'static str {
        match self {
            Finished::Succeeded => "succeeded",
            Finished::Dead(_) => "dead",
            Finished::Quarantined(_) => "quarantined",
        }
    }

    pub fn error(&self) -> Option<&str> {
        match self {
            Finished::Succeeded => None,
            Finished::Dead(error) | Finished::Quarantined(error) => Some(error),
        }
    }
}

/// How one attempt ended, as the user the job runs for may see it (request receipts, SPEC
/// section 13): `reason` is [`crate::jobs::safe_reason`], never the error itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttemptEnd {
    Succeeded,
    /// Failed; the next attempt is due after `retry_in`.
    Failed {
        reason: String,
        retry_in: Duration,
    },
    /// Failed, and no attempt follows.
    Dead {
        reason: String,
    },
}

/// Where a job's end, and each of its attempts, is reported once Redis has recorded it; the
/// outbox's [`crate::outbox::OutcomeRecorder`] writes the reports to the job records in
/// batches.
pub trait OutcomeSink: Send + Sync {
    fn finished(&self, id: &str, how: Finished);
    /// Attempt `attempt` of job `id` ended (an attempt handed back uncounted is not one).
    fn attempted(&self, id: &str, attempt: u32, how: AttemptEnd);
}

/// The declared kinds of a queue.
fn kinds_of(queue: Queue) -> impl Iterator<Item = &'static str> {
    crate::jobs::ALL.iter().filter(move |spec| spec.queue == queue).map(|spec| spec.kind)
}

/// A queue script, with the functions of `ready.lua` (the shard's keys and where ready jobs
/// wait) spliced in after its first line, which declares the script's flags. In a debug
/// build (every test) `strict.lua` comes first: a key touched that is not in the script's
/// `KEYS` fails the script.
pub fn script(source: &str) -> redis::Script {
    let (flags, body) = source.split_once('\n').unwrap_or((source, ""));
    let strict = if cfg!(debug_assertions) { include_str!("strict.lua") } else { "" };
    redis::Script::new(&format!("{flags}\n{strict}{}{body}", include_str!("ready.lua")))
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}
