//! The queue benchmark.

use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use apalis::layers::WorkerBuilderExt;
use apalis_core::error::BoxDynError;
use apalis_core::monitor::Monitor;
use apalis_core::task::data::Data;
use apalis_core::worker::builder::WorkerBuilder;
use secrecy::ExposeSecret;
use tasklane_shared::config::Settings;
use tasklane_shared::jobs::{Backoff, DeleteObjects, Job, JobSpec, Queue};
use tasklane_shared::outbox::{self, OutcomeRecorder, Relay};
use tasklane_shared::queue::{HeldClaims, NewJob, QueueSettings, QueueStore, RedisBackend};
use tasklane_shared::redis::Keys;

use crate::{ms, percentile};

/// A job that does nothing: what is measured is the queue.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub(crate) struct Noop {
    /// When it was enqueued (Unix µs); gives the payload a realistic size.
    pub(crate) enqueued_us: i64,
}

impl Job for Noop {
    const SPEC: JobSpec = JobSpec {
        kind: "bench_noop",
        queue: Queue::Maintenance,
        priority: tasklane_shared::jobs::Priority::Normal,
        max_attempts: 3,
        backoff: Backoff { base: Duration::from_millis(100), cap: Duration::from_secs(1) },
        timeout: Duration::from_secs(10),
        unique: false,
        schedule: None,
        fair_by: None,
    };
}

/// Jobs per drain; `TASKLANE_BENCH_JOBS` overrides (a longer drain for profiling).
pub(crate) fn drain_jobs() -> usize {
    std::env::var("TASKLANE_BENCH_JOBS").ok().and_then(|n| n.parse().ok()).unwrap_or(40_000)
}
const LATENCY_JOBS: usize = 1_000;
pub(crate) const CONCURRENCY: usize = 128;

pub(crate) fn settings() -> anyhow::Result<Settings> {
    Ok(Settings::from_env()?)
}

/// A store under `prefix`, with the (empty) queue controls fetching needs in place, as a
/// worker or the API would have copied them.
pub(crate) async fn store(settings: &Settings, prefix: &str) -> anyhow::Result<QueueStore> {
    let conn = tasklane_shared::redis::connect(settings)?;
    let queue_settings =
        QueueSettings { shards: settings.queue_shards, ..QueueSettings::default() };
    let store = QueueStore::new(conn, Keys::new(prefix.to_owned()), queue_settings);
    tasklane_shared::controls::publish(&store, &[]).await?;
    Ok(store)
}

pub async fn run() -> anyhow::Result<()> {
    let settings = settings()?;
    let redis_url = url::Url::parse(settings.redis_url.expose_secret())?;
    println!(
        "# queue benchmark ({} no-op jobs per drain, {CONCURRENCY} concurrent per worker process)",
        drain_jobs()
    );

    let lpush = crate::baseline::redis_benchmark_lpush(&redis_url).await?;
    println!("redis-benchmark -t lpush:                {lpush:>10.0} ops/s  (baseline)");

    let mut rates = Vec::new();
    for workers in [1, 2, 4] {
        let rate = drain(&settings, workers).await?;
        println!("drain, {workers} worker process(es):        {rate:>10.0} jobs/s");
        rates.push((workers, rate));
    }
    let single = drain_with(&settings, 1, 1, false).await?;
    println!("drain, 1 worker, concurrency 1:         {single:>10.0} jobs/s");
    let bullmq_single = bullmq_drain(&redis_url, 1).await?;
    println!("BullMQ 6.7 drain, concurrency 1:        {bullmq_single:>10.0} jobs/s");
    let bullmq_wide = bullmq_drain(&redis_url, CONCURRENCY).await?;
    println!("BullMQ 6.7 drain, concurrency {CONCURRENCY}:      {bullmq_wide:>10.0} jobs/s");
    // Short runs: three of each, alternating, and the median of each kind.
    let (mut plains, mut keeps) = (Vec::new(), Vec::new());
    for _ in 0..3 {
        plains.push(outbox_drain(&settings, false).await?);
        keeps.push(outbox_drain(&settings, true).await?);
    }
    let median = |runs: &mut Vec<OutboxDrain>| {
        runs.sort_by(|a, b| a.records_rate.total_cmp(&b.records_rate));
        runs.swap_remove(1)
    };
    let (plain, kept) = (median(&mut plains), median(&mut keeps));
    println!(
        "outbox drain, outcomes not recorded:   {:>10.0} jobs/s  (median of 3)",
        plain.redis_rate
    );
    println!(
        "outbox drain, job records kept:        {:>10.0} jobs/s  (every record finished: {:.0} jobs/s; median of 3)",
        kept.redis_rate, kept.records_rate
    );
    // Limits checked on every claim, against none: three of each, alternating, medians.
    let (mut free, mut limited) = (Vec::new(), Vec::new());
    for _ in 0..3 {
        free.push(drain_with(&settings, 1, CONCURRENCY, false).await?);
        limited.push(drain_with(&settings, 1, CONCURRENCY, true).await?);
    }
    let (free, limited) = (crate::median(free), crate::median(limited));
    println!("drain, 1 worker, no limits:             {free:>10.0} jobs/s  (median of 3)");
    println!("drain, 1 worker, rate and concurrency limits: {limited:>10.0} jobs/s  (median of 3)");
    let (p50, p99) = latency(&settings).await?;
    println!("enqueue-to-start via outbox: p50 {} p99 {}", ms(p50), ms(p99));
    println!();
    println!("ratio drain(1 worker) / lpush: {:.2}  (target >= 0.5)", rates[0].1 / lpush);
    println!(
        "ratio drain(concurrency 1) / lpush: {:.3}; Tasklane / BullMQ at concurrency 1: {:.2}, at {CONCURRENCY}: {:.2}",
        single / lpush,
        single / bullmq_single,
        rates[0].1 / bullmq_wide
    );
    println!(
        "ratio outbox drain with records / without: {:.2}  (target >= 0.8); with records / lpush: {:.3}",
        kept.records_rate / plain.redis_rate,
        kept.records_rate / lpush
    );
    println!("latency p50 {} (target <= 10 ms), p99 {} (target <= 100 ms)", ms(p50), ms(p99));
    println!("ratio drain with limits / without: {:.2}", limited / free);
    for (workers, rate) in &rates[1..] {
        println!("scaling {workers} workers / 1 worker: {:.2}", rate / rates[0].1);
    }
    Ok(())
}

