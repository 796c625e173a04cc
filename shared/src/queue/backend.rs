//! The [`QueueStore`] as an apalis backend, so workers are plain apalis workers
//! (`WorkerBuilder`, `Monitor`, layers) over Tasklane's Redis queues.
//!
//! - [`RedisBackend`] claims jobs when the worker has capacity (apalis polls the backend only
//!   when its service is ready), up to `prefetch` per round trip (the worker's concurrency),
//!   so a busy worker pays one claim call per batch and never holds more than it can soon
//!   start. Idle, it blocks on the kind's wake list, with a one-second timeout that also
//!   drives the queue's housekeeping. Redis errors are retried with backoff inside the fetch,
//!   since apalis treats a backend error as fatal to the worker.
//! - Its lease keeper ([`super::lease`]) renews the leases of the claims this backend holds,
//!   buffered ones included, and stops the handler of any claim whose lease is lost.
//! - Its middleware, [`AckLayer`], records each attempt's outcome (see [`super::ack`]) and,
//!   in the same round trip, claims as many next jobs as the outcomes freed slots, handing
//!   them over here ([`super::handoff`]).
//! - Its [`Breaker`] stops claiming while the kind's dependency is down, then lets one
//!   probe through at a time (see [`super::breaker`]).
//! - Claims belong to the backend that made them: when apalis' monitor restarts a worker,
//!   the old backend is dropped and hands back its claims (their handlers are dropped with
//!   it), so nothing stays held, or renewed, without running. [`HeldClaims`] lets the
//!   worker hand back what it still holds when a graceful shutdown runs out of time.

use std::collections::VecDeque;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use crate::redis::Conn;
use apalis_core::backend::finalize::Ephemeral;
use apalis_core::backend::{Backend, BackendConfig};
use apalis_core::task::Task;
use apalis_core::task::builder::TaskBuilder;
use apalis_core::worker::context::WorkerContext;

use super::ack::AckLayer;
use super::breaker::{Admit, Breaker};
use super::handoff::{Handoff, NextClaims};
use super::held::Cancel;
use super::{Claim, ClaimRef, HeldClaims, Outcome, QueueStore, lease};
use crate::jobs::Job;

/// How long an idle worker blocks before looking again (and sweeping retries and leases).
const IDLE_WAIT: Duration = Duration::from_secs(1);

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// Names each backend instance, so the claims it made are its own.
static NEXT_OWNER: AtomicU64 = AtomicU64::new(1);

/// An apalis backend over one queue, for the job kind `J`.
pub struct RedisBackend<J> {
    store: QueueStore,
    /// A connection of this backend's own for `BLPOP`.
    blocking: Conn,
    worker: String,
    held: HeldClaims,
    /// This instance, as the owner of the claims it makes in `held`.
    owner: u64,
    /// Most jobs claimed per round trip.
    prefetch: usize,
    /// Claimed, not yet handed to the worker (held, so their leases are renewed).
    buffer: VecDeque<(Claim, Cancel)>,
    /// A claim call in flight, and when it was sent.
    fetching: Option<BoxFuture<(Instant, Vec<Claim>)>>,
    /// Set when the worker stops: an in-flight fetch then claims nothing more.
    closing: Arc<std::sync::atomic::AtomicBool>,
    heartbeat: Option<tokio::task::JoinHandle<()>>,
    /// Holds the kind while its dependency is down; shared with the middleware.
    breaker: Breaker,
    /// Jobs the acker claimed along with outcomes it recorded (see [`super::handoff`]).
    handoff: Handoff,
    _job: PhantomData<fn() -> J>,
}

impl<J: Job> RedisBackend<J> {
    /// `worker` must be unique per process start: it names the claims this worker holds.
    pub fn new(store: QueueStore, blocking: Conn, worker: String, held: HeldClaims) -> Self {
        let breaker = Breaker::new(&store, J::SPEC.kind, worker.clone());
        Self {
            store,
            blocking,
            worker,
            held,
            owner: NEXT_OWNER.fetch_add(1, Ordering::Relaxed),
            prefetch: 1,
            buffer: VecDeque::new(),
            fetching: None,
            closing: Arc::default(),
            heartbeat: None,
            breaker,
            handoff: Handoff::default(),
            _job: PhantomData,
        }
    }

    /// Claims up to `prefetch` jobs per round trip; set it to the worker's concurrency.
    pub fn with_prefetch(mut self, prefetch: usize) -> Self {
        self.prefetch = prefetch.max(1);
        self
    }

