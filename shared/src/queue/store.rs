//! [`QueueStore`]: the protocol between producers, workers and Redis. Pushing jobs,
//! claiming them under a lease, recording each attempt's outcome with its claim's token, and
//! renewing or handing back leases; each step is one Lua script (see the module doc of
//! [`crate::queue`]).

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use crate::redis::Conn;
use redis::Script;

use super::layout::KnownKinds;
use super::spread::{Limits, Unlimited};
use super::{
    Claim, ClaimRef, NewJob, Outcome, OutcomeSink, QueueSettings, Shards, WAKE_CAP, millis,
};
use crate::jobs::Queue;
use crate::redis::Keys;

static PUSH: LazyLock<Script> = LazyLock::new(|| super::script(include_str!("push.lua")));
static FETCH: LazyLock<Script> = LazyLock::new(|| super::script(include_str!("fetch.lua")));
static FINISH: LazyLock<Script> = LazyLock::new(|| super::script(include_str!("finish.lua")));

/// Most due retries and expired leases one fetch moves, so one call stays short.
const SWEEP_LIMIT: usize = 500;

/// Client of the store; cheap to clone.
#[derive(Clone)]
pub struct QueueStore {
    pub(super) conn: Conn,
    pub(super) keys: Keys,
    /// Each queue's shards (one unless `TASKLANE_QUEUE_SHARDS` says more).
    pub(super) shards: Shards,
    settings: QueueSettings,
    /// Where jobs' ends are reported (a worker's Postgres job records); none for producers.
    pub(super) outcomes: Option<Arc<dyn OutcomeSink>>,
    /// The kinds a sharded queue's last admission found without limits (see `spread`).
    pub(super) unlimited: Arc<Unlimited>,
    /// The kinds of each queue met beyond the registry's (see `layout`).
    pub(super) kinds: Arc<KnownKinds>,
}

impl QueueStore {
    pub fn new(conn: Conn, keys: Keys, settings: QueueSettings) -> Self {
        let shards = Shards::new(&keys, settings.shards);
        Self {
            conn,
            keys,
            shards,
            settings,
            outcomes: None,
            unlimited: Arc::default(),
            kinds: Arc::default(),
        }
    }

