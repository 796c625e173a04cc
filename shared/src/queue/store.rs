//! [`QueueStore`]: the protocol between producers, workers and Redis. Pushing jobs,
//! claiming them under a lease, recording each attempt's outcome with its claim's token, and
//! renewing or handing back leases; each step is one Lua script (see the module doc of
//! [`crate::queue`]).

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use crate::redis::Conn;
use redis::Script;

use super::{Claim, ClaimRef, Finished, NewJob, Outcome, OutcomeSink, QueueSettings, millis};
use crate::jobs::Queue;
use crate::redis::Keys;

static PUSH: LazyLock<Script> = LazyLock::new(|| super::script(include_str!("push.lua")));
static FETCH: LazyLock<Script> = LazyLock::new(|| super::script(include_str!("fetch.lua")));
static FINISH: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("finish.lua")));
static RENEW: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("renew.lua")));

/// Wake tokens kept when no worker consumes them.
pub(super) const WAKE_CAP: usize = 1024;
/// Most due retries and expired leases one fetch moves, so one call stays short.
const SWEEP_LIMIT: usize = 500;

/// What `renew.lua` does with the claims it is given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LeaseAction {
    /// Extend the lease (a heartbeat).
    Renew,
    /// Hand the job back to the front of its queue, the attempt uncounted.
    Release,
}

impl LeaseAction {
    /// The mode argument of `renew.lua`.
    fn as_str(self) -> &'static str {
        match self {
            LeaseAction::Renew => "renew",
            LeaseAction::Release => "release",
        }
    }
}

/// Client of the store; cheap to clone.
#[derive(Clone)]
pub struct QueueStore {
    pub(super) conn: Conn,
    pub(super) keys: Keys,
    settings: QueueSettings,
    /// Where jobs' ends are reported (a worker's Postgres job records); none for producers.
    outcomes: Option<Arc<dyn OutcomeSink>>,
}

impl QueueStore {
    pub fn new(conn: Conn, keys: Keys, settings: QueueSettings) -> Self {
        Self { conn, keys, settings, outcomes: None }
    }

    /// Reports every job's end to `sink` once Redis has recorded it.
    pub fn with_outcomes(mut self, sink: Arc<dyn OutcomeSink>) -> Self {
        self.outcomes = Some(sink);
        self
    }

    /// Reports an attempt recorded in Redis (with its `reason` to show the user, when it
    /// failed), and the job's end: a success, a death, or a quarantine. Retries are not ends.
    pub(super) fn report(&self, claim: &Claim, outcome: &Outcome, reason: &str) {
        let Some(sink) = &self.outcomes else {
            return;
        };
        let reason = reason.to_owned();
        let attempt = match outcome {
            Outcome::Succeeded => Some(super::AttemptEnd::Succeeded),
            Outcome::Retry { delay, .. } => {
                Some(super::AttemptEnd::Failed { reason, retry_in: *delay })
            }
            Outcome::Dead { .. } => Some(super::AttemptEnd::Dead { reason }),
            Outcome::Held { .. } => None,
        };
        if let Some(attempt) = attempt {
            sink.attempted(&claim.id, claim.attempt, attempt);
        }
        match outcome {
            Outcome::Succeeded => sink.finished(&claim.id, Finished::Succeeded),
            Outcome::Dead { error } => sink.finished(&claim.id, Finished::Dead(error.clone())),
            // Not the job's end: it runs again (after its backoff, or once its kind's
            // dependency is back).
            Outcome::Retry { .. } | Outcome::Held { .. } => {}
        }
    }

    /// Reports a job set aside because its payload does not decode.
    pub(super) fn report_quarantined(&self, claim: &Claim, reason: String) {
        if let Some(sink) = &self.outcomes {
            sink.finished(&claim.id, Finished::Quarantined(reason));
        }
    }

    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    pub fn settings(&self) -> QueueSettings {
        self.settings
    }

    /// A clone of the store's shared connection.
    pub fn connection(&self) -> Conn {
        self.conn.clone()
    }

    /// The namespace of a queue: `<prefix>:{<queue>}:`, one hash tag.
    pub(super) fn ns(&self, queue: Queue) -> String {
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
            invocation
                .arg(job.traceparent.as_deref().unwrap_or(""))
                .arg(job.due_ms.unwrap_or(0))
                .arg(crate::jobs::owner_of(&job.kind, &job.payload).unwrap_or_default());
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
        Ok(self.claim_paced(queue, kind, worker, n).await?.0)
    }

    /// Like [`QueueStore::claim`], also saying how long to wait before claiming again when
    /// the kind's controls held jobs back (paused, or at its limits); zero otherwise.
    pub async fn claim_paced(
        &self,
        queue: Queue,
        kind: &str,
        worker: &str,
        n: usize,
    ) -> redis::RedisResult<(Vec<Claim>, Duration)> {
        let (rows, wait_ms): (Vec<ClaimRow>, u64) = self
            .claim_invocation(queue, kind, worker, n)
            .invoke_async(&mut self.conn.clone())
            .await?;
        Ok((claims_from(queue, rows), Duration::from_millis(wait_ms)))
    }

