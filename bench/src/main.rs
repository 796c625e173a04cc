//! `tasklane-bench queue|auth`: measures Tasklane against baselines taken in the same run on
//! the same machine, and prints the ratios the issues set targets for. Run it through
//! `scripts/bench`, which starts the services and builds in release mode.
//!
//! - `queue`: no-op job drain rate of 1 worker process against `redis-benchmark -t lpush`;
//!   enqueue-to-start latency through the outbox (p50, p99); drain rate with 1, 2 and 4
//!   worker processes.
//! - `scale`: drains on one Redis and on the Redis Cluster against `redis-benchmark -t
//!   lpush`, and with 1, 2 and 4 worker processes, with Redis' and the workers' CPU per job.
//! - `auth`: login requests/s against argon2 verifications/s in the same process; the
//!   `/health/live` p99 idle and under full login load.
//! - `tasks`: the real `tasklane-api` loaded by wrk: `GET /me`, `GET /tasks/{id}` and the
//!   first list page (cache hits) against a bare Poem handler served by this process,
//!   `POST /tasks` against the writer's statement driven by pgbench, alternating rounds;
//!   the list p99 of a user with 10,000 tasks.
//! - `upload`: a 25 MiB PNG from `complete` to `ready` in a real worker process, against
//!   hashing it in memory, and the worker's peak memory against its idle peak.
//! - `events`: 1,000 SSE clients on one API process: publish-to-receive latency p50/p99 and
//!   the API's memory per connection against its memory before any.
//! - `traces`: `GET /tasks/{id}` with spans exported over OTLP at 100 % and 1 % sampling,
//!   against the same with export off.
//!
//! Benchmarks, not tests: they print figures and never fail on them.

mod api_process;
mod auth;
mod baseline;
mod dead_set;
mod events;
mod pgbench;
mod queue;
mod scale;
mod tasks;
mod traces;
mod upload;
mod wrk;

use std::time::Duration;

/// The same allocator as the services, so what is measured is what runs.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("queue") => {
            queue::run().await?;
            dead_set::run().await
        }
        Some("scale") => scale::run().await,
        Some("auth") => auth::run().await,
        Some("tasks") => tasks::run().await,
        Some("upload") => upload::run().await,
        Some("events") => events::run().await,
        Some("traces") => traces::run().await,
        // Internal: one configuration of the tracing benchmark.
        Some("traces-run") => traces::run_mode(&args[1..]).await,
        // Internal: one drain worker process of the queue benchmark.
        Some("drain-worker") => queue::drain_worker(&args[1..]).await,
        _ => anyhow::bail!("usage: tasklane-bench queue|scale|auth|tasks|upload|events|traces"),
    }
}

/// The middle of an odd number of runs.
pub fn median(mut runs: Vec<f64>) -> f64 {
    runs.sort_by(f64::total_cmp);
    runs[runs.len() / 2]
}

/// The `p`-th percentile of a sorted slice.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

pub fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}