    /// Reports every job's end to `sink` once Redis has recorded it.
    pub fn with_outcomes(mut self, sink: Arc<dyn OutcomeSink>) -> Self {
        self.outcomes = Some(sink);
        self
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

    /// Each queue's shards.
    pub fn shards(&self) -> &Shards {
        &self.shards
    }

    /// A key of a queue's first shard (its only one, unless the queue is sharded).
    pub fn key(&self, queue: Queue, name: &str) -> String {
        self.key_in(queue, 0, name)
    }

    /// A key of one shard of a queue.
    pub fn key_in(&self, queue: Queue, shard: u16, name: &str) -> String {
        format!("{}{name}", self.shards.ns(queue, shard))
    }

    /// Adds jobs to a queue; returns how many were new (ids already present are skipped).
    /// On a sharded queue each job goes to its shard, and every job's wake token also to the
    /// first shard, where idle workers wait.
    pub async fn push(&self, queue: Queue, jobs: &[NewJob]) -> redis::RedisResult<usize> {
        let ids: Vec<String> = jobs.iter().map(|job| job.id.to_string()).collect();
        let pinned = |job: &NewJob| {
            job.unique.is_some()
                || crate::jobs::spec(&job.kind).is_some_and(|spec| spec.fair_by.is_some())
        };
        let shard_of = |i: usize| self.shards.of_job(&ids[i], pinned(&jobs[i]));
        let mut added = 0;
        for (shard, group) in super::spread::grouped(0..jobs.len(), |&i| shard_of(i)) {
            added += self.push_to(queue, shard, group.iter().map(|&i| (&ids[i], &jobs[i]))).await?;
            if shard != 0 {
                super::spread::wake(self, queue, group.iter().map(|&i| jobs[i].kind.as_str()))
                    .await?;
            }
        }
        Ok(added)
    }

    async fn push_to<'a>(
        &self,
        queue: Queue,
        shard: u16,
        jobs: impl Iterator<Item = (&'a String, &'a NewJob)>,
    ) -> redis::RedisResult<usize> {
        let jobs: Vec<(&String, &NewJob)> = jobs.collect();
        let mut invocation = PUSH.prepare_invoke();
        for key in self.layout(queue, shard, jobs.iter().map(|(_, job)| job.kind.as_str())) {
            invocation.key(key);
        }
        for (_, job) in &jobs {
            if let Some((key, _)) = &job.unique {
                invocation.key(self.key_in(queue, shard, &format!("unique:{key}")));
            }
        }
        invocation.arg(WAKE_CAP);
        for (id, job) in jobs {
            invocation
                .arg(id)
                .arg(&job.kind)
                .arg(&job.payload)
                .arg(job.max_attempts)
                .arg(job.request_id.as_deref().unwrap_or(""));
            match &job.unique {
                Some((_, ttl)) => invocation.arg("1").arg(millis(*ttl)),
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
        if self.shards.count() == 1 {
            let (claims, wait, _) = self.claim_in(queue, 0, kind, worker, n, Limits::Here).await?;
            return Ok((claims, wait));
        }
        self.claim_round(queue, kind, worker, n).await
    }

    /// Claims from one shard of a queue, keeping the kind's `limits` as it says; also
    /// whether a limit turned up for a kind claimed as [`Limits::NoneHeard`].
    pub(super) async fn claim_in(
        &self,
        queue: Queue,
        shard: u16,
        kind: &str,
        worker: &str,
        n: usize,
        limits: Limits,
    ) -> redis::RedisResult<(Vec<Claim>, Duration, bool)> {
        let (rows, wait_ms, limited, unknown): (Vec<ClaimRow>, u64, u8, u8) = self
            .claim_invocation(queue, shard, kind, worker, n, limits)
            .invoke_async(&mut self.conn.clone())
            .await?;
        if unknown == 1 {
            self.learn_kinds(queue, shard).await?;
        }
        Ok((claims_from(queue, shard, rows), Duration::from_millis(wait_ms), limited == 1))
    }

    fn claim_invocation(
        &self,
        queue: Queue,
        shard: u16,
        kind: &str,
        worker: &str,
        n: usize,
        limits: Limits,
    ) -> redis::ScriptInvocation<'static> {
        let ahead: Vec<&str> = crate::jobs::spec(kind)
            .map(|spec| crate::jobs::ahead_of(spec).collect())
            .unwrap_or_default();
        let mut more = vec![kind];
        more.extend(&ahead);
        let mut invocation = FETCH.prepare_invoke();
        for key in self.full_layout(queue, shard, &more) {
            invocation.key(key);
        }
        invocation
            .key(self.key_in(queue, shard, &format!("bucket:{kind}")))
            .arg(kind)
            .arg(worker)
            .arg(millis(self.settings.lease))
            .arg(n)
            .arg(millis(self.settings.done_retention))
            .arg(millis(self.settings.dead_retention))
            .arg(SWEEP_LIMIT)
            .arg(WAKE_CAP)
            .arg(limits.arg())
            .arg(ahead);
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
        // On a sharded queue the outcomes go to their shards and the claim round the shards
        // (see `spread`): more than one slot, so more than one trip.
        if self.shards.count() > 1 {
            let recorded = self.finish_many(queue, outcomes).await?;
            let (claims, _) = self.claim_paced(queue, kind, worker, n).await?;
            return Ok((recorded, claims));
        }
        let shard = 0;
        let finish = self.finish_invocation(queue, shard, outcomes);
        let claim = self.claim_invocation(queue, shard, kind, worker, n, Limits::Here);
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
            Some(value) => {
                let (rows, _, _, unknown) =
                    redis::from_redis_value::<(Vec<ClaimRow>, u64, u8, u8)>(value)
                        .map_err(redis::RedisError::from)?;
                if unknown == 1 {
                    self.learn_kinds(queue, shard).await?;
                }
                claims_from(queue, shard, rows)
            }
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
        let mut recorded = vec![false; outcomes.len()];
        for (shard, group) in super::spread::grouped(0..outcomes.len(), |&i| outcomes[i].0.shard) {
            let those: Vec<_> = group.iter().map(|&i| outcomes[i]).collect();
            let results: Vec<i64> = self
                .finish_invocation(queue, shard, &those)
                .invoke_async(&mut self.conn.clone())
                .await?;
            for (i, result) in group.into_iter().zip(results) {
                recorded[i] = result == 1;
            }
        }
        // Recorded or refused (its lease ran out), the attempt's permit ends.
        let ended: Vec<ClaimRef> = outcomes
            .iter()
            .filter(|(claim, _, _)| claim.permit)
            .map(|(claim, _, _)| claim.claim_ref())
            .collect();
        self.permits(queue, "drop", ended.iter()).await?;
        Ok(recorded)
    }

    fn finish_invocation(
        &self,
        queue: Queue,
        shard: u16,
        outcomes: &[(&Claim, &Outcome, Duration)],
    ) -> redis::ScriptInvocation<'static> {
        let mut invocation = FINISH.prepare_invoke();
        for key in
            self.layout(queue, shard, outcomes.iter().map(|(claim, _, _)| claim.kind.as_str()))
        {
            invocation.key(key);
        }
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

fn claims_from(queue: Queue, shard: u16, rows: Vec<ClaimRow>) -> Vec<Claim> {
    rows.into_iter()
        .map(|(id, kind, payload, attempt, max_attempts, request_id, token, trace, ready, now)| {
            Claim {
                queue,
                shard,
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
                permit: false,
            }
        })
        .collect()
}
