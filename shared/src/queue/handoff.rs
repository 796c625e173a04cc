//! [`NextClaims`]: lets the acker of a backend claim the backend's next jobs in the round
//! trip that records the outcomes of the last ones ([`super::QueueStore::finish_and_claim`]),
//! and hand them over. A worker whose handlers just finished then starts its next jobs
//! without a claim call of its own: at concurrency 1 one round trip per job instead of two.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Waker;
use std::time::Instant;

use super::Claim;
use super::breaker::Breaker;

/// Claims made by the acker, waiting for the backend to hold them.
#[derive(Clone, Default)]
pub(super) struct Handoff(Arc<Mutex<Inner>>);

#[derive(Default)]
struct Inner {
    claimed: Vec<(Instant, Vec<Claim>)>,
    waker: Option<Waker>,
}

impl Handoff {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Adds claims made by a call sent at `sent`, and wakes the backend.
    fn put(&self, sent: Instant, claims: Vec<Claim>) {
        let waker = {
            let mut inner = self.lock();
            inner.claimed.push((sent, claims));
            inner.waker.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    /// Takes what was handed over; `waker` is woken at the next hand-over.
    pub(super) fn take(&self, waker: Option<&Waker>) -> Vec<(Instant, Vec<Claim>)> {
        let mut inner = self.lock();
        if let Some(waker) = waker {
            inner.waker = Some(waker.clone());
        }
        std::mem::take(&mut inner.claimed)
    }
}

/// What the acker needs to claim a backend's next jobs.
#[derive(Clone)]
pub(super) struct NextClaims {
    pub handoff: Handoff,
    pub kind: &'static str,
    pub worker: String,
    /// Most jobs claimed per call (the worker's concurrency).
    pub prefetch: usize,
    /// Set when the backend stops: nothing more is claimed.
    pub closing: Arc<AtomicBool>,
    pub breaker: Breaker,
}

impl NextClaims {
    /// How many jobs to claim along with `finished` outcomes (none while stopping, or while
    /// the breaker holds the kind).
    pub(super) fn wanted(&self, finished: usize) -> usize {
        if self.closing.load(Ordering::SeqCst) || !self.breaker.is_closed() {
            return 0;
        }
        finished.min(self.prefetch)
    }

    /// Hands claims over to the backend.
    pub(super) fn claimed(&self, sent: Instant, claims: Vec<Claim>) {
        if !claims.is_empty() {
            self.handoff.put(sent, claims);
        }
    }
}
