//! The console's live picture of the queues (SPEC section 11): one sampler per API instance
//! reads Redis (and the outbox backlog from Postgres) once a [`SAMPLE_EVERY`] and hands the
//! sample to every open console through a `watch` channel, so ten open pages cost what one
//! does. The sampler sleeps while no page is open and wakes when one opens.
//!
//! A sample that cannot be read (Redis or Postgres down) is published as a failure that
//! keeps the last good figures, so pages say what is wrong instead of freezing.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use futures::Stream;
use sqlx::PgPool;
use tasklane_shared::fleet::{self, WorkerInfo};
use tasklane_shared::jobs::Queue;
use tasklane_shared::queue::breaker::HeldKind;
use tasklane_shared::queue::{Depth, Pauses, QueueStore};
use tasklane_shared::redis::Conn;
use tasklane_shared::redis::Keys;
use tokio::sync::{Notify, watch};
use uuid::Uuid;

/// How often the sampler reads the queues while a page is open.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(1);
/// The throughput window.
pub const THROUGHPUT_WINDOW: Duration = Duration::from_secs(60);

/// One queue in a sample.
#[derive(Debug, Clone)]
pub struct QueueSample {
    pub queue: Queue,
    pub depth: Depth,
    /// Jobs that succeeded within [`THROUGHPUT_WINDOW`].
    pub done_last_minute: u64,
    pub pauses: Pauses,
    pub held: Vec<HeldKind>,
}

/// What every open console is shown at one moment.
#[derive(Debug, Clone)]
pub struct Sample {
    /// This instance's sampler (one per process, for its whole life).
    pub sampler: Uuid,
    /// Counts this sampler's samples from 1.
    pub seq: u64,
    pub at: DateTime<Utc>,
    pub queues: Vec<QueueSample>,
    pub workers: Vec<WorkerInfo>,
    /// Outbox rows not yet moved to Redis.
    pub outbox_backlog: i64,
    /// Why this sample could not be read; the figures are then the last good ones.
    pub error: Option<String>,
    /// When it was taken, to skip a sample left over from before the sampler slept.
    taken: Instant,
}

/// Where the sampler reads from.
#[derive(Clone)]
pub struct Sources {
    pub db: PgPool,
    pub queue: QueueStore,
    pub redis: Conn,
    pub keys: Keys,
}

/// The feed; cheap to clone.
#[derive(Clone)]
pub struct LiveFeed(Arc<Inner>);

struct Inner {
    id: Uuid,
    samples: watch::Sender<Option<Arc<Sample>>>,
    /// A page opened: sample now rather than after the sleep.
    wake: Notify,
    close: watch::Sender<bool>,
    seq: AtomicU64,
}

impl Default for LiveFeed {
    fn default() -> Self {
        Self(Arc::new(Inner {
            id: Uuid::now_v7(),
            samples: watch::Sender::new(None),
            wake: Notify::new(),
            close: watch::Sender::new(false),
            seq: AtomicU64::new(0),
        }))
    }
}

impl LiveFeed {
    /// Samples while anyone watches, until [`LiveFeed::close`]. Run once per instance.
    pub async fn run(self, sources: Sources) {
        let inner = &self.0;
        let mut closing = inner.close.subscribe();
        let mut last: Option<Arc<Sample>> = None;
        while !*closing.borrow() {
            if inner.samples.receiver_count() == 0 {
                tokio::select! {
                    _ = inner.wake.notified() => {}
                    _ = closing.changed() => {}
                }
                continue;
            }
            let seq = inner.seq.fetch_add(1, Ordering::Relaxed) + 1;
            metrics::counter!("console_samples_total").increment(1);
            let sample = match read(&sources, inner.id, seq).await {
                Ok(sample) => sample,
                Err(err) => {
                    tracing::warn!(error = %format!("{err:#}"), "cannot sample the queues");
                    let mut sample = last.as_deref().cloned().unwrap_or_else(|| Sample {
                        sampler: inner.id,
                        seq,
                        at: Utc::now(),
                        queues: Vec::new(),
                        workers: Vec::new(),
                        outbox_backlog: 0,
                        error: None,
                        taken: Instant::now(),
                    });
                    sample.seq = seq;
                    sample.at = Utc::now();
                    sample.taken = Instant::now();
                    sample.error = Some(describe(&err));
                    sample
                }
            };
            let sample = Arc::new(sample);
            if sample.error.is_none() {
                last = Some(sample.clone());
            }
            inner.samples.send_replace(Some(sample));
            tokio::select! {
                _ = tokio::time::sleep(SAMPLE_EVERY) => {}
                _ = closing.changed() => {}
            }
        }
    }

    /// The samples from now on, starting with the latest if it is fresh, until the
    /// feed closes or the caller drops the stream.
    pub fn subscribe(&self) -> impl Stream<Item = Arc<Sample>> + Send + 'static {
        let mut samples = self.0.samples.subscribe();
        let closing = self.0.close.subscribe();
        self.0.wake.notify_one();
        let fresh = samples
            .borrow_and_update()
            .clone()
            .filter(|sample| sample.taken.elapsed() < SAMPLE_EVERY * 2);
        futures::stream::unfold(
            (samples, closing, fresh),
            |(mut samples, mut closing, first)| async move {
                if let Some(sample) = first {
                    return Some((sample, (samples, closing, None)));
                }
                loop {
                    if *closing.borrow() {
                        return None;
                    }
                    tokio::select! {
                        changed = samples.changed() => {
                            changed.ok()?;
                            let sample = samples.borrow_and_update().clone();
                            if let Some(sample) = sample {
                                return Some((sample, (samples, closing, None)));
                            }
                        }
                        _ = closing.changed() => return None,
                    }
                }
            },
        )
    }

    /// Ends every stream and the sampler (graceful shutdown).
    pub fn close(&self) {
        self.0.close.send_replace(true);
    }
}

/// A failure as a page may show it: what is down, without internals.
fn describe(err: &anyhow::Error) -> String {
    if err.chain().any(|cause| cause.downcast_ref::<redis::RedisError>().is_some()) {
        "Redis cannot be read; the figures are the last ones read".into()
    } else {
        "PostgreSQL cannot be read; the figures are the last ones read".into()
    }
}

async fn read(sources: &Sources, sampler: Uuid, seq: u64) -> anyhow::Result<Sample> {
    let store = &sources.queue;
    let held = store.held_kinds().await?;
    let mut queues = Vec::new();
    for queue in Queue::ALL {
        queues.push(QueueSample {
            queue,
            depth: store.depth(queue).await?,
            done_last_minute: store.done_within(queue, THROUGHPUT_WINDOW).await?,
            pauses: store.pauses(queue).await?,
            held: held.iter().filter(|held| held.queue == queue).cloned().collect(),
        });
    }
    let lease = store.settings().lease;
    let workers = fleet::live(&mut sources.redis.clone(), &sources.keys, lease).await?;
    let outbox_backlog = tasklane_shared::outbox::backlog(&sources.db).await?;
    Ok(Sample {
        sampler,
        seq,
        at: Utc::now(),
        queues,
        workers,
        outbox_backlog,
        error: None,
        taken: Instant::now(),
    })
}
