//! The auth benchmark: argon2 in this process as the baseline, and the real `tasklane-api`
//! release binary in a process of its own under login load, with `/health/live` timed
//! from this process as a health checker would (a checker sharing the API's runtime would
//! time its own queueing behind the login clients too).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tasklane_api::auth::password::PasswordHasher;
use tasklane_shared::config::Settings;

use crate::api_process::ApiProcess;
use crate::{ms, percentile};

const RUN: Duration = Duration::from_secs(10);
const PASSWORD: &str = "correct horse battery staple";

pub async fn run() -> anyhow::Result<()> {
    let mut settings = Settings::from_env()?;
    settings.redis_prefix = format!("bench_{}", uuid::Uuid::now_v7().simple());
    let db = sqlx::postgres::PgPoolOptions::new()
        .connect(secrecy::ExposeSecret::expose_secret(&settings.database_url))
        .await?;
    tasklane_shared::db::migrate(&db).await?;
    let cores = std::thread::available_parallelism().map(usize::from).unwrap_or(2);
    println!(
        "# auth benchmark ({cores} cores, argon2id m={} KiB t={} p={}, {}s per phase)",
        settings.auth.argon2_memory_kib,
        settings.auth.argon2_iterations,
        settings.auth.argon2_parallelism,
        RUN.as_secs()
    );

    // Baseline: raw argon2 verifications/s with the API's own hasher (same pool, same permits).
    let hasher = PasswordHasher::new(&settings.auth)?;
    let hash = hasher.hash(PASSWORD.into()).await?;
    let verified = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..cores * 2 {
        let (hasher, hash, verified) = (hasher.clone(), hash.clone(), verified.clone());
        tasks.push(tokio::spawn(async move {
            while started.elapsed() < RUN {
                if hasher.verify(PASSWORD.into(), Some(hash.clone())).await.unwrap_or(false) {
                    verified.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for task in tasks {
        task.await?;
    }
    let verify_rate = verified.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64();
    println!("argon2 verifications:        {verify_rate:>8.1} /s  (baseline)");

    let api =
        ApiProcess::start(&[("TASKLANE_REDIS_PREFIX", settings.redis_prefix.clone())]).await?;
    let base = api.base.clone();
    let client = reqwest::Client::new();
    // One account per login client, so the 5-failure limit never applies and every login
    // succeeds (a login is the full path: JSON, rate-limit check, query, verify, tokens).
    let mut accounts = Vec::new();
    for i in 0..cores * 4 {
        let email = format!("bench{i}_{}@example.test", uuid::Uuid::now_v7().simple());
        let resp = client
            .post(format!("{base}/api/v1/auth/register"))
            .json(&serde_json::json!({ "email": email, "password": PASSWORD }))
            .send()
            .await?;
        anyhow::ensure!(resp.status() == 201, "register failed: {}", resp.status());
        accounts.push(email);
    }

    let idle = health_latencies(&client, &base, 2_000, None).await?;
    let p99_idle = percentile(&idle, 99.0);

    let logins = Arc::new(AtomicU64::new(0));
    let loading = Arc::new(AtomicBool::new(true));
    let started = Instant::now();
    let mut load = Vec::new();
    for email in accounts {
        let (client, base, logins, loading) =
            (client.clone(), base.clone(), logins.clone(), loading.clone());
        load.push(tokio::spawn(async move {
            while loading.load(Ordering::Relaxed) {
                let ok = client
                    .post(format!("{base}/api/v1/auth/login"))
                    .json(&serde_json::json!({ "email": email, "password": PASSWORD }))
                    .send()
                    .await
                    .is_ok_and(|r| r.status() == 200);
                if ok {
                    logins.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    let busy = health_latencies(&client, &base, usize::MAX, Some(RUN)).await?;
    loading.store(false, Ordering::Relaxed);
    let elapsed = started.elapsed();
    for task in load {
        task.await?;
    }
    let login_rate = logins.load(Ordering::Relaxed) as f64 / elapsed.as_secs_f64();
    let p99_busy = percentile(&busy, 99.0);
    println!("logins (HTTP, full path):    {login_rate:>8.1} /s");
    println!("/health/live p99 idle:       {}", ms(p99_idle));
    println!("/health/live p99 under load: {}  ({} requests)", ms(p99_busy), busy.len());
    println!();
    println!(
        "ratio logins / argon2 verifications: {:.2}  (target >= 0.85)",
        login_rate / verify_rate
    );
    println!(
        "ratio health p99 loaded / idle:      {:.2}  (target <= 2)",
        p99_busy.as_secs_f64() / p99_idle.as_secs_f64()
    );
    Ok(())
}

/// Sequential `/health/live` latencies: `count` requests, or as many as fit in `for_time`.
async fn health_latencies(
    client: &reqwest::Client,
    base: &str,
    count: usize,
    for_time: Option<Duration>,
) -> anyhow::Result<Vec<Duration>> {
    let started = Instant::now();
    let mut latencies = Vec::new();
    while latencies.len() < count && for_time.is_none_or(|t| started.elapsed() < t) {
        let t = Instant::now();
        let resp = client.get(format!("{base}/health/live")).send().await?;
        anyhow::ensure!(resp.status() == 200);
        resp.bytes().await?;
        latencies.push(t.elapsed());
        // Paced like a health checker, not a load generator.
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    latencies.sort();
    Ok(latencies)
}
