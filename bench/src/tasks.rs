//! The tasks benchmark: the hot paths of the real `tasklane-api` release binary, loaded
//! from outside by wrk, beside a bare Poem hello-world handler served by this process under
//! the same load, alternating round by round, so every ratio compares figures taken
//! moments apart on the same (shared, noisy) cores:
//!
//! - `GET /me` (the account cache), `GET /tasks/{id}` and the first page of `GET /tasks`
//!   on cache hits, against hello;
//! - `POST /tasks` against its own floor: the statement the task writer runs, driven by
//!   pgbench on the same database at the same concurrency (32 clients, one task per
//!   statement), and as the API itself sends it (its mean batch, from its metrics, at the
//!   writer's concurrency);
//! - the list p50/p99 of a user with 10,000 tasks (cache misses).
//!
//! Each figure is also given as the API process's CPU time per request, which other work
//! on the machine disturbs far less than a rate.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use poem::listener::{Acceptor, Listener, TcpListener};
use tasklane_shared::config::Settings;

use crate::api_process::ApiProcess;
use crate::{ms, percentile, pgbench, wrk};

const RUN: Duration = Duration::from_secs(8);
const CLIENTS: usize = 32;
const LIST_USER_TASKS: usize = 10_000;
/// One wrk or pgbench run.
const PHASE: Duration = Duration::from_secs(5);
/// Rounds of every phase, alternating; ratios are medians over the rounds
/// (`TASKLANE_BENCH_ROUNDS` for a quicker look).
const ROUNDS: usize = 3;
/// Tasks of the reader, so the first page of their list is a full page.
const READER_TASKS: usize = 20;

/// One phase of a round: what is loaded, and by what.
struct Phase {
    name: &'static str,
    driver: Driver,
}

enum Driver {
    /// wrk against the URL, with a Lua script for the method, headers and body.
    Wrk { url: String, script: Option<PathBuf> },
    /// pgbench running the writer's statement: `clients` at once, one task per statement,
    /// or with the API's own batches (the mean batch of the last `POST /tasks` phase).
    Pgbench { clients: usize, api_batches: bool },
}

/// The ratios printed: phase, against phase, target.
const RATIOS: [(usize, usize, Option<f64>); 5] =
    [(1, 0, Some(0.8)), (2, 0, Some(0.5)), (3, 0, Some(0.4)), (4, 5, Some(0.7)), (4, 6, None)];
/// Statements the task writer runs at once (`WRITERS` in `api/src/services/tasks/writer.rs`).
const WRITERS: usize = 2;

