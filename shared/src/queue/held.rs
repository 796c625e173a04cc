//! [`HeldClaims`]: the claims one worker process holds (claimed, outcome not yet recorded),
//! shared by its backends. Heartbeats renew them; a graceful shutdown whose grace period ran
//! out hands them back to their queues.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::{Claim, ClaimRef, QueueStore};
use crate::jobs::Queue;

/// Claims a worker holds, by job id; cheap to clone.
#[derive(Clone, Default)]
pub struct HeldClaims(Arc<Mutex<HashMap<String, Claim>>>);

impl HeldClaims {
    pub(super) fn insert(&self, claim: &Claim) {
        self.lock().insert(claim.id.clone(), claim.clone());
    }

    /// Forgets a claim, unless the job was claimed again since (another token).
    pub(super) fn remove(&self, claim: &Claim) {
        self.forget(&claim.claim_ref());
    }

    fn forget(&self, claim: &ClaimRef) {
        let mut held = self.lock();
        if held.get(&claim.id).is_some_and(|current| current.token == claim.token) {
            held.remove(&claim.id);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Claim>> {
        // A panic while holding this lock cannot leave the map inconsistent.
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Every claim held on `queue`.
    pub fn of_queue(&self, queue: Queue) -> Vec<ClaimRef> {
        self.lock().values().filter(|claim| claim.queue == queue).map(Claim::claim_ref).collect()
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
            for claim in &claims {
                self.forget(claim);
            }
        }
    }
}