    fn fetch(&self) -> BoxFuture<(Instant, Vec<Claim>)> {
        let store = self.store.clone();
        let mut blocking = self.blocking.clone();
        let worker = self.worker.clone();
        let (queue, kind, want) = (J::SPEC.queue, J::SPEC.kind, self.prefetch);
        let (closing, breaker) = (self.closing.clone(), self.breaker.clone());
        Box::pin(async move {
            let mut failures = 0u32;
            loop {
                if closing.load(Ordering::SeqCst) {
                    return (Instant::now(), Vec::new());
                }
                let n = match breaker.admit(want) {
                    Admit::Claim(n) => n,
                    Admit::Wait(wait) => {
                        tokio::time::sleep(wait.min(IDLE_WAIT)).await;
                        continue;
                    }
                };
                let sent = Instant::now();
                let result = match store.claim_paced(queue, kind, &worker, n).await {
                    Ok((claims, _)) if !claims.is_empty() => return (sent, claims),
                    // Paused, or at its limits: new jobs' wake tokens would not help.
                    Ok((_, wait)) if !wait.is_zero() => {
                        breaker.nothing_claimed();
                        tokio::time::sleep(wait.min(IDLE_WAIT)).await;
                        Ok(())
                    }
                    Ok(_) => {
                        breaker.nothing_claimed();
                        store.wait_for_work(&mut blocking, queue, kind, IDLE_WAIT).await
                    }
                    Err(err) => {
                        breaker.nothing_claimed();
                        Err(err)
                    }
                };
                match result {
                    Ok(()) => failures = 0,
                    Err(err) => {
                        failures = failures.saturating_add(1);
                        let delay = Duration::from_millis(100 * 2u64.pow(failures.min(5)))
                            .min(Duration::from_secs(3));
                        tracing::warn!(queue = queue.as_str(), error = %err, "cannot fetch jobs; retrying");
                        tokio::time::sleep(delay).await;
                    }
                }
            }
        })
    }

    fn start_heartbeat(&mut self) {
        if self.heartbeat.is_none() {
            let (store, held) = (self.store.clone(), self.held.clone());
            self.heartbeat = Some(lease::spawn(store, held, self.owner, J::SPEC.queue));
        }
    }

    /// Holds what the acker claimed for this backend; `true` when there was any.
    fn take_handoff(&mut self, waker: Option<&std::task::Waker>) -> bool {
        let handed = self.handoff.take(waker);
        let any = !handed.is_empty();
        for (sent, claims) in handed {
            self.hold(sent, claims);
        }
        any
    }

    /// Holds what a claim call sent at `sent` claimed, to be handed to the worker.
    fn hold(&mut self, sent: Instant, claims: Vec<Claim>) {
        for claim in claims {
            let cancel = self.held.insert(&claim, self.owner, sent);
            self.buffer.push_back((claim, cancel));
        }
    }

    /// Turns a claim into an apalis task; a payload that does not decode is dead at once.
    fn make_task(&self, claim: Claim, cancel: Cancel) -> Option<Task<J>> {
        match serde_json::from_str::<J>(&claim.payload) {
            Ok(args) => Some(TaskBuilder::new(args).data(claim).data(cancel).build()),
            Err(err) => {
                self.held.remove(&claim);
                let store = self.store.clone();
                tokio::spawn(async move {
                    let error =
                        format!("quarantined: payload does not decode as {}: {err}", claim.kind);
                    let outcome = Outcome::Dead { error: error.clone() };
                    match store.finish(&claim, &outcome, Duration::ZERO).await {
                        Ok(_) => store.report_quarantined(&claim, error),
                        Err(err) => {
                            tracing::error!(id = %claim.id, error = %err, "cannot bury an undecodable job")
                        }
                    }
                });
                None
            }
        }
    }
}