pub async fn run() -> anyhow::Result<()> {
    let settings = Settings::from_env()?;
    let rounds = std::env::var("TASKLANE_BENCH_ROUNDS").ok().and_then(|r| r.parse().ok());
    let rounds = rounds.unwrap_or(ROUNDS).max(1);
    let database_url = secrecy::ExposeSecret::expose_secret(&settings.database_url).to_owned();
    let db = sqlx::postgres::PgPoolOptions::new().connect(&database_url).await?;
    tasklane_shared::db::migrate(&db).await?;
    println!(
        "# tasks benchmark: tasklane-api (release) from outside with wrk, {CLIENTS} connections, \
         {}s per run, {rounds} alternating rounds",
        PHASE.as_secs()
    );

    let hello = TcpListener::bind("127.0.0.1:0").into_acceptor().await?;
    let hello_addr = hello.local_addr()[0]
        .as_socket_addr()
        .copied()
        .ok_or_else(|| anyhow::anyhow!("no address"))?;
    let hello_app = poem::Route::new().at("/hello", poem::endpoint::make_sync(|_| "hello"));
    tokio::spawn(poem::Server::new_with_acceptor(hello).run(hello_app));

    let prefix = format!("bench_{}", uuid::Uuid::now_v7().simple());
    let api = ApiProcess::start(&[
        ("TASKLANE_REDIS_PREFIX", prefix),
        ("TASKLANE_TASKS_DAILY_QUOTA", (u32::MAX / 2).to_string()),
    ])
    .await?;
    let base = api.base.clone();
    let client = reqwest::Client::new();
    let reader = register(client.clone(), base.clone(), unique("reader")).await?;
    let writer = register(client.clone(), base.clone(), unique("writer")).await?;
    let task_id = reader_tasks(&client, &base, &reader).await?;
    // Warm the caches, and check that what is measured is a hit.
    for path in
        ["/api/v1/me".to_owned(), format!("/api/v1/tasks/{task_id}"), "/api/v1/tasks".into()]
    {
        for _ in 0..2 {
            client.get(format!("{base}{path}")).bearer_auth(&reader).send().await?;
        }
        let resp = client.get(format!("{base}{path}")).bearer_auth(&reader).send().await?;
        let x_cache = resp.headers().get("x-cache").map(|v| v.to_str().unwrap_or("?").to_owned());
        anyhow::ensure!(resp.status() == 200, "{path}: {}", resp.status());
        anyhow::ensure!(x_cache.as_deref().is_none_or(|c| c == "hit"), "{path} is no cache hit");
    }

    let dir =
        std::env::temp_dir().join(format!("tasklane-bench-{}", uuid::Uuid::now_v7().simple()));
    std::fs::create_dir_all(&dir)?;
    let read =
        wrk::script(&dir, "read", "GET", &[("Authorization", &format!("Bearer {reader}"))], None)?;
    let create = wrk::script(
        &dir,
        "create",
        "POST",
        &[("Authorization", &format!("Bearer {writer}")), ("Content-Type", "application/json")],
        Some(r#"{"title": "created by the benchmark", "priority": "high"}"#),
    )?;
    let floor = pgbench::task_insert_script(&db, &dir).await?;
    let wrk = |url: String, script: &PathBuf| Driver::Wrk { url, script: Some(script.clone()) };
    let phases = [
        Phase {
            name: "hello world (bare Poem)",
            driver: Driver::Wrk { url: format!("http://{hello_addr}/hello"), script: None },
        },
        Phase { name: "GET /me", driver: wrk(format!("{base}/api/v1/me"), &read) },
        Phase {
            name: "GET /tasks/{id} (hit)",
            driver: wrk(format!("{base}/api/v1/tasks/{task_id}"), &read),
        },
        Phase {
            name: "GET /tasks first page (hit)",
            driver: wrk(format!("{base}/api/v1/tasks"), &read),
        },
        Phase { name: "POST /tasks", driver: wrk(format!("{base}/api/v1/tasks"), &create) },
        Phase {
            name: "pgbench: 32 clients, 1 task each",
            driver: Driver::Pgbench { clients: CLIENTS, api_batches: false },
        },
        Phase {
            name: "pgbench: the API's batches",
            driver: Driver::Pgbench { clients: WRITERS, api_batches: true },
        },
    ];
    let mut results = vec![Vec::new(); phases.len()];
    let mut batch = 1;
    for round in 1..=rounds {
        for (i, phase) in phases.iter().enumerate() {
            let (rate, note) = match &phase.driver {
                Driver::Pgbench { clients, api_batches } => {
                    let batch = if *api_batches { batch } else { 1 };
                    let rate = pgbench::run(&database_url, &floor, *clients, batch, PHASE).await?;
                    (rate, format!("  {batch} per statement (tasks/s)"))
                }
                Driver::Wrk { url, script } => {
                    let before = (api.cpu_seconds(), batches(&client, &base).await);
                    let load = wrk::run(url, CLIENTS, PHASE, script.as_deref()).await?;
                    anyhow::ensure!(
                        load.errors == 0,
                        "{}: {} failed requests",
                        phase.name,
                        load.errors
                    );
                    let after = (api.cpu_seconds(), batches(&client, &base).await);
                    if let (Some((sum, count)), Some((sum0, count0))) = (after.1, before.1)
                        && count > count0
                    {
                        batch = (((sum - sum0) / (count - count0)).round() as usize).max(1);
                    }
                    let used = after.0.zip(before.0).map(|(after, before)| after - before);
                    let per_request = used.map(|s| s * 1e6 / (load.rate * PHASE.as_secs_f64()));
                    let note = per_request
                        .filter(|_| i > 0)
                        .map_or_else(String::new, |us| format!("  API CPU {us:>5.1} us/request"));
                    (load.rate, note)
                }
            };
            println!("round {round}  {:<34} {rate:>9.0} req/s{note}", phase.name);
            results[i].push(rate);
        }
    }
    let _ = std::fs::remove_dir_all(&dir);

    println!();
    for (i, against, target) in RATIOS {
        let mut ratios: Vec<f64> =
            results[i].iter().zip(&results[against]).map(|(rate, base)| rate / base).collect();
        let each: Vec<String> = ratios.iter().map(|r| format!("{r:.2}")).collect();
        ratios.sort_by(f64::total_cmp);
        let target = target.map_or_else(String::new, |t| format!("; target >= {t}"));
        println!(
            "ratio {:<28} / {:<34} {:.2}  (rounds {}{target})",
            phases[i].name,
            phases[against].name,
            ratios[ratios.len() / 2],
            each.join(", ")
        );
    }
    println!();
    list_latencies(&client, &base).await
}

/// The sum and count of the API's `task_create_batch_size` histogram (tasks per statement).
async fn batches(client: &reqwest::Client, base: &str) -> Option<(f64, f64)> {
    let text = client.get(format!("{base}/metrics")).send().await.ok()?.text().await.ok()?;
    let value = |name: &str| {
        text.lines().find_map(|line| line.strip_prefix(name)?.trim().parse::<f64>().ok())
    };
    Some((value("task_create_batch_size_sum ")?, value("task_create_batch_size_count ")?))
}

fn unique(name: &str) -> String {
    format!("{name}_{}@example.test", uuid::Uuid::now_v7().simple())
}

/// Gives the reader a full first page of tasks; returns the id of one of them.
async fn reader_tasks(client: &reqwest::Client, base: &str, token: &str) -> anyhow::Result<String> {
    let tasks: Vec<serde_json::Value> = (0..READER_TASKS)
        .map(|i| serde_json::json!({ "title": format!("benchmark task {i}"), "tags": ["bench"], "description": "a task the benchmark reads" }))
        .collect();
    let created: serde_json::Value = client
        .post(format!("{base}/api/v1/tasks/bulk"))
        .bearer_auth(token)
        .json(&serde_json::json!({ "tasks": tasks }))
        .send()
        .await?
        .json()
        .await?;
    let id = created["data"][0]["id"].as_str().ok_or_else(|| anyhow::anyhow!("bulk: {created}"))?;
    Ok(id.to_owned())
}

/// A user with 10,000 tasks: the p50 and p99 of list requests with three sorts, through
/// distinct cursors (cache misses).
async fn list_latencies(client: &reqwest::Client, base: &str) -> anyhow::Result<()> {
    let lister = register(client.clone(), base.to_owned(), unique("lister")).await?;
    for chunk in 0..LIST_USER_TASKS / 100 {
        let tasks: Vec<serde_json::Value> = (0..100)
            .map(|i| {
                let priority = ["low", "normal", "high", "urgent"][i % 4];
                let due = format!("2031-{:02}-{:02}T00:00:00Z", 1 + i % 12, 1 + chunk % 28);
                serde_json::json!({ "title": format!("task {chunk}-{i}"), "priority": priority, "due_at": due })
            })
            .collect();
        let resp = client
            .post(format!("{base}/api/v1/tasks/bulk"))
            .bearer_auth(&lister)
            .json(&serde_json::json!({ "tasks": tasks }))
            .send()
            .await?;
        anyhow::ensure!(resp.status() == 201, "bulk failed: {}", resp.status());
    }
    let mut latencies = Vec::new();
    for sort in ["-created_at", "due_at", "-priority,title"] {
        let mut cursor: Option<String> = None;
        for _ in 0..100 {
            let mut url = format!("{base}/api/v1/tasks?limit=50&sort={sort}");
            if let Some(c) = &cursor {
                url.push_str(&format!("&cursor={c}"));
            }
            let started = Instant::now();
            let page: serde_json::Value =
                client.get(url).bearer_auth(&lister).send().await?.json().await?;
            latencies.push(started.elapsed());
            cursor = page["next_cursor"].as_str().map(str::to_owned);
        }
    }
    latencies.sort();
    println!(
        "GET /tasks (10,000-task user, limit 50, 3 sorts, cache misses): p50 {} p99 {}",
        ms(percentile(&latencies, 50.0)),
        ms(percentile(&latencies, 99.0))
    );
    Ok(())
}

/// The API in this process, a registered user and one task of theirs: the base URL, a
/// client, the user's token and the task's id.
async fn serve(settings: Settings) -> anyhow::Result<(String, reqwest::Client, String, String)> {
    let app = tasklane_api::app::Application::build(settings).await?;
    let base = format!("http://{}", app.local_addr());
    tokio::spawn(app.run_until_stopped(std::future::pending()));
    let client = reqwest::Client::new();
    let email = format!("writer_{}@example.test", uuid::Uuid::now_v7().simple());
    let writer = register(client.clone(), base.clone(), email).await?;
    let created: serde_json::Value = client
        .post(format!("{base}/api/v1/tasks"))
        .bearer_auth(&writer)
        .json(&serde_json::json!({ "title": "benchmark task", "tags": ["bench"] }))
        .send()
        .await?
        .json()
        .await?;
    let task_id = created["id"].as_str().unwrap_or_default().to_owned();
    Ok((base, client, writer, task_id))
}

/// Registers `email`; returns its access token.
async fn register(client: reqwest::Client, base: String, email: String) -> anyhow::Result<String> {
    let resp = client
        .post(format!("{base}/api/v1/auth/register"))
        .json(&serde_json::json!({ "email": email, "password": "correct horse battery staple" }))
        .send()
        .await?;
    let session: serde_json::Value = resp.json().await?;
    Ok(session["access_token"].as_str().unwrap_or_default().to_owned())
}

/// Requests/s of `GET /tasks/{id}` from `CLIENTS` concurrent loops.
async fn load_get(client: &reqwest::Client, base: &str, task_id: &str, token: &str) -> f64 {
    let (client, url, token) =
        (client.clone(), format!("{base}/api/v1/tasks/{task_id}"), token.to_owned());
    load(CLIENTS, move || {
        let (client, url, token) = (client.clone(), url.clone(), token.clone());
        async move { client.get(url).bearer_auth(token).send().await.is_ok_and(|r| r.status() == 200) }
    })
    .await
}

/// `GET /tasks/{id}` requests/s of an API in this process started with `settings` (the
/// tracing benchmark runs it once per trace configuration).
pub async fn get_rate(mut settings: Settings) -> anyhow::Result<f64> {
    settings.api_addr = "127.0.0.1:0".parse()?;
    settings.redis_prefix = format!("bench_{}", uuid::Uuid::now_v7().simple());
    let db = sqlx::postgres::PgPoolOptions::new()
        .connect(secrecy::ExposeSecret::expose_secret(&settings.database_url))
        .await?;
    tasklane_shared::db::migrate(&db).await?;
    let (base, client, writer, task_id) = serve(settings).await?;
    Ok(load_get(&client, &base, &task_id, &writer).await)
}

/// Requests/s of `request` from `clients` concurrent loops over `RUN`.
async fn load<F, Fut>(clients: usize, request: F) -> f64
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let done = Arc::new(AtomicU64::new(0));
    let running = Arc::new(AtomicBool::new(true));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (request, done, running) = (request.clone(), done.clone(), running.clone());
        tasks.push(tokio::spawn(async move {
            while running.load(Ordering::Relaxed) {
                if request().await {
                    done.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    tokio::time::sleep(RUN).await;
    running.store(false, Ordering::Relaxed);
    let elapsed = started.elapsed();
    for task in tasks {
        let _ = task.await;
    }
    done.load(Ordering::Relaxed) as f64 / elapsed.as_secs_f64()
}