    fn claim_invocation(
        &self,
        queue: Queue,
        kind: &str,
        worker: &str,
        n: usize,
    ) -> redis::ScriptInvocation<'static> {
        let mut invocation = FETCH.prepare_invoke();
        invocation
            .key(self.key(queue, "running"))
            .arg(self.ns(queue))
            .arg(kind)
            .arg(worker)
            .arg(millis(self.settings.lease))
            .arg(n)
            .arg(millis(self.settings.done_retention))
            .arg(millis(self.settings.dead_retention))
            .arg(SWEEP_LIMIT)
            .arg(WAKE_CAP);
        if let Some(spec) = crate::jobs::spec(kind) {
            invocation.arg(crate::jobs::ahead_of(spec).collect::<Vec<_>>());
        }
        invocation
    }

    /// Records outcomes and claims up to `n` more jobs of `kind` in one round trip (a
    /// pipeline of both scripts by their hashes): a worker whose handlers just finished has
    /// its next jobs in the same trip. A script Redis does not know (it restarted) is run
    /// again on its own, which loads it: the outcomes then go by [`QueueStore::finish_many`],
    /// and the next jobs by the backend's own claim.
    pub async fn finish_and_claim(
        &self,
        queue: Queue,
        outcomes: &[(&Claim, &Outcome, Duration)],
        kind: &str,
        worker: &str,
        n: usize,
    ) -> redis::RedisResult<(Vec<bool>, Vec<Claim>)> {
        let finish = self.finish_invocation(queue, outcomes);
        let claim = self.claim_invocation(queue, kind, worker, n);
        let results: Vec<redis::Value> = redis::pipe()
            .ignore_errors()
            .invoke_script(&finish)
            .invoke_script(&claim)
            .query_async(&mut self.conn.clone())
            .await?;
        let mut results = results.into_iter();
        let recorded = match results.next() {
            Some(redis::Value::ServerError(err)) if err.code() == "NOSCRIPT" => {
                self.finish_many(queue, outcomes).await?
            }
            Some(value) => redis::from_redis_value::<Vec<i64>>(value)
                .map_err(redis::RedisError::from)?
                .into_iter()
                .map(|r| r == 1)
                .collect(),
            None => return Err((redis::ErrorKind::Client, "empty pipeline reply").into()),
        };
        let claims = match results.next() {
            Some(redis::Value::ServerError(err)) if err.code() == "NOSCRIPT" => Vec::new(),
            Some(value) => claims_from(
                queue,
                redis::from_redis_value::<(Vec<ClaimRow>, u64)>(value)
                    .map_err(redis::RedisError::from)?
                    .0,
            ),
            None => Vec::new(),
        };
        Ok((recorded, claims))
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
        let recorded: Vec<i64> =
            self.finish_invocation(queue, outcomes).invoke_async(&mut self.conn.clone()).await?;
        Ok(recorded.into_iter().map(|r| r == 1).collect())
    }

    fn finish_invocation(
        &self,
        queue: Queue,
        outcomes: &[(&Claim, &Outcome, Duration)],
    ) -> redis::ScriptInvocation<'static> {
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
                Outcome::Held { error } => ("held", error.as_str(), Duration::ZERO),
            };
            invocation
                .arg(&claim.id)
                .arg(&claim.token)
                .arg(name)
                .arg(millis(*took))
                .arg(error)
                .arg(millis(delay));
        }
        invocation
    }

    /// Extends the leases of claims still held (a worker's heartbeat); returns the ids of
    /// the claims renewed. A claim left out is no longer the caller's (its token changed).
    pub async fn renew(
        &self,
        queue: Queue,
        claims: &[ClaimRef],
    ) -> redis::RedisResult<Vec<String>> {
        self.lease(queue, LeaseAction::Renew, claims).await
    }

    /// Hands claims back to the front of their queue without counting the attempt
    /// (graceful shutdown).
    pub async fn release(&self, queue: Queue, claims: &[ClaimRef]) -> redis::RedisResult<usize> {
        Ok(self.lease(queue, LeaseAction::Release, claims).await?.len())
    }

    async fn lease(
        &self,
        queue: Queue,
        action: LeaseAction,
        claims: &[ClaimRef],
    ) -> redis::RedisResult<Vec<String>> {
        if claims.is_empty() {
            return Ok(Vec::new());
        }
        let mut invocation = RENEW.prepare_invoke();
        invocation
            .key(self.key(queue, "running"))
            .arg(self.ns(queue))
            .arg(action.as_str())
            .arg(millis(self.settings.lease))
            .arg(WAKE_CAP);
        for claim in claims {
            invocation.arg(&claim.id).arg(&claim.token);
        }
        invocation.invoke_async(&mut self.conn.clone()).await
    }

    /// Blocks on a kind's wake list for up to `timeout`, on a connection of the caller's
    /// own (a blocking command would stall every user of a shared multiplexed connection).
    pub async fn wait_for_work(
        &self,
        blocking: &mut Conn,
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

/// A claimed job as `fetch.lua` returns it: id, kind, payload, attempt, max attempts,
/// request id, token, traceparent, when it became claimable and when claimed (Redis ms).
type ClaimRow = (String, String, String, u32, u32, String, String, String, u64, u64);

fn claims_from(queue: Queue, rows: Vec<ClaimRow>) -> Vec<Claim> {
    rows.into_iter()
        .map(|(id, kind, payload, attempt, max_attempts, request_id, token, trace, ready, now)| {
            Claim {
                queue,
                id,
                kind,
                payload,
                attempt,
                max_attempts,
                request_id: Some(request_id).filter(|r| !r.is_empty()),
                token,
                traceparent: Some(trace).filter(|t| !t.is_empty()),
                ready_ms: ready,
                claimed_ms: now,
            }
        })
        .collect()
}
