//! The lease keeper of one backend: renews the leases of the claims that backend holds and
//! stops the handler of any claim whose lease it can no longer vouch for, before another
//! worker may take the job (SPEC section 9, "A job that lost its lease stops").
//!
//! Redis times a lease from its own clock when it runs the renewal, which is after the
//! worker sent it; so a lease lasts at least `lease` after the send of the last renewal
//! Redis confirmed. A claim is cancelled when
//! - Redis refuses its renewal by token (the lease expired and the job went back to the
//!   queue, or another worker holds it now, or an operator cancelled the job), or
//! - no renewal was confirmed for `lease - margin` (Redis unreachable, or partitioned): the
//!   handler stops with `margin` to spare, checked every [`WATCH_EVERY`].
//!
//! A cancelled attempt records no outcome: the claim is gone, and the job runs again under
//! whoever claims it next (delivery is at least once; side effects stay at most once).

use std::collections::HashSet;
use std::future::Future;
use std::time::{Duration, Instant};

use std::sync::LazyLock;

use redis::Script;
use tokio::task::JoinHandle;

use super::held::Cancel;
use super::{ClaimRef, HeldClaims, QueueStore, WAKE_CAP, millis};
use crate::jobs::Queue;

/// Longest time between two renewals: an operator's cancel (SPEC section 10, which clears
/// the claim's token) stops the handler at the next renewal, so within this.
const RENEW_AT_LEAST_EVERY: Duration = Duration::from_secs(2);

/// How often the keeper looks for claims past their deadline.
pub(super) const WATCH_EVERY: Duration = Duration::from_millis(250);

/// What the keeper keeps in hand: a handler stops this long before its lease could expire.
pub fn margin(lease: Duration) -> Duration {
    (lease / 5).max(Duration::from_millis(500))
}

/// Starts the keeper of backend `owner`'s claims on `queue`.
pub(super) fn spawn(
    store: QueueStore,
    held: HeldClaims,
    owner: u64,
    queue: Queue,
) -> JoinHandle<()> {
    tokio::spawn(keep(store, held, owner, queue))
}

async fn keep(store: QueueStore, held: HeldClaims, owner: u64, queue: Queue) {
    let lease = store.settings().lease;
    let renew_every = (lease / 3).min(RENEW_AT_LEAST_EVERY);
    let deadline = lease.saturating_sub(margin(lease));
    let mut ticks = tokio::time::interval(WATCH_EVERY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut renewing: Option<JoinHandle<()>> = None;
    let mut next_renewal = Instant::now();
    loop {
        ticks.tick().await;
        let now = Instant::now();
        if let Some(cutoff) = now.checked_sub(deadline) {
            let overdue = held.unconfirmed_since(owner, cutoff);
            if !overdue.is_empty() {
                lost(&held, queue, &overdue, "no lease renewal confirmed in time");
            }
        }
        // One renewal at a time: one that hangs (a partition) holds the next back, and the
        // claims then run into their deadline above.
        if now >= next_renewal && renewing.as_ref().is_none_or(JoinHandle::is_finished) {
            next_renewal = now + renew_every;
            let claims = held.owned_by(owner);
            if !claims.is_empty() {
                renewing = Some(tokio::spawn(renew(store.clone(), held.clone(), queue, claims)));
            }
        }
    }
}

/// One renewal of `claims`, sent now.
async fn renew(store: QueueStore, held: HeldClaims, queue: Queue, claims: Vec<ClaimRef>) {
    let sent = Instant::now();
    let lease = store.settings().lease;
    match tokio::time::timeout(lease, store.renew(queue, &claims)).await {
        Ok(Ok(renewed)) => {
            let renewed: HashSet<String> = renewed.into_iter().collect();
            let (kept, refused): (Vec<ClaimRef>, Vec<ClaimRef>) =
                claims.into_iter().partition(|claim| renewed.contains(&claim.id));
            held.confirm(&kept, sent);
            if !refused.is_empty() {
                lost(&held, queue, &refused, "the lease renewal was refused");
            }
        }
        Ok(Err(err)) => {
            tracing::warn!(queue = queue.as_str(), error = %err, "lease renewal failed")
        }
        Err(_) => tracing::warn!(queue = queue.as_str(), "lease renewal timed out"),
    }
}

/// Cancels the handlers of claims this worker lost.
fn lost(held: &HeldClaims, queue: Queue, claims: &[ClaimRef], why: &str) {
    for claim in held.cancel(claims, "lease_lost") {
        tracing::warn!(queue = queue.as_str(), id = %claim.id, kind = %claim.kind, why, "lease lost; stopping the job's handler");
    }
}

/// Runs an attempt's handler unless its claim is cancelled first; then the handler is
/// dropped, `jobs_cancelled_total{kind,reason}` counts it, and the reason is returned.
pub(super) async fn unless_cancelled<F: Future>(
    cancel: Option<Cancel>,
    kind: &'static str,
    handler: F,
) -> Result<F::Output, &'static str> {
    let Some(cancel) = cancel else {
        return Ok(handler.await);
    };
    tokio::select! {
        biased;
        reason = cancel.cancelled() => {
            metrics::counter!("jobs_cancelled_total", "kind" => kind, "reason" => reason).increment(1);
            tracing::warn!(reason, "job cancelled: its claim is no longer this worker's");
            Err(reason)
        }
        output = handler => Ok(output),
    }
}

static RENEW: LazyLock<Script> = LazyLock::new(|| super::script(include_str!("renew.lua")));

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

impl QueueStore {
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
        let mut done = Vec::new();
        for (shard, group) in super::spread::grouped(0..claims.len(), |&i| claims[i].shard) {
            // Handing a job back moves it to its kind's list: any kind known.
            let keys = match action {
                LeaseAction::Renew => self.layout(queue, shard, []),
                LeaseAction::Release => self.full_layout(queue, shard, &[]),
            };
            let mut invocation = RENEW.prepare_invoke();
            for key in keys {
                invocation.key(key);
            }
            invocation.arg(action.as_str()).arg(millis(self.settings().lease)).arg(WAKE_CAP);
            for i in group {
                invocation.arg(&claims[i].id).arg(&claims[i].token);
            }
            let ids: Vec<String> = invocation.invoke_async(&mut self.conn.clone()).await?;
            done.extend(ids);
        }
        // A renewed claim keeps its permit, one refused or handed back gives it up.
        let kept = |claim: &&ClaimRef| action == LeaseAction::Renew && done.contains(&claim.id);
        let (renewed, ended): (Vec<&ClaimRef>, Vec<&ClaimRef>) = claims.iter().partition(kept);
        self.permits(queue, "renew", renewed.into_iter()).await?;
        self.permits(queue, "drop", ended.into_iter()).await?;
        Ok(done)
    }
}
