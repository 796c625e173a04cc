//! The [`QueueStore`] as an apalis backend, so workers are plain apalis workers
//! (`WorkerBuilder`, `Monitor`, layers) over Tasklane's Redis queues.
//!
//! - [`RedisBackend`] claims one job whenever the worker has capacity (apalis polls the
//!   backend only when its service is ready), so a worker never hoards jobs it cannot start.
//!   Idle, it blocks on the queue's wake list, with a one-second timeout that also drives
//!   the queue's housekeeping. Redis errors are retried with backoff inside the fetch, since
//!   apalis treats a backend error as fatal to the worker.
//! - A heartbeat renews the leases of every claim the worker holds.
//! - [`AckLayer`], the backend's middleware, enforces the kind's timeout, then records each
//!   attempt's outcome with the claim's token: success, a retry after the kind's backoff, or
//!   dead (last attempt, or a [`PermanentError`]).
//! - [`HeldClaims`] lets the worker hand back what it still holds when a graceful shutdown
//!   runs out of time.

use std::collections::HashMap;
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

    fn remove(&self, id: &str) {
        self.lock().remove(id);
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
                Ok(released) if released > 0 => tracing::warn!(queue = queue.as_str(), released, "handed back unfinished jobs"),
                Ok(_) => {}
                Err(err) => tracing::error!(queue = queue.as_str(), error = %err, "could not hand back jobs; their leases will expire"),
            }
            for (id, _) in claims {
                self.remove(&id);
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
    fetching: Option<BoxFuture<Claim>>,
    heartbeat: Option<tokio::task::JoinHandle<()>>,
    _job: PhantomData<fn() -> J>,
}

impl<J: Job> RedisBackend<J> {
    /// `worker` must be unique per process start: it names the claims this worker holds.
    pub fn new(store: QueueStore, blocking: ConnectionManager, worker: String, held: HeldClaims) -> Self {
        Self { store, blocking, worker, held, fetching: None, heartbeat: None, _job: PhantomData }
    }

    fn fetch(&self) -> BoxFuture<Claim> {
        let store = self.store.clone();
        let mut blocking = self.blocking.clone();
        let worker = self.worker.clone();
        let (queue, kind) = (J::SPEC.queue, J::SPEC.kind);
        Box::pin(async move {
            let mut failures = 0u32;
            loop {
                let result = match store.claim(queue, kind, &worker, 1).await {
                    Ok(mut claims) if !claims.is_empty() => {
                        if let Some(claim) = claims.pop() {
                            return claim;
                        }
                        Ok(())
                    }
                    Ok(_) => store.wait_for_work(&mut blocking, queue, kind, IDLE_WAIT).await,
                    Err(err) => Err(err),
                };
                match result {
                    Ok(()) => failures = 0,
                    Err(err) => {
                        failures = failures.saturating_add(1);
                        let delay = Duration::from_millis(100 * 2u64.pow(failures.min(5))).min(Duration::from_secs(3));
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
    fn into_task(&self, claim: Claim) -> Option<Task<J>> {
        match serde_json::from_str::<J>(&claim.payload) {
            Ok(args) => {
                self.held.insert(&claim);
                Some(TaskBuilder::new(args).data(claim).build())
            }
            Err(err) => {
                let store = self.store.clone();
                tokio::spawn(async move {
                    let outcome = Outcome::Dead { error: format!("payload does not decode as {}: {err}", claim.kind) };
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

    fn poll_ready(&mut self, _cx: &mut Context<'_>, _worker: &WorkerContext) -> Poll<Result<(), Self::Error>> {
        self.start_heartbeat();
        Poll::Ready(Ok(()))
    }

    fn poll_next(&mut self, cx: &mut Context<'_>, _worker: &WorkerContext) -> Poll<Option<Result<Task<J>, Self::Error>>> {
        loop {
            if self.fetching.is_none() {
                self.fetching = Some(self.fetch());
            }
            let Some(fetching) = self.fetching.as_mut() else {
                return Poll::Pending;
            };
            let Poll::Ready(claim) = fetching.as_mut().poll(cx) else {
                return Poll::Pending;
            };
            self.fetching = None;
            if let Some(task) = self.into_task(claim) {
                return Poll::Ready(Some(Ok(task)));
            }
        }
    }

    /// A fetch in flight at shutdown may have claimed a job: finish it and hand the job back.
    fn poll_close(&mut self, cx: &mut Context<'_>, _worker: &WorkerContext) -> Poll<Result<(), Self::Error>> {
        let Some(fetching) = self.fetching.as_mut() else {
            return Poll::Ready(Ok(()));
        };
        // An idle fetch blocks at most IDLE_WAIT before it returns or loops; a claimed job
        // is returned promptly. Give it one chance and otherwise drop it.
        match fetching.as_mut().poll(cx) {
            Poll::Ready(claim) => {
                self.fetching = None;
                let store = self.store.clone();
                tokio::spawn(async move {
                    let pair = [(claim.id.clone(), claim.token.clone())];
                    if let Err(err) = store.release(claim.queue, &pair).await {
                        tracing::warn!(id = %claim.id, error = %err, "cannot hand back a job at shutdown");
                    }
                });
                Poll::Ready(Ok(()))
            }
            Poll::Pending => {
                self.fetching = None;
                Poll::Ready(Ok(()))
            }
        }
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
        AckLayer { store: self.store.clone(), held: self.held.clone(), _job: PhantomData }
    }
}

/// Records each attempt's outcome in Redis; see the module doc.
pub struct AckLayer<J> {
    store: QueueStore,
    held: HeldClaims,
    _job: PhantomData<fn() -> J>,
}

impl<J, S> tower_layer::Layer<S> for AckLayer<J> {
    type Service = AckService<J, S>;

    fn layer(&self, inner: S) -> Self::Service {
        AckService { inner, store: self.store.clone(), held: self.held.clone(), _job: PhantomData }
    }
}

pub struct AckService<J, S> {
    inner: S,
    store: QueueStore,
    held: HeldClaims,
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
        let store = self.store.clone();
        let held = self.held.clone();
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
                record(&store, &claim, &outcome, took).await;
                held.remove(&claim.id);
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

/// Records an outcome, retrying briefly through a Redis blip; if Redis stays away the lease
/// expires and the job runs again (delivery is at least once).
async fn record(store: &QueueStore, claim: &Claim, outcome: &Outcome, took: Duration) {
    for attempt in 1..=5u32 {
        match store.finish(claim, outcome, took).await {
            Ok(true) => return,
            Ok(false) => {
                tracing::warn!("outcome refused: the lease had expired and the job was handed to another worker");
                return;
            }
            Err(err) => {
                tracing::warn!(error = %err, attempt, "cannot record the job's outcome yet");
                tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt))).await;
            }
        }
    }
    tracing::error!("gave up recording the job's outcome; its lease will expire and it will run again");
}
