//! [`HeldClaims`]: the claims one worker process holds (claimed, outcome not yet recorded),
//! shared by its backends. Each claim belongs to the backend that claimed it, whose lease
//! keeper ([`super::lease`]) renews it and cancels its handler when the lease is lost; a
//! backend that goes away (an apalis worker restarted) takes its claims with it. A graceful
//! shutdown whose grace period ran out hands back whatever is left.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use tokio_util::sync::CancellationToken;

use super::{Claim, ClaimRef, QueueStore};
use crate::jobs::Queue;

/// Stops one attempt's handler: cancelled when its claim is lost, with the reason.
#[derive(Debug, Clone, Default)]
pub struct Cancel {
    token: CancellationToken,
    reason: Arc<OnceLock<&'static str>>,
}

impl Cancel {
    pub(super) fn cancel(&self, reason: &'static str) {
        let _ = self.reason.set(reason);
        self.token.cancel();
    }

    /// Resolves, with the reason, once the attempt is cancelled.
    pub async fn cancelled(&self) -> &'static str {
        self.token.cancelled().await;
        self.reason.get().copied().unwrap_or("cancelled")
    }

    pub fn is_cancelled(&self) -> bool {
        self.token.is_cancelled()
    }
}

/// The owner of claims whose backend is gone.
const DISOWNED: u64 = 0;

/// One held claim.
struct Held {
    claim: Claim,
    /// The backend instance that claimed it: only its lease keeper renews it.
    owner: u64,
    /// When the last renewal Redis confirmed (or the claim itself) was sent. Redis computes
    /// the lease's expiry from its own clock when it runs the script, which is after this,
    /// so the lease lasts at least until `confirmed + lease`.
    confirmed: Instant,
    cancel: Cancel,
}

/// Claims a worker holds, by job id; cheap to clone.
#[derive(Clone, Default)]
pub struct HeldClaims(Arc<Mutex<HashMap<String, Held>>>);

impl HeldClaims {
    /// Holds a claim for backend `owner`, claimed by a call sent at `sent`; returns what
    /// cancels its handler.
    pub(super) fn insert(&self, claim: &Claim, owner: u64, sent: Instant) -> Cancel {
        let cancel = Cancel::default();
        let held = Held { claim: claim.clone(), owner, confirmed: sent, cancel: cancel.clone() };
        self.lock().insert(claim.id.clone(), held);
        cancel
    }

    /// Forgets a claim, unless the job was claimed again since (another token).
    pub(super) fn remove(&self, claim: &Claim) {
        self.take(&claim.claim_ref());
    }

    fn take(&self, claim: &ClaimRef) -> Option<Held> {
        let mut held = self.lock();
        if held.get(&claim.id).is_some_and(|current| current.claim.token == claim.token) {
            held.remove(&claim.id)
        } else {
            None
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Held>> {
        // A panic while holding this lock cannot leave the map inconsistent.
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Every claim held on `queue`.
    pub fn of_queue(&self, queue: Queue) -> Vec<ClaimRef> {
        self.lock()
            .values()
            .filter(|held| held.claim.queue == queue)
            .map(|held| held.claim.claim_ref())
            .collect()
    }

    /// The claims of backend `owner`.
    pub(super) fn owned_by(&self, owner: u64) -> Vec<ClaimRef> {
        self.lock()
            .values()
            .filter(|held| held.owner == owner)
            .map(|held| held.claim.claim_ref())
            .collect()
    }

    /// The claims of backend `owner` with no renewal confirmed since `cutoff`.
    pub(super) fn unconfirmed_since(&self, owner: u64, cutoff: Instant) -> Vec<ClaimRef> {
        self.lock()
            .values()
            .filter(|held| held.owner == owner && held.confirmed < cutoff)
            .map(|held| held.claim.claim_ref())
            .collect()
    }

    /// Records that Redis renewed these claims in a call sent at `sent`.
    pub(super) fn confirm(&self, renewed: &[ClaimRef], sent: Instant) {
        let mut held = self.lock();
        for claim in renewed {
            if let Some(current) = held.get_mut(&claim.id)
                && current.claim.token == claim.token
            {
                current.confirmed = current.confirmed.max(sent);
            }
        }
    }

    /// Cancels the handlers of these claims and forgets them: they are no longer this
    /// worker's to run. Returns the claims that were still held.
    pub(super) fn cancel(&self, claims: &[ClaimRef], reason: &'static str) -> Vec<Claim> {
        claims
            .iter()
            .filter_map(|claim| self.take(claim))
            .map(|held| {
                held.cancel.cancel(reason);
                held.claim
            })
            .collect()
    }

    /// Cancels the handlers of backend `owner`'s claims and disowns them (the backend is
    /// gone, so nothing renews them any more); they stay held until handed back, so a
    /// shutdown's [`HeldClaims::release_all`] still sees them.
    pub(super) fn disown(&self, owner: u64, reason: &'static str) -> Vec<Claim> {
        let mut held = self.lock();
        held.values_mut()
            .filter(|held| held.owner == owner)
            .map(|held| {
                held.owner = DISOWNED;
                held.cancel.cancel(reason);
                held.claim.clone()
            })
            .collect()
    }

    /// How many claims are held per kind.
    pub fn by_kind(&self) -> std::collections::BTreeMap<String, u64> {
        let mut counts = std::collections::BTreeMap::new();
        for held in self.lock().values() {
            *counts.entry(held.claim.kind.clone()).or_insert(0) += 1;
        }
        counts
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Hands every held claim back to its queue, uncounted; for a shutdown whose grace
    /// period ran out. A late outcome from the abandoned attempt is then refused by token.
    pub async fn release_all(&self, store: &QueueStore) {
        for queue in Queue::ALL {
            let claims = self.of_queue(queue);
            match store.release(queue, &claims).await {
                Ok(released) if released > 0 => {
                    tracing::warn!(queue = queue.as_str(), released, "handed back unfinished jobs")
                }
                Ok(_) => {}
                Err(err) => {
                    tracing::error!(queue = queue.as_str(), error = %err, "could not hand back jobs; their leases will expire")
                }
            }
            self.cancel(&claims, "shutdown");
        }
    }
}
