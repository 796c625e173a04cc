//! Schedules: each scheduled job kind runs once per tick however many workers run. (When a
//! kind runs, its effective schedule, is `tasklane_shared::schedules`.)
//!
//! Every worker runs a tick worker per schedule, fed by [`TickSource`], which times ticks by
//! Redis' clock (see [`ticks`]); a tick does not run the job, it enqueues it through the
//! outbox, under a job id derived from the kind and the tick's scheduled time: the row's
//! primary key makes the inserts of N replicas firing the same tick add exactly one job, and
//! the job has a record like any other (SPEC section 9). There is no leader to
//! elect or lose. The job then runs on whichever worker claims it, with the queue's
//! retries and orphan recovery.
//!
//! After all workers were down, the first worker to start enqueues the latest tick it missed
//! (once, by the same id), never the backlog; "missed" is judged by Redis' clock too. A
//! tick worker that falls behind its schedule yields the latest missed tick late instead of
//! failing.

mod ticks;

use apalis_core::error::BoxDynError;
use apalis_core::task::data::Data;
use apalis_cron::Tick;
use chrono::{DateTime, Utc};
use sqlx::PgPool;
use tasklane_shared::jobs::CronJob;
use tasklane_shared::outbox;
use tasklane_shared::queue::QueueStore;

pub use self::ticks::{TickSource, redis_now};

/// Namespace of tick job ids (UUIDv5 of `<kind>@<unix seconds>`).
const TICK_NAMESPACE: uuid::Uuid = uuid::Uuid::from_u128(0x6c1f_3a52_8d0e_4b7a_9f21_5e0c_7d43_a9b1);

/// Enqueues `J` for the tick at `at`, through the outbox like every job; `false` when
/// another worker already did (the job id is derived from the kind and the tick).
pub async fn enqueue_tick_at<J: CronJob>(
    db: &PgPool,
    store: &QueueStore,
    at: DateTime<Utc>,
) -> anyhow::Result<bool> {
    let kind = J::SPEC.kind;
    let id = uuid::Uuid::new_v5(&TICK_NAMESPACE, format!("{kind}@{}", at.timestamp()).as_bytes());
    let added = outbox::enqueue_once(&mut *db.acquire().await?, id, &J::for_tick(at)).await?;
    if added {
        store.record_tick(kind, at.timestamp_millis()).await?;
        tracing::info!(kind, tick = %at, "scheduled job enqueued");
    }
    Ok(added)
}

/// The apalis handler of a tick: enqueue the kind's job for it.
pub async fn on_tick<J: CronJob>(
    tick: Tick,
    db: Data<PgPool>,
    store: Data<QueueStore>,
) -> Result<(), BoxDynError> {
    let at = i64::try_from(tick.get_timestamp())
        .ok()
        .and_then(|seconds| DateTime::from_timestamp(seconds, 0))
        .ok_or("tick out of range")?;
    // An operator paused the schedule (SPEC section 10): its ticks pass without a job.
    if tasklane_shared::controls::schedule_paused(&db, J::SPEC.kind).await? {
        tracing::info!(kind = J::SPEC.kind, tick = %at, "schedule paused; tick skipped");
        return Ok(());
    }
    enqueue_tick_at::<J>(&db, &store, at).await?;
    Ok(())
}

/// At start-up: if the schedule ran before and a tick was missed since (by Redis' clock),
/// enqueue the latest missed one (once across the fleet).
pub async fn catch_up<J: CronJob>(
    db: &PgPool,
    store: &QueueStore,
    schedule: &cron::Schedule,
) -> anyhow::Result<()> {
    let Some(last_ms) = store.last_tick(J::SPEC.kind).await? else {
        return Ok(());
    };
    if tasklane_shared::controls::schedule_paused(db, J::SPEC.kind).await? {
        return Ok(());
    }
    let now = redis_now(&mut store.connection()).await?;
    let Some(latest) = schedule.after(&(now + chrono::Duration::milliseconds(1))).next_back()
    else {
        return Ok(());
    };
    if latest.timestamp_millis() > last_ms && latest <= now {
        tracing::info!(kind = J::SPEC.kind, tick = %latest, "catching up the latest missed tick");
        enqueue_tick_at::<J>(db, store, latest).await?;
    }
    Ok(())
}
