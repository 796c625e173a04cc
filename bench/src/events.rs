//! The events benchmark: 1,000 SSE clients (one user each) on one API process (the real
//! `tasklane-api` binary), events published through Redis as the relay publishes them.
//! Prints publish-to-receive latency (p50, p99) and the API's resident memory per
//! connection, against its resident memory before any connection.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;
use futures::StreamExt;
use tasklane_api::auth::Role;
use tasklane_shared::config::Settings;
use tasklane_shared::events::Recorded;
use tasklane_shared::redis::Keys;

use crate::{ms, percentile};

const CLIENTS: usize = 1_000;
const ROUNDS: usize = 20;

pub async fn run() -> anyhow::Result<()> {
    let mut settings = Settings::from_env()?;
    settings.redis_prefix = format!("bench_{}", uuid::Uuid::now_v7().simple());
    let db = sqlx::postgres::PgPoolOptions::new()
        .connect(secrecy::ExposeSecret::expose_secret(&settings.database_url))
        .await?;
    tasklane_shared::db::migrate(&db).await?;
    println!("# events benchmark ({CLIENTS} SSE clients on one API process, {ROUNDS} events each)");

    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let mut api =
        tokio::process::Command::new(std::env::current_exe()?.with_file_name("tasklane-api"))
            .env("TASKLANE_REDIS_PREFIX", &settings.redis_prefix)
            .env("TASKLANE_API_ADDR", format!("127.0.0.1:{port}"))
            .kill_on_drop(true)
            .spawn()?;
    let pid = api.id().ok_or_else(|| anyhow::anyhow!("API exited"))?;
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::builder().pool_max_idle_per_host(0).build()?;
    let started = Instant::now();
    while client.get(format!("{base}/health/live")).send().await.is_err() {
        anyhow::ensure!(started.elapsed() < Duration::from_secs(30), "the API did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let issuer = tasklane_api::auth::tokens::TokenIssuer::new(&settings);
    let mut users = Vec::with_capacity(CLIENTS);
    for i in 0..CLIENTS {
        let id = uuid::Uuid::now_v7();
        sqlx::query("insert into users (id, email, password_hash) values ($1, $2, 'x')")
            .bind(id)
            .bind(format!("sse{i}_{}@example.test", settings.redis_prefix))
            .execute(&db)
            .await?;
        users.push((id, issuer.issue(id, Role::User, uuid::Uuid::now_v7())?));
    }
    let idle_kib = rss_kib(pid)?;

    let latencies = Arc::new(Mutex::new(Vec::with_capacity(CLIENTS * ROUNDS)));
    let (connected_tx, mut connected_rx) = tokio::sync::mpsc::channel(CLIENTS);
    for (_, token) in &users {
        let response =
            client.get(format!("{base}/api/v1/events")).bearer_auth(token).send().await?;
        anyhow::ensure!(response.status() == 200, "stream refused: {}", response.status());
        let (latencies, connected) = (latencies.clone(), connected_tx.clone());
        tokio::spawn(async move {
            let _ = connected.send(()).await;
            let mut body = response.bytes_stream();
            let mut buffer = String::new();
            let mut received = 0;
            while let Some(Ok(chunk)) = body.next().await {
                buffer.push_str(&String::from_utf8_lossy(&chunk));
                while let Some(end) = buffer.find("\n\n") {
                    let block: String = buffer.drain(..end + 2).collect();
                    let Some(data) = block.lines().find_map(|line| line.strip_prefix("data: "))
                    else {
                        continue;
                    };
                    let Ok(event) = serde_json::from_str::<serde_json::Value>(data) else {
                        continue;
                    };
                    let Some(at) = event["at"]
                        .as_str()
                        .and_then(|at| chrono::DateTime::parse_from_rfc3339(at).ok())
                    else {
                        continue;
                    };
                    let latency =
                        (Utc::now() - at.with_timezone(&Utc)).to_std().unwrap_or_default();
                    latencies
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .push(latency);
                    received += 1;
                    if received == ROUNDS {
                        return;
                    }
                }
            }
        });
    }
    for _ in 0..CLIENTS {
        connected_rx.recv().await;
    }
    let connected_kib = rss_kib(pid)?;

    let mut redis = tasklane_shared::redis::connect(&settings)?;
    let keys = Keys::new(settings.redis_prefix.clone());
    for round in 0..ROUNDS {
        for (user, _) in &users {
            let recorded = Recorded {
                user_id: *user,
                at: Utc::now(),
                data: serde_json::json!({ "task_id": round }),
            };
            tasklane_shared::events::publish(&mut redis, &keys, "task.deleted", &recorded).await?;
        }
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while latencies.lock().unwrap_or_else(std::sync::PoisonError::into_inner).len()
        < CLIENTS * ROUNDS
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut all = latencies.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
    all.sort();
    let peak_kib = rss_kib(pid)?;
    api.kill().await?;

    println!(
        "events received                                    {} of {}",
        all.len(),
        CLIENTS * ROUNDS
    );
    println!("publish -> receive p50                             {}", ms(percentile(&all, 50.0)));
    println!("publish -> receive p99                             {}", ms(percentile(&all, 99.0)));
    println!(
        "API RSS before connections (baseline)              {:.1} MiB",
        idle_kib as f64 / 1024.0
    );
    println!(
        "API RSS with {CLIENTS} connections                     {:.1} MiB (after the events: {:.1} MiB)",
        connected_kib as f64 / 1024.0,
        peak_kib as f64 / 1024.0
    );
    println!(
        "memory per connection                              {:.1} KiB",
        (connected_kib.saturating_sub(idle_kib)) as f64 / CLIENTS as f64
    );
    Ok(())
}

/// The process's resident memory in KiB (`VmRSS`).
fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no VmRSS for {pid}"))
}
