//! The circuit breaker of one job kind in one worker (SPEC section 9, "Outages do not kill
//! jobs"): when a handler reports its dependency down ([`DependencyDown`]), the attempt is
//! handed back uncounted and the kind is held as a whole instead of burning each job's
//! attempts.
//!
//! - Closed: the backend claims as usual.
//! - Open: it claims nothing of the kind until a cool-down passes (1 s, doubling up to
//!   [`MAX_COOL_DOWN`], both times `TASKLANE_RETRY_SCALE`).
//! - Probing: one claim goes through. Its success (or any answer other than the dependency
//!   being down) closes the breaker; the dependency still down opens it again, for longer.
//!
//! While open, the kind is published in Redis as `<prefix>:held:<kind>` (a hash: dependency,
//! since, worker, error) with a TTL the breaker keeps refreshing, so a worker that dies
//! leaves no stale entry; `GET /admin/queues` lists it, and the worker's metrics show
//! `queue_kind_held{kind,dependency}` (1 while held) and `queue_kind_held_since_seconds`.

use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::QueueStore;
use crate::jobs::{self, DependencyDown, Queue};

/// The first cool-down after a dependency was found down, before scaling.
pub const FIRST_COOL_DOWN: Duration = Duration::from_secs(1);
/// The longest cool-down between probes, before scaling.
pub const MAX_COOL_DOWN: Duration = Duration::from_secs(30);
/// The shortest cool-down, whatever the scale.
const MIN_COOL_DOWN: Duration = Duration::from_millis(100);
/// How often an open breaker refreshes its entry in Redis; the entry lives three times this.
const PUBLISH_EVERY: Duration = Duration::from_secs(5);

/// What an attempt told the breaker about its kind's dependency.
#[derive(Debug, Clone, Copy)]
enum Report<'a> {
    /// It succeeded: the dependency answers.
    Succeeded,
    /// It failed for a reason of the job's own.
    Failed,
    /// Its dependency is down.
    Down(&'a DependencyDown),
}

/// Whether the backend may claim now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Admit {
    /// Claim up to this many.
    Claim(usize),
    /// Claim nothing for now; look again after this long.
    Wait(Duration),
}

#[derive(Debug, Clone, Copy)]
enum Phase {
    Closed,
    Open {
        until: Instant,
    },
    /// One claim went through at `since`; its outcome decides.
    Probing {
        since: Instant,
    },
}

/// Why a kind is held, while it is.
#[derive(Debug, Clone)]
struct Outage {
    dependency: &'static str,
    /// Unix milliseconds of when it was first found down.
    since_ms: i64,
    error: String,
}

struct State {
    phase: Phase,
    /// Cool-downs in a row, for the backoff.
    opened: u32,
    outage: Option<Outage>,
}

struct Inner {
    kind: &'static str,
    /// How long a probe may take before another is let through (the kind's timeout).
    probe_timeout: Duration,
    scale: f64,
    state: Mutex<State>,
    /// Whether the kind is held, for the publisher.
    held: watch::Sender<bool>,
}

/// The breaker of one kind; cheap to clone (the backend and its middleware share it).
#[derive(Clone)]
pub struct Breaker(Arc<Inner>);

impl Breaker {
    /// A closed breaker for `kind`, publishing as `worker` while open.
    pub(super) fn new(store: &QueueStore, kind: &'static str, worker: String) -> Self {
        let probe_timeout = jobs::spec(kind).map_or(Duration::from_secs(60), |spec| spec.timeout);
        let (held, watching) = watch::channel(false);
        let inner = Arc::new(Inner {
            kind,
            probe_timeout,
            scale: store.settings().retry_scale,
            state: Mutex::new(State { phase: Phase::Closed, opened: 0, outage: None }),
            held,
        });
        // Outside a runtime (never in a worker) the breaker still holds, unpublished.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(publish(store.clone(), Arc::downgrade(&inner), worker, watching));
        }
        Self(inner)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.0.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// How many of `want` jobs the backend may claim now.
    pub(super) fn admit(&self, want: usize) -> Admit {
        let now = Instant::now();
        let mut state = self.lock();
        match state.phase {
            Phase::Closed => Admit::Claim(want),
            Phase::Open { until } if now < until => Admit::Wait(until - now),
            Phase::Probing { since } if now < since + self.0.probe_timeout => {
                Admit::Wait(Duration::from_millis(250))
            }
            // Cooled down, or the last probe never reported: one claim goes through.
            Phase::Open { .. } | Phase::Probing { .. } => {
                state.phase = Phase::Probing { since: now };
                Admit::Claim(1)
            }
        }
    }

    /// Whether the kind runs normally (no outage seen): only then may the acker claim the
    /// next jobs along with its outcomes (probes go through [`Breaker::admit`]).
    pub(super) fn is_closed(&self) -> bool {
        matches!(self.lock().phase, Phase::Closed)
    }

    /// The probe's claim found nothing to run: the next claim may probe again.
    pub(super) fn nothing_claimed(&self) {
        let mut state = self.lock();
        if let Phase::Probing { .. } = state.phase {
            state.phase = Phase::Open { until: Instant::now() };
        }
    }

    /// Takes an attempt's result: its error, if it failed, and the outage it reports.
    pub(super) fn observe(&self, failed: bool, down: Option<&DependencyDown>) {
        self.report(match (failed, down) {
            (_, Some(down)) => Report::Down(down),
            (false, None) => Report::Succeeded,
            (true, None) => Report::Failed,
        });
    }

