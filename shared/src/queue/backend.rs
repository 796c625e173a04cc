//! The [`QueueStore`] as an apalis backend, so workers are plain apalis workers
//! (`WorkerBuilder`, `Monitor`, layers) over Tasklane's Redis queues.
//!
//! - [`RedisBackend`] claims jobs when the worker has capacity (apalis polls the backend only
//!   when its service is ready), up to `prefetch` per round trip (the worker's concurrency),
//!   so a busy worker pays one claim call per batch and never holds more than it can soon
//!   start. Idle, it blocks on the kind's wake list, with a one-second timeout that also
//!   drives the queue's housekeeping. Redis errors are retried with backoff inside the fetch,
//!   since apalis treats a backend error as fatal to the worker.
//! - A heartbeat renews the leases of every claim the worker holds, buffered ones included.
//! - Its middleware, [`AckLayer`], records each attempt's outcome (see [`super::ack`]).
//! - [`HeldClaims`] lets the worker hand back what it still holds when a graceful shutdown
//!   runs out of time.

use std::collections::VecDeque;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use apalis_core::backend::finalize::Ephemeral;
use apalis_core::backend::{Backend, BackendConfig};
use apalis_core::task::Task;
use apalis_core::task::builder::TaskBuilder;
use apalis_core::worker::context::WorkerContext;
use redis::aio::ConnectionManager;

use super::ack::AckLayer;
use super::{Claim, ClaimRef, HeldClaims, Outcome, QueueStore};
use crate::jobs::Job;

/// How long an idle worker blocks before looking again (and sweeping retries and leases).
const IDLE_WAIT: Duration = Duration::from_secs(1);

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// An apalis backend over one queue, for the job kind `J`.
pub struct RedisBackend<J> {
    store: QueueStore,
    /// A connection of this backend's own for `BLPOP`.
    blocking: ConnectionManager,
    worker: String,
    held: HeldClaims,
    /// Most jobs claimed per round trip.
    prefetch: usize,
    /// Claimed, not yet handed to the worker (held, so their leases are renewed).
    buffer: VecDeque<Claim>,
    fetching: Option<BoxFuture<Vec<Claim>>>,
    /// Set when the worker stops: an in-flight fetch then claims nothing more.
    closing: Arc<std::sync::atomic::AtomicBool>,
    heartbeat: Option<tokio::task::JoinHandle<()>>,
    _job: PhantomData<fn() -> J>,
}

impl<J: Job> RedisBackend<J> {
    /// `worker` must be unique per process start: it names the claims this worker holds.
    pub fn new(
        store: QueueStore,
        blocking: ConnectionManager,
        worker: String,
        held: HeldClaims,
    ) -> Self {
        Self {
            store,
            blocking,
            worker,
            held,
            prefetch: 1,
            buffer: VecDeque::new(),
            fetching: None,
            closing: Arc::default(),
            heartbeat: None,
            _job: PhantomData,
        }
    }

    /// Claims up to `prefetch` jobs per round trip; set it to the worker's concurrency.
    pub fn with_prefetch(mut self, prefetch: usize) -> Self {
        self.prefetch = prefetch.max(1);
        self
    }

    fn fetch(&self) -> BoxFuture<Vec<Claim>> {
        let store = self.store.clone();
        let mut blocking = self.blocking.clone();
        let worker = self.worker.clone();
        let (queue, kind, n) = (J::SPEC.queue, J::SPEC.kind, self.prefetch);
        let closing = self.closing.clone();
        Box::pin(async move {
            let mut failures = 0u32;
            loop {
                if closing.load(std::sync::atomic::Ordering::SeqCst) {
                    return Vec::new();
                }
                let result = match store.claim(queue, kind, &worker, n).await {
                    Ok(claims) if !claims.is_empty() => return claims,
                    Ok(_) => store.wait_for_work(&mut blocking, queue, kind, IDLE_WAIT).await,
                    Err(err) => Err(err),
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
        if self.heartbeat.is_some() {
            return;
        }
        let store = self.store.clone();
        let held = self.held.clone();
        let queue = J::SPEC.queue;
        let every = store.settings().lease / 3;
        self.heartbeat = Some(tokio::spawn(async move {
            let mut ticks = tokio::time::interval(every);
            loop {
                ticks.tick().await;
                let claims = held.of_queue(queue);
                if let Err(err) = store.renew(queue, &claims).await {
                    tracing::warn!(queue = queue.as_str(), error = %err, "lease renewal failed");
                }
            }
        }));
    }

    /// Turns a claim into an apalis task; a payload that does not decode is dead at once.
    fn make_task(&self, claim: Claim) -> Option<Task<J>> {
        match serde_json::from_str::<J>(&claim.payload) {
            Ok(args) => Some(TaskBuilder::new(args).data(claim).build()),
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

impl<J> Drop for RedisBackend<J> {
    fn drop(&mut self) {
        if let Some(heartbeat) = self.heartbeat.take() {
            heartbeat.abort();
        }
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
            if let Some(claim) = self.buffer.pop_front() {
                match self.make_task(claim) {
                    Some(task) => return Poll::Ready(Some(Ok(task))),
                    None => continue,
                }
            }
            if self.fetching.is_none() {
                self.fetching = Some(self.fetch());
            }
            let Some(fetching) = self.fetching.as_mut() else {
                return Poll::Pending;
            };
            let Poll::Ready(claims) = fetching.as_mut().poll(cx) else {
                return Poll::Pending;
            };
            self.fetching = None;
            for claim in &claims {
                self.held.insert(claim);
            }
            self.buffer.extend(claims);
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
        self.closing.store(true, std::sync::atomic::Ordering::SeqCst);
        if let Some(fetching) = self.fetching.as_mut() {
            let Poll::Ready(claims) = fetching.as_mut().poll(cx) else {
                return Poll::Pending;
            };
            self.fetching = None;
            for claim in &claims {
                self.held.insert(claim);
            }
            self.buffer.extend(claims);
        }
        let unstarted: Vec<Claim> = self.buffer.drain(..).collect();
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
        super::ack::spawn(self.store.clone(), self.held.clone())
    }
}
