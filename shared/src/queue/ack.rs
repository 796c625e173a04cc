//! [`AckLayer`]: the middleware of [`super::RedisBackend`] that enforces a kind's timeout and
//! has each attempt's outcome recorded with its claim's token: success, a retry after the
//! kind's backoff (times `TASKLANE_RETRY_SCALE`), dead (last attempt, or a
//! [`PermanentError`]), or handed back uncounted when the kind's dependency is down
//! ([`DependencyDown`], which also opens the kind's [`Breaker`]). Outcomes go through one
//! acker task per backend, which records whatever has accumulated in one call; an attempt
//! completes only once its outcome is recorded, so a graceful stop never loses one.

use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use apalis_core::error::BoxDynError;
use apalis_core::task::Task;
use tokio::sync::{mpsc, oneshot};
use tracing::Instrument;

use super::breaker::Breaker;
use super::handoff::NextClaims;
use super::held::Cancel;
use super::{Claim, Finished, HeldClaims, Outcome, QueueStore, lease};
use crate::jobs::{DependencyDown, Failure, Job, PermanentError, safe_reason};

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// The layer of one backend, with its acker task running; `breaker` is the backend's.
pub(super) fn spawn<J>(
    store: QueueStore,
    held: HeldClaims,
    breaker: Breaker,
    next: NextClaims,
) -> AckLayer<J> {
    let (acks, pending) = mpsc::unbounded_channel();
    let scale = store.settings().retry_scale;
    tokio::spawn(acker(store, held, pending, next));
    AckLayer { acks, breaker, scale, _job: PhantomData }
}

/// One attempt's outcome on its way to Redis.
struct Ack {
    claim: Claim,
    outcome: Outcome,
    /// Why it failed, as the user the job runs for may see it ([`crate::jobs::safe_reason`]).
    reason: String,
    took: Duration,
    recorded: oneshot::Sender<()>,
}

/// Records outcomes in batches: whatever accumulated while the previous call ran goes in the
/// next one. Ends when every sender (the worker's services) is gone.
async fn acker(
    store: QueueStore,
    held: HeldClaims,
    mut pending: mpsc::UnboundedReceiver<Ack>,
    next: NextClaims,
) {
    const MAX_BATCH: usize = 256;
    while let Some(first) = pending.recv().await {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match pending.try_recv() {
                Ok(ack) => batch.push(ack),
                Err(_) => break,
            }
        }
        record(&store, &batch, &next).await;
        for ack in batch {
            held.remove(&ack.claim);
            let _ = ack.recorded.send(());
        }
    }
}

/// Records each attempt's outcome in Redis; see the module doc.
pub struct AckLayer<J> {
    acks: mpsc::UnboundedSender<Ack>,
    breaker: Breaker,
    /// `TASKLANE_RETRY_SCALE`, applied to each retry's backoff.
    scale: f64,
    _job: PhantomData<fn() -> J>,
}

impl<J, S> tower_layer::Layer<S> for AckLayer<J> {
    type Service = AckService<J, S>;

    fn layer(&self, inner: S) -> Self::Service {
        AckService {
            inner,
            acks: self.acks.clone(),
            breaker: self.breaker.clone(),
            scale: self.scale,
            _job: PhantomData,
        }
    }
}

pub struct AckService<J, S> {
    inner: S,
    acks: mpsc::UnboundedSender<Ack>,
    breaker: Breaker,
    scale: f64,
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
        let cancel = task.ctx().data().get::<Cancel>().cloned();
        let inner = self.inner.call(task);
        let (acks, breaker, scale) = (self.acks.clone(), self.breaker.clone(), self.scale);
        let Some(claim) = claim else {
            return Box::pin(async move { inner.await.map_err(Into::into) });
        };
        // The attempt's span continues the trace of the request that caused the job.
        let span = crate::trace::job_span(&claim);
        Box::pin(
            async move {
                let kind = J::SPEC.kind;
                metrics::counter!("jobs_started_total", "kind" => kind).increment(1);
                let started = Instant::now();
                let run = tokio::time::timeout(J::SPEC.timeout, inner);
                let result = match lease::unless_cancelled(cancel, kind, run).await {
                    Ok(Ok(result)) => result.map_err(Into::into),
                    Ok(Err(_)) => {
                        let error = format!("timed out after {:?}", J::SPEC.timeout);
                        Err(Failure::new("timed out", error).into())
                    }
                    // The claim is gone: no outcome to record.
                    Err(reason) => return Err(format!("cancelled: {reason}").into()),
                };
                let took = started.elapsed();
                metrics::histogram!("job_duration_seconds", "kind" => kind).record(took.as_secs_f64());
                let down = result.as_ref().err().and_then(|error| DependencyDown::of(error.as_ref()));
                breaker.observe(result.is_err(), down.as_ref());
                let outcome = outcome_of::<J>(&claim, result.as_ref().err(), down, scale);
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
                    Outcome::Held { error } => {
                        metrics::counter!("jobs_held_total", "kind" => kind).increment(1);
                        tracing::warn!(%error, "dependency down; job handed back, attempt uncounted");
                    }
                }
                let reason = result.as_ref().err().map(|error| safe_reason(error.as_ref()));
                let reason = reason.unwrap_or_default();
                let (recorded, wait) = oneshot::channel();
                if acks.send(Ack { claim, outcome, reason, took, recorded }).is_ok() {
                    // Done only once recorded, so a graceful stop never loses an outcome.
                    let _ = wait.await;
                }
                result
            }
            .instrument(span),
        )
    }
}

fn outcome_of<J: Job>(
    claim: &Claim,
    error: Option<&BoxDynError>,
    down: Option<DependencyDown>,
    scale: f64,
) -> Outcome {
    let Some(error) = error else {
        return Outcome::Succeeded;
    };
    if let Some(down) = down {
        return Outcome::Held { error: down.to_string() };
    }
    let permanent = error.downcast_ref::<PermanentError>().is_some();
    let error = error.to_string();
    if permanent || claim.attempt >= claim.max_attempts {
        Outcome::Dead { error }
    } else {
        Outcome::Retry { error, delay: J::SPEC.backoff.delay(claim.attempt).mul_f64(scale) }
    }
}

/// Records a batch of outcomes (one queue: a backend serves one kind), retrying briefly
/// through a Redis blip; if Redis stays away the leases expire and the jobs run again
/// (delivery is at least once).
async fn record(store: &QueueStore, batch: &[Ack], next: &NextClaims) {
    let Some(queue) = batch.first().map(|ack| ack.claim.queue) else {
        return;
    };
    let outcomes: Vec<(&Claim, &Outcome, Duration)> =
        batch.iter().map(|ack| (&ack.claim, &ack.outcome, ack.took)).collect();
    // The slots these outcomes free are filled in the same round trip.
    let wanted = next.wanted(batch.len());
    for attempt in 1..=5u32 {
        let sent = std::time::Instant::now();
        let result = if wanted > 0 && attempt == 1 {
            store.finish_and_claim(queue, &outcomes, next.kind, &next.worker, wanted).await.map(
                |(recorded, claims)| {
                    next.claimed(sent, claims);
                    recorded
                },
            )
        } else {
            store.finish_many(queue, &outcomes).await
        };
        match result {
            Ok(recorded) => {
                for (ack, accepted) in batch.iter().zip(recorded) {
                    if accepted {
                        store.report(&ack.claim, &ack.outcome, &ack.reason);
                    } else {
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

/// Where the store reports what it recorded (see [`QueueStore::with_outcomes`]).
impl QueueStore {
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
}
