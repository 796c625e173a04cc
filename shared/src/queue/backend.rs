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
//! - [`AckLayer`], the backend's middleware, enforces the kind's timeout, then has each
//!   attempt's outcome recorded with the claim's token: success, a retry after the kind's
//!   backoff, or dead (last attempt, or a [`PermanentError`]). Outcomes go through one acker
//!   task per backend, which records whatever has accumulated in one call; an attempt
//!   completes only once its outcome is recorded.
//! - [`HeldClaims`] lets the worker hand back what it still holds when a graceful shutdown
//!   runs out of time.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use apalis_core::backend::finalize::Ephemeral;
use apalis_core::backend::{Backend, BackendConfig};
use apalis_core::error::BoxDynError;
use apalis_core::task::Task;
use apalis_core::task::builder::TaskBuilder;
use apalis_core::worker::context::WorkerContext;
use redis::aio::ConnectionManager;
use tokio::sync::{mpsc, oneshot};
use tracing::Instrument;

use super::{Claim, Outcome, QueueStore};
use crate::jobs::{Job, PermanentError, Queue};

/// How long an idle worker blocks before looking again (and sweeping retries and leases).
const IDLE_WAIT: Duration = Duration::from_secs(1);

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// Claims a worker holds (claimed, outcome not yet recorded), shared by its backends.
#[derive(Clone, Default)]
pub struct HeldClaims(Arc<Mutex<HashMap<String, Claim>>>);

impl HeldClaims {
    fn insert(&self, claim: &Claim) {
        self.lock().insert(claim.id.clone(), claim.clone());
    }

    /// Forgets a claim, unless the job was claimed again since (another token).
    fn remove(&self, claim: &Claim) {
        let mut held = self.lock();
        if held.get(&claim.id).is_some_and(|current| current.token == claim.token) {
            held.remove(&claim.id);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Claim>> {
        // A panic while holding this lock cannot leave the map inconsistent.
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// `(id, token)` of every claim held on `queue`.
    pub fn of_queue(&self, queue: Queue) -> Vec<(String, String)> {
        self.lock()
            .values()
            .filter(|claim| claim.queue == queue)
            .map(|claim| (claim.id.clone(), claim.token.clone()))
            .collect()
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
            let mut held = self.lock();
            for (id, token) in claims {
                if held.get(&id).is_some_and(|current| current.token == token) {
                    held.remove(&id);
                }
            }
        }
    }
}

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
                    let outcome = Outcome::Dead {
                        error: format!("payload does not decode as {}: {err}", claim.kind),
                    };
                    if let Err(err) = store.finish(&claim, &outcome, Duration::ZERO).await {
                        tracing::error!(id = %claim.id, error = %err, "cannot bury an undecodable job");
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
                let pairs: Vec<(String, String)> =
                    unstarted.iter().map(|c| (c.id.clone(), c.token.clone())).collect();
                match store.release(queue, &pairs).await {
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
        let (acks, pending) = mpsc::unbounded_channel();
        tokio::spawn(acker(self.store.clone(), self.held.clone(), pending));
        AckLayer { acks, _job: PhantomData }
    }
}

/// One attempt's outcome on its way to Redis.
struct Ack {
    claim: Claim,
    outcome: Outcome,
    took: Duration,
    recorded: oneshot::Sender<()>,
}

/// Records outcomes in batches: whatever accumulated while the previous call ran goes in the
/// next one. Ends when every sender (the worker's services) is gone.
async fn acker(store: QueueStore, held: HeldClaims, mut pending: mpsc::UnboundedReceiver<Ack>) {
    const MAX_BATCH: usize = 256;
    while let Some(first) = pending.recv().await {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match pending.try_recv() {
                Ok(ack) => batch.push(ack),
                Err(_) => break,
            }
        }
        record(&store, &batch).await;
        for ack in batch {
            held.remove(&ack.claim);
            let _ = ack.recorded.send(());
        }
    }
}

/// Records each attempt's outcome in Redis; see the module doc.
pub struct AckLayer<J> {
    acks: mpsc::UnboundedSender<Ack>,
    _job: PhantomData<fn() -> J>,
}

impl<J, S> tower_layer::Layer<S> for AckLayer<J> {
    type Service = AckService<J, S>;

