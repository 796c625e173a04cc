//! The scaling benchmark (SPEC section 12): where a drain's time goes, so the scaling on a
//! machine with more cores can be estimated. A drain of one queue on one Redis and on the
//! Redis Cluster `scripts/bench` starts, with the queue on one hash tag (so one master) and
//! spread over 3 (`TASKLANE_QUEUE_SHARDS=3`, one shard per master), each as a ratio to
//! `redis-benchmark -t lpush` against one node; then drains with 1, 2 and 4 worker processes;
//! each with the CPU time Redis and the worker processes spent per job.

use secrecy::{ExposeSecret, SecretString};
use tasklane_shared::config::Settings;

use crate::baseline::{children_cpu, redis_benchmark_lpush};
use crate::queue::{CONCURRENCY, drain_costed, drain_jobs, settings};

/// One drain and what it cost.
struct Measured {
    rate: f64,
    /// Redis CPU (every node of a cluster, replicas too) per job drained, in µs.
    redis_us: f64,
    /// The busiest Redis node's CPU per job, in µs: with a core per node, the drain's
    /// ceiling is one second of it.
    busiest_us: f64,
    /// The worker processes' CPU per job, in µs.
    worker_us: f64,
}

pub async fn run() -> anyhow::Result<()> {
    let settings = settings()?;
    let url = url::Url::parse(settings.redis_url.expose_secret())?;
    let jobs = drain_jobs();
    println!(
        "# scaling benchmark ({jobs} no-op jobs per drain, {CONCURRENCY} concurrent per worker process)"
    );
    let lpush = redis_benchmark_lpush(&url).await?;
    println!("redis-benchmark -t lpush, one node:   {lpush:>10.0} ops/s  (baseline)");

    let single = measured(&settings, 1, jobs).await?;
    print("drain, one Redis, 1 worker", &single);
    let mut cluster = Vec::new();
    if let Ok(nodes) = std::env::var("TASKLANE_BENCH_CLUSTER_NODES") {
        for (shards, workers) in [(1, 1), (3, 1), (3, 2)] {
            let mut on_cluster = settings.clone();
            on_cluster.redis_cluster_nodes = Some(SecretString::from(nodes.clone()));
            on_cluster.queue_shards = shards;
            let measured = measured(&on_cluster, workers, jobs).await?;
            let what = format!("cluster, {shards} shard(s), {workers} worker(s)");
            print(&format!("drain, {what}"), &measured);
            cluster.push((what, measured));
        }
    }
    let mut per_workers = Vec::new();
    for workers in [1, 2, 4] {
        let measured = measured(&settings, workers, jobs).await?;
        print(&format!("drain, one Redis, {workers} worker(s)"), &measured);
        per_workers.push((workers, measured));
    }
    println!();
    println!("ratio drain one Redis / lpush: {:.2}", single.rate / lpush);
    for (what, measured) in &cluster {
        println!("ratio drain {what} / lpush: {:.2}", measured.rate / lpush);
    }
    for (workers, measured) in &per_workers {
        println!(
            "{workers} worker(s): {:.0} jobs/s per worker process",
            measured.rate / *workers as f64
        );
    }
    // One Redis runs scripts on one thread: its ceiling is one core's worth of its CPU per
    // job; the workers' share needs the remaining cores.
    println!(
        "ceiling of one Redis core at {:.1} µs/job: {:.0} jobs/s; worker cores needed there at {:.1} µs/job: {:.1}",
        single.redis_us,
        1e6 / single.redis_us,
        single.worker_us,
        (1e6 / single.redis_us) * single.worker_us / 1e6
    );
    Ok(())
}

fn print(what: &str, measured: &Measured) {
    println!(
        "{what:<44} {:>7.0} jobs/s  (Redis CPU {:.1} µs/job, busiest node {:.1}, worker CPU {:.1}; ceiling with a core per node {:.0} jobs/s)",
        measured.rate,
        measured.redis_us,
        measured.busiest_us,
        measured.worker_us,
        1e6 / measured.busiest_us
    );
}

async fn measured(settings: &Settings, workers: usize, jobs: usize) -> anyhow::Result<Measured> {
    let workers_before = children_cpu()?;
    let drained = drain_costed(settings, workers, CONCURRENCY, false).await?;
    // The worker processes were killed and reaped: their CPU is in this process' children's.
    let worker_s = children_cpu()? - workers_before;
    let per_job = |seconds: f64| seconds * 1e6 / jobs as f64;
    Ok(Measured {
        rate: drained.rate,
        redis_us: per_job(drained.redis_s),
        busiest_us: per_job(drained.busiest_node_s),
        worker_us: per_job(worker_s),
    })
}