/// BullMQ's drain of the same number of no-op jobs on the same Redis (`bench/bullmq`).
async fn bullmq_drain(url: &url::Url, concurrency: usize) -> anyhow::Result<f64> {
    let output = tokio::process::Command::new("node")
        .args(["bench/bullmq/drain.mjs", url.as_str()])
        .arg(drain_jobs().to_string())
        .arg(concurrency.to_string())
        .output()
        .await?;
    let text = String::from_utf8_lossy(&output.stdout);
    anyhow::ensure!(
        output.status.success(),
        "BullMQ drain failed: {text}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    text.trim().parse().map_err(|_| anyhow::anyhow!("cannot read the BullMQ drain's rate: {text}"))
}

/// Pushes the jobs, then times `workers` processes draining them.
async fn drain(settings: &Settings, workers: usize) -> anyhow::Result<f64> {
    drain_with(settings, workers, CONCURRENCY, false).await
}

/// Like [`drain`], each worker running `concurrency` jobs at once; with `limited`, under a
/// fleet-wide rate and concurrency limit too high to bind, so what is measured is the cost
/// of checking them (SPEC section 10).
async fn drain_with(
    settings: &Settings,
    workers: usize,
    concurrency: usize,
    limited: bool,
) -> anyhow::Result<f64> {
    Ok(drain_costed(settings, workers, concurrency, limited).await?.rate)
}

/// Like [`drain_with`], with the CPU Redis spent on the drain (not the pushes before it).
pub(crate) async fn drain_costed(
    settings: &Settings,
    workers: usize,
    concurrency: usize,
    limited: bool,
) -> anyhow::Result<crate::baseline::Drained> {
    let prefix = format!("bench_{}", uuid::Uuid::now_v7().simple());
    let store = store(settings, &prefix).await?;
    if limited {
        let kind = Noop::SPEC.kind;
        let limits = [
            (format!("rate:{kind}"), "10000000".to_owned()),
            (format!("concurrency:{kind}"), "10000000".to_owned()),
        ];
        store.apply_controls(Queue::Maintenance, 1, &limits).await?;
    }
    let payload = serde_json::to_string(&Noop { enqueued_us: 0 })?;
    for chunk in (0..drain_jobs()).collect::<Vec<_>>().chunks(500) {
        let jobs: Vec<NewJob> =
            chunk.iter().map(|_| NewJob::plain(Noop::SPEC.kind, payload.clone(), 3)).collect();
        store.push(Queue::Maintenance, &jobs).await?;
    }
    let exe = std::env::current_exe()?;
    let redis_before = crate::baseline::redis_cpu(&mut store.connection()).await?;
    let started = Instant::now();
    let mut children = Vec::new();
    for _ in 0..workers {
        children.push(
            tokio::process::Command::new(&exe)
                .args(["drain-worker", &prefix, &concurrency.to_string()])
                .envs(settings.redis_cluster_nodes.iter().map(|nodes| {
                    ("TASKLANE_REDIS_CLUSTER_NODES", nodes.expose_secret().to_owned())
                }))
                .env("TASKLANE_QUEUE_SHARDS", settings.queue_shards.to_string())
                .stdout(Stdio::null())
                .kill_on_drop(true)
                .spawn()?,
        );
    }
    let done_keys: Vec<String> =
        store.shards().all().map(|s| store.key_in(Queue::Maintenance, s, "done")).collect();
    let mut conn = store.connection();
    loop {
        let mut done = 0usize;
        for key in &done_keys {
            let count: usize = redis::cmd("ZCARD").arg(key).query_async(&mut conn).await?;
            done += count;
        }
        if done >= drain_jobs() {
            break;
        }
        anyhow::ensure!(started.elapsed() < Duration::from_secs(300), "drain did not finish");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let rate = drain_jobs() as f64 / started.elapsed().as_secs_f64();
    let (redis_s, busiest_node_s) =
        crate::baseline::redis_cpu_since(&mut store.connection(), &redis_before).await?;
    for mut child in children {
        let _ = child.kill().await;
    }
    Ok(crate::baseline::Drained { rate, redis_s, busiest_node_s })
}

async fn noop(_job: Noop) -> Result<(), BoxDynError> {
    Ok(())
}

async fn noop_delete(_job: DeleteObjects) -> Result<(), BoxDynError> {
    Ok(())
}

/// Rates of one drain through the outbox.
struct OutboxDrain {
    /// Until every job is done in Redis.
    redis_rate: f64,
    /// Until every job's record is finished in Postgres (the same as `redis_rate` when
    /// outcomes are not recorded).
    records_rate: f64,
}

/// The whole spine on one process: rows committed to the outbox (one fan-out statement), the
/// relay pushing them, a worker draining them at full concurrency, with or without the
/// outcome recorder writing each job's end to its record. A declared kind (an empty
/// `delete_objects`) with a no-op handler, since the relay quarantines undeclared kinds.
async fn outbox_drain(settings: &Settings, records: bool) -> anyhow::Result<OutboxDrain> {
    let jobs = drain_jobs() / 2;
    let prefix = format!("bench_{}", uuid::Uuid::now_v7().simple());
    let db = sqlx::postgres::PgPoolOptions::new()
        .max_connections(8)
        .connect(settings.database_url.expose_secret())
        .await?;
    tasklane_shared::db::migrate(&db).await?;
    sqlx::raw_sql("truncate outbox").execute(&db).await?;
    let mut store = store(settings, &prefix).await?;
    if records {
        let (recorder, _task) = OutcomeRecorder::spawn(db.clone());
        store = store.with_outcomes(recorder);
    }
    let rows: Vec<(uuid::Uuid, DeleteObjects)> =
        (0..jobs).map(|_| (uuid::Uuid::now_v7(), DeleteObjects { keys: Vec::new() })).collect();
    outbox::fan_out(&mut *db.acquire().await?, &rows).await?;

    let started = Instant::now();
    let relay = Relay::new(db.clone(), store.clone(), Duration::from_millis(100));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let relay_task = tokio::spawn(relay.run(async {
        let _ = stopped.await;
    }));
    let (st, set) = (store.clone(), settings.clone());
    let monitor = Monitor::new().register(move |_| {
        let blocking = tasklane_shared::redis::connect_blocking(&set).expect("redis url");
        WorkerBuilder::new("bench-outbox")
            .backend(
                RedisBackend::<DeleteObjects>::new(
                    st.clone(),
                    blocking,
                    "bench-outbox".into(),
                    HeldClaims::default(),
                )
                .with_prefetch(CONCURRENCY),
            )
            .concurrency(CONCURRENCY)
            .build(noop_delete)
    });
    let (monitor_stop, monitor_stopped) = tokio::sync::oneshot::channel::<()>();
    let monitor_task = tokio::spawn(monitor.run_with_signal(async {
        let _ = monitor_stopped.await;
        Ok(())
    }));
    let done_key = store.key(Queue::Uploads, "done");
    let mut conn = store.connection();
    loop {
        let done: usize = redis::cmd("ZCARD").arg(&done_key).query_async(&mut conn).await?;
        if done >= jobs {
            break;
        }
        anyhow::ensure!(started.elapsed() < Duration::from_secs(300), "drain did not finish");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let redis_rate = jobs as f64 / started.elapsed().as_secs_f64();
    let mut records_rate = redis_rate;
    if records {
        loop {
            let open: i64 =
                sqlx::query_scalar("select count(*) from outbox where finished_at is null")
                    .fetch_one(&db)
                    .await?;
            if open == 0 {
                break;
            }
            anyhow::ensure!(started.elapsed() < Duration::from_secs(300), "records did not finish");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        records_rate = jobs as f64 / started.elapsed().as_secs_f64();
    }
    let _ = stop.send(());
    let _ = monitor_stop.send(());
    let _ = relay_task.await;
    let _ = monitor_task.await;
    sqlx::raw_sql("truncate outbox").execute(&db).await?;
    Ok(OutboxDrain { redis_rate, records_rate })
}

/// One drain worker process: the real backend and apalis runtime, a no-op handler.
pub async fn drain_worker(args: &[String]) -> anyhow::Result<()> {
    let settings = settings()?;
    let prefix = args.first().ok_or_else(|| anyhow::anyhow!("prefix"))?.clone();
    let concurrency: usize = args.get(1).and_then(|n| n.parse().ok()).unwrap_or(CONCURRENCY);
    let store = store(&settings, &prefix).await?;
    let name = format!("bench-{}", std::process::id());
    let monitor = Monitor::new().register(move |_| {
        let blocking = tasklane_shared::redis::connect_blocking(&settings).expect("redis url");
        WorkerBuilder::new(name.clone())
            .backend(
                RedisBackend::<Noop>::new(
                    store.clone(),
                    blocking,
                    name.clone(),
                    HeldClaims::default(),
                )
                .with_prefetch(concurrency),
            )
            .concurrency(concurrency)
            .build(noop)
    });
    monitor.run().await?;
    Ok(())
}

async fn record_start(
    job: DeleteObjects,
    latencies: Data<Arc<std::sync::Mutex<Vec<Duration>>>>,
    seen: Data<Arc<AtomicU64>>,
) -> Result<(), BoxDynError> {
    let now = chrono::Utc::now().timestamp_micros();
    // The enqueue time rides in the (otherwise empty) key list.
    let enqueued_us: i64 = job.keys.first().and_then(|t| t.parse().ok()).unwrap_or(now);
    let waited = Duration::from_micros(u64::try_from(now - enqueued_us).unwrap_or(0));
    latencies.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(waited);
    seen.fetch_add(1, Ordering::SeqCst);
    Ok(())
}

/// Enqueue-to-start through the whole spine: a committed outbox row, NOTIFY, the relay, the
/// Redis push, a blocked worker woken by its wake list.
async fn latency(settings: &Settings) -> anyhow::Result<(Duration, Duration)> {
    let prefix = format!("bench_{}", uuid::Uuid::now_v7().simple());
    let store = store(settings, &prefix).await?;
    let db = sqlx::postgres::PgPoolOptions::new()
        .max_connections(4)
        .connect(settings.database_url.expose_secret())
        .await?;
    tasklane_shared::db::migrate(&db).await?;
    let relay = Relay::new(db.clone(), store.clone(), Duration::from_secs(1));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let relay_task = tokio::spawn(relay.run(async {
        let _ = stopped.await;
    }));
    let latencies = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = Arc::new(AtomicU64::new(0));
    let (l, s, st, set) = (latencies.clone(), seen.clone(), store.clone(), settings.clone());
    let monitor = Monitor::new().register(move |_| {
        let blocking = tasklane_shared::redis::connect_blocking(&set).expect("redis url");
        WorkerBuilder::new("bench-latency")
            .backend(RedisBackend::<DeleteObjects>::new(
                st.clone(),
                blocking,
                "bench-latency".into(),
                HeldClaims::default(),
            ))
            .data(l.clone())
            .data(s.clone())
            .build(record_start)
    });
    let (monitor_stop, monitor_stopped) = tokio::sync::oneshot::channel::<()>();
    let monitor_task = tokio::spawn(monitor.run_with_signal(async {
        let _ = monitor_stopped.await;
        Ok(())
    }));
    // Let the worker reach its blocking wait, as a fleet at rest would be.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for _ in 0..LATENCY_JOBS {
        let mut tx = db.begin().await?;
        let now = chrono::Utc::now().timestamp_micros();
        outbox::enqueue(&mut tx, &DeleteObjects { keys: vec![now.to_string()] }, None).await?;
        tx.commit().await?;
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while seen.load(Ordering::SeqCst) < LATENCY_JOBS as u64 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let _ = stop.send(());
    let _ = monitor_stop.send(());
    let _ = relay_task.await;
    let _ = monitor_task.await;
    let mut sorted = latencies.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
    sorted.sort();
    anyhow::ensure!(
        sorted.len() == LATENCY_JOBS,
        "only {} of {LATENCY_JOBS} jobs started",
        sorted.len()
    );
    let _ = store;
    Ok((percentile(&sorted, 50.0), percentile(&sorted, 99.0)))
}
