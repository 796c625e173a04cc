//! The dead set in bulk (SPEC section 10): how long one `POST /admin/jobs/retry` takes over
//! 100,000 dead jobs, measured on the store the route calls.

use std::time::{Duration, Instant};

use tasklane_shared::config::Settings;
use tasklane_shared::jobs::{Job, Queue};
use tasklane_shared::queue::{BulkAction, DeadFilter, NewJob, Outcome};

use crate::queue::{Noop, store};

/// Dead jobs retried in one call.
const DEAD_JOBS: usize = 100_000;

/// One bulk retry, and the same call again once nothing matches.
struct BulkRetry {
    took: Duration,
    again: Duration,
}

/// Prints how long the bulk retry took (part of `scripts/bench queue`).
pub async fn run() -> anyhow::Result<()> {
    let settings = Settings::from_env()?;
    let bulk = bulk_retry(&settings).await?;
    println!(
        "bulk retry of {DEAD_JOBS} dead jobs: {:.2} s ({:.0} jobs/s); a second call (nothing left): {:.3} s",
        bulk.took.as_secs_f64(),
        DEAD_JOBS as f64 / bulk.took.as_secs_f64(),
        bulk.again.as_secs_f64()
    );
    Ok(())
}

/// Fills a queue with [`DEAD_JOBS`] dead jobs (pushed, claimed and buried in batches), then
/// times retrying all of them.
async fn bulk_retry(settings: &Settings) -> anyhow::Result<BulkRetry> {
    let prefix = format!("bench_{}", uuid::Uuid::now_v7().simple());
    let store = store(settings, &prefix).await?;
    let payload = serde_json::to_string(&Noop { enqueued_us: 0 })?;
    let kind = Noop::SPEC.kind;
    for _ in 0..DEAD_JOBS / 1000 {
        let jobs: Vec<NewJob> =
            (0..1000).map(|_| NewJob::plain(kind, payload.clone(), 1)).collect();
        store.push(Queue::Maintenance, &jobs).await?;
        let claims = store.claim(Queue::Maintenance, kind, "bench", 1000).await?;
        let dead = Outcome::Dead { error: "bench: buried".into() };
        let outcomes: Vec<_> = claims.iter().map(|claim| (claim, &dead, Duration::ZERO)).collect();
        store.finish_many(Queue::Maintenance, &outcomes).await?;
    }
    let filter = DeadFilter { error_contains: Some("buried".into()), ..DeadFilter::default() };
    let started = Instant::now();
    let retried = store.bulk_dead(Queue::Maintenance, BulkAction::Retry, &filter).await?;
    let took = started.elapsed();
    anyhow::ensure!(retried.len() == DEAD_JOBS, "retried {} of {DEAD_JOBS}", retried.len());
    let started = Instant::now();
    let none = store.bulk_dead(Queue::Maintenance, BulkAction::Retry, &filter).await?;
    let again = started.elapsed();
    anyhow::ensure!(none.is_empty(), "a second retry found {}", none.len());
    let mut conn = store.connection();
    let keys: Vec<String> =
        redis::cmd("KEYS").arg(format!("{prefix}:*")).query_async(&mut conn).await?;
    for chunk in keys.chunks(1000) {
        let _: () = redis::cmd("UNLINK").arg(chunk).query_async(&mut conn).await?;
    }
    Ok(BulkRetry { took, again })
}