    fn layer(&self, inner: S) -> Self::Service {
        AckService { inner, acks: self.acks.clone(), _job: PhantomData }
    }
}

pub struct AckService<J, S> {
    inner: S,
    acks: mpsc::UnboundedSender<Ack>,
    _job: PhantomData<fn() -> J>,
}

impl<J, S> tower_service::Service<Task<J>> for AckService<J, S>
where
    J: Job,
    S: tower_service::Service<Task<J>>,
    S::Future: Send + 'static,
    S::Response: Send + 'static,
    S::Error: Into<BoxDynError>,
{
    type Response = S::Response;
    type Error = BoxDynError;
    type Future = BoxFuture<Result<S::Response, BoxDynError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, task: Task<J>) -> Self::Future {
        let claim = task.ctx().data().get::<Claim>().cloned();
        let inner = self.inner.call(task);
        let acks = self.acks.clone();
        let Some(claim) = claim else {
            return Box::pin(async move { inner.await.map_err(Into::into) });
        };
        let span = tracing::info_span!(
            "job",
            queue = claim.queue.as_str(),
            kind = %claim.kind,
            id = %claim.id,
            attempt = claim.attempt,
            request_id = claim.request_id.as_deref().unwrap_or("-"),
        );
        Box::pin(
            async move {
                let kind = J::SPEC.kind;
                metrics::counter!("jobs_started_total", "kind" => kind).increment(1);
                let started = Instant::now();
                let result = match tokio::time::timeout(J::SPEC.timeout, inner).await {
                    Ok(result) => result.map_err(Into::into),
                    Err(_) => Err(format!("timed out after {:?}", J::SPEC.timeout).into()),
                };
                let took = started.elapsed();
                metrics::histogram!("job_duration_seconds", "kind" => kind).record(took.as_secs_f64());
                let outcome = outcome_of::<J>(&claim, result.as_ref().err());
                match &outcome {
                    Outcome::Succeeded => {
                        metrics::counter!("jobs_succeeded_total", "kind" => kind).increment(1);
                        tracing::info!(took_ms = took.as_millis() as u64, "job succeeded");
                    }
                    Outcome::Retry { error, delay } => {
                        metrics::counter!("jobs_failed_total", "kind" => kind).increment(1);
                        metrics::counter!("jobs_retried_total", "kind" => kind).increment(1);
                        tracing::warn!(%error, retry_in_ms = delay.as_millis() as u64, "job failed; will retry");
                    }
                    Outcome::Dead { error } => {
                        metrics::counter!("jobs_failed_total", "kind" => kind).increment(1);
                        metrics::counter!("jobs_dead_total", "kind" => kind).increment(1);
                        tracing::error!(%error, "job is dead");
                    }
                }
                let (recorded, wait) = oneshot::channel();
                if acks.send(Ack { claim, outcome, took, recorded }).is_ok() {
                    // Done only once recorded, so a graceful stop never loses an outcome.
                    let _ = wait.await;
                }
                result
            }
            .instrument(span),
        )
    }
}

fn outcome_of<J: Job>(claim: &Claim, error: Option<&BoxDynError>) -> Outcome {
    let Some(error) = error else {
        return Outcome::Succeeded;
    };
    let permanent = error.downcast_ref::<PermanentError>().is_some();
    let error = error.to_string();
    if permanent || claim.attempt >= claim.max_attempts {
        Outcome::Dead { error }
    } else {
        Outcome::Retry { error, delay: J::SPEC.backoff.delay(claim.attempt) }
    }
}

/// Records a batch of outcomes (one queue: a backend serves one kind), retrying briefly
/// through a Redis blip; if Redis stays away the leases expire and the jobs run again
/// (delivery is at least once).
async fn record(store: &QueueStore, batch: &[Ack]) {
    let Some(queue) = batch.first().map(|ack| ack.claim.queue) else {
        return;
    };
    let outcomes: Vec<(&Claim, &Outcome, Duration)> =
        batch.iter().map(|ack| (&ack.claim, &ack.outcome, ack.took)).collect();
    for attempt in 1..=5u32 {
        match store.finish_many(queue, &outcomes).await {
            Ok(recorded) => {
                for (ack, accepted) in batch.iter().zip(recorded) {
                    if !accepted {
                        tracing::warn!(id = %ack.claim.id, "outcome refused: the lease had expired and the job was handed to another worker");
                    }
                }
                return;
            }
            Err(err) => {
                tracing::warn!(error = %err, attempt, jobs = batch.len(), "cannot record job outcomes yet");
                tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt))).await;
            }
        }
    }
    tracing::error!(
        jobs = batch.len(),
        "gave up recording job outcomes; their leases will expire and they will run again"
    );
}