/// The worker this backend served is gone (stopped, or restarted by the monitor, which
/// dropped its running handlers with it): its claims are handed back at once, uncounted,
/// and no longer renewed (if Redis cannot be reached, their leases expire). A late outcome
/// of one of them is refused by token.
impl<J> Drop for RedisBackend<J> {
    fn drop(&mut self) {
        self.closing.store(true, Ordering::SeqCst);
        if let Some(heartbeat) = self.heartbeat.take() {
            heartbeat.abort();
        }
        // Claimed by the acker and never held: handed back with the rest.
        for (sent, claims) in self.handoff.take(None) {
            for claim in claims {
                self.held.insert(&claim, self.owner, sent);
            }
        }
        let owned = self.held.disown(self.owner, "worker_stopped");
        let Some(queue) = owned.first().map(|claim| claim.queue) else {
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (store, held) = (self.store.clone(), self.held.clone());
        runtime.spawn(async move {
            let claims: Vec<ClaimRef> = owned.iter().map(Claim::claim_ref).collect();
            let released = store.release(queue, &claims).await;
            owned.iter().for_each(|claim| held.remove(claim));
            match released {
                Ok(released) if released > 0 => {
                    tracing::warn!(queue = queue.as_str(), released, "a stopped worker handed back its jobs")
                }
                Ok(_) => {}
                Err(err) => {
                    tracing::warn!(queue = queue.as_str(), error = %err, "a stopped worker could not hand back its jobs; their leases will expire")
                }
            }
        });
    }
}

impl<J: Job> Backend for RedisBackend<J> {
    type Task = Task<J>;
    type Error = redis::RedisError;

    fn poll_ready(
        &mut self,
        _cx: &mut Context<'_>,
        _worker: &WorkerContext,
    ) -> Poll<Result<(), Self::Error>> {
        self.start_heartbeat();
        Poll::Ready(Ok(()))
    }

    fn poll_next(
        &mut self,
        cx: &mut Context<'_>,
        _worker: &WorkerContext,
    ) -> Poll<Option<Result<Task<J>, Self::Error>>> {
        loop {
            if let Some((claim, cancel)) = self.buffer.pop_front() {
                if cancel.is_cancelled() {
                    continue;
                }
                match self.make_task(claim, cancel) {
                    Some(task) => return Poll::Ready(Some(Ok(task))),
                    None => continue,
                }
            }
            if self.take_handoff(Some(cx.waker())) {
                continue;
            }
            if self.fetching.is_none() {
                self.fetching = Some(self.fetch());
            }
            let Some(fetching) = self.fetching.as_mut() else {
                return Poll::Pending;
            };
            let Poll::Ready((sent, claims)) = fetching.as_mut().poll(cx) else {
                return Poll::Pending;
            };
            self.fetching = None;
            self.hold(sent, claims);
        }
    }

    /// Stops claiming, lets a fetch in flight finish (an idle one returns within
    /// `IDLE_WAIT`) so whatever it claimed is held, then hands every claim that never
    /// started straight back to the queue. [`HeldClaims::release_all`] is the backstop.
    fn poll_close(
        &mut self,
        cx: &mut Context<'_>,
        _worker: &WorkerContext,
    ) -> Poll<Result<(), Self::Error>> {
        self.closing.store(true, Ordering::SeqCst);
        if let Some(fetching) = self.fetching.as_mut() {
            let Poll::Ready((sent, claims)) = fetching.as_mut().poll(cx) else {
                return Poll::Pending;
            };
            self.fetching = None;
            self.hold(sent, claims);
        }
        self.take_handoff(None);
        let unstarted: Vec<Claim> = self.buffer.drain(..).map(|(claim, _)| claim).collect();
        if !unstarted.is_empty() {
            let (store, held) = (self.store.clone(), self.held.clone());
            tokio::spawn(async move {
                let queue = unstarted[0].queue;
                let claims: Vec<ClaimRef> = unstarted.iter().map(Claim::claim_ref).collect();
                match store.release(queue, &claims).await {
                    Ok(_) => unstarted.iter().for_each(|claim| held.remove(claim)),
                    Err(err) => {
                        tracing::warn!(error = %err, "cannot hand back unstarted jobs yet; the worker retries as it stops")
                    }
                }
            });
        }
        Poll::Ready(Ok(()))
    }
}

impl<J: Job> BackendConfig for RedisBackend<J> {
    type Args = J;
    type Id = String;
    type Kind = Ephemeral;
    type Config = ();
    type Layer = AckLayer<J>;

    fn config(&self) -> &Self::Config {
        &()
    }

    fn middleware(&mut self, _worker: &mut WorkerContext) -> Self::Layer {
        let next = NextClaims {
            handoff: self.handoff.clone(),
            kind: J::SPEC.kind,
            worker: self.worker.clone(),
            prefetch: self.prefetch,
            closing: self.closing.clone(),
            breaker: self.breaker.clone(),
        };
        super::ack::spawn(self.store.clone(), self.held.clone(), self.breaker.clone(), next)
    }
}