    /// Takes what an attempt found out about the kind's dependency.
    fn report(&self, report: Report<'_>) {
        let mut state = self.lock();
        let probing = matches!(state.phase, Phase::Probing { .. });
        match report {
            Report::Down(down) => self.open(&mut state, down),
            // Any answer of the probe's but "down" means the dependency answers again; so
            // does any success.
            Report::Succeeded if state.outage.is_some() || probing => self.close(&mut state),
            Report::Failed if probing => self.close(&mut state),
            Report::Succeeded | Report::Failed => {}
        }
    }

    fn open(&self, state: &mut State, down: &DependencyDown) {
        let cool_down = self.cool_down(state.opened);
        let until = Instant::now() + cool_down;
        match state.phase {
            // Jobs that were running when the outage began report it after the breaker
            // opened: it stays open, without lengthening the backoff.
            Phase::Open { until: current } if current >= until => {}
            _ => {
                state.opened = state.opened.saturating_add(1);
                state.phase = Phase::Open { until };
            }
        }
        let first = state.outage.is_none();
        let outage = state.outage.get_or_insert_with(|| Outage {
            dependency: down.dependency,
            since_ms: chrono::Utc::now().timestamp_millis(),
            error: String::new(),
        });
        outage.error.clone_from(&down.error);
        let dependency = outage.dependency;
        if first {
            let since = outage.since_ms as f64 / 1000.0;
            tracing::warn!(kind = self.0.kind, dependency, error = %down.error, "dependency down: holding the kind");
            metrics::gauge!("queue_kind_held", "kind" => self.0.kind, "dependency" => dependency)
                .set(1.0);
            metrics::gauge!("queue_kind_held_since_seconds", "kind" => self.0.kind, "dependency" => dependency)
                .set(since);
            self.0.held.send_replace(true);
        }
    }

    fn close(&self, state: &mut State) {
        state.phase = Phase::Closed;
        state.opened = 0;
        if let Some(outage) = state.outage.take() {
            let dependency = outage.dependency;
            tracing::info!(kind = self.0.kind, dependency, "dependency back: the kind runs again");
            metrics::gauge!("queue_kind_held", "kind" => self.0.kind, "dependency" => dependency)
                .set(0.0);
            self.0.held.send_replace(false);
        }
    }

    /// The wait after `opened` cool-downs in a row: doubling, capped, scaled.
    fn cool_down(&self, opened: u32) -> Duration {
        let unscaled = FIRST_COOL_DOWN.saturating_mul(2u32.saturating_pow(opened.min(16)));
        unscaled.min(MAX_COOL_DOWN).mul_f64(self.0.scale).max(MIN_COOL_DOWN)
    }
}

/// Keeps `<prefix>:held:<kind>` in step with the breaker while it lives.
async fn publish(
    store: QueueStore,
    breaker: Weak<Inner>,
    worker: String,
    mut held: watch::Receiver<bool>,
) {
    let mut published = false;
    loop {
        let open = *held.borrow_and_update();
        let Some(inner) = breaker.upgrade() else {
            return;
        };
        let key = held_key(&store, inner.kind);
        let outage =
            inner.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner).outage.clone();
        drop(inner);
        let result = match outage.filter(|_| open) {
            Some(outage) => {
                published = true;
                redis::pipe()
                    .cmd("HSETNX")
                    .arg(&key)
                    .arg("since_ms")
                    .arg(outage.since_ms)
                    .ignore()
                    .cmd("HSET")
                    .arg(&key)
                    .arg("dependency")
                    .arg(outage.dependency)
                    .arg("worker")
                    .arg(&worker)
                    .arg("error")
                    .arg(&outage.error)
                    .ignore()
                    .cmd("PEXPIRE")
                    .arg(&key)
                    .arg(super::millis(PUBLISH_EVERY * 3))
                    .ignore()
                    .exec_async(&mut store.connection())
                    .await
            }
            None if published => {
                published = false;
                redis::cmd("DEL").arg(&key).exec_async(&mut store.connection()).await
            }
            None => Ok(()),
        };
        if let Err(err) = result {
            tracing::debug!(error = %err, "cannot publish a held kind yet");
        }
        tokio::select! {
            changed = held.changed() => if changed.is_err() { return },
            () = tokio::time::sleep(PUBLISH_EVERY) => {}
        }
    }
}

/// Every kind's key shares the `{held}` hash tag, so all of them are read in one pipeline on
/// a cluster too.
fn held_key(store: &QueueStore, kind: &str) -> String {
    store.keys().global(&format!("{{held}}:{kind}"))
}

/// A kind held by a worker's breaker, as published in Redis.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldKind {
    pub kind: String,
    pub queue: Queue,
    pub dependency: String,
    /// Unix milliseconds of when the dependency was first found down.
    pub since_ms: i64,
    /// The worker that published it last.
    pub worker: String,
    pub error: String,
}

impl QueueStore {
    /// The kinds held now by some worker's breaker (a dependency down).
    pub async fn held_kinds(&self) -> redis::RedisResult<Vec<HeldKind>> {
        let mut pipe = redis::pipe();
        for spec in jobs::ALL {
            pipe.cmd("HGETALL").arg(held_key(self, spec.kind));
        }
        let found: Vec<std::collections::HashMap<String, String>> =
            pipe.query_async(&mut self.connection()).await?;
        Ok(jobs::ALL
            .iter()
            .zip(found)
            .filter(|(_, fields)| !fields.is_empty())
            .map(|(spec, mut fields)| HeldKind {
                kind: spec.kind.into(),
                queue: spec.queue,
                dependency: fields.remove("dependency").unwrap_or_default(),
                since_ms: fields.get("since_ms").and_then(|ms| ms.parse().ok()).unwrap_or(0),
                worker: fields.remove("worker").unwrap_or_default(),
                error: fields.remove("error").unwrap_or_default(),
            })
            .collect())
    }
}
