//! The tasks benchmark: the API in this process beside a bare Poem hello-world handler,
//! loaded by the same client, so the ratios compare Tasklane's work with Poem's floor.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use poem::listener::{Acceptor, Listener, TcpListener};
use tasklane_shared::config::Settings;

use crate::{ms, percentile};

const RUN: Duration = Duration::from_secs(8);
const CLIENTS: usize = 32;
const LIST_USER_TASKS: usize = 10_000;

pub async fn run() -> anyhow::Result<()> {
    let mut settings = Settings::from_env()?;
    settings.api_addr = "127.0.0.1:0".parse()?;
    settings.redis_prefix = format!("bench_{}", uuid::Uuid::now_v7().simple());
    settings.tasks_daily_quota = u32::MAX / 2;
    let db = sqlx::postgres::PgPoolOptions::new()
        .connect(secrecy::ExposeSecret::expose_secret(&settings.database_url))
        .await?;
    tasklane_shared::db::migrate(&db).await?;
    println!("# tasks benchmark ({CLIENTS} concurrent clients, {}s per phase)", RUN.as_secs());

    let hello = TcpListener::bind("127.0.0.1:0").into_acceptor().await?;
    let hello_addr = hello.local_addr()[0]
        .as_socket_addr()
        .copied()
        .ok_or_else(|| anyhow::anyhow!("no address"))?;
    let hello_app = poem::Route::new().at("/hello", poem::endpoint::make_sync(|_| "hello"));
    tokio::spawn(poem::Server::new_with_acceptor(hello).run(hello_app));

    let (base, client, writer, task_id) = serve(settings).await?;
    let token = |email: String| register(client.clone(), base.clone(), email);

    let hello_rate = load(CLIENTS, {
        let (client, url) = (client.clone(), format!("http://{hello_addr}/hello"));
        move || {
            let (client, url) = (client.clone(), url.clone());
            async move { client.get(url).send().await.is_ok_and(|r| r.status() == 200) }
        }
    })
    .await;
    println!("hello world (bare Poem):   {hello_rate:>9.0} req/s  (baseline)");
    let get_rate = load_get(&client, &base, &task_id, &writer).await;
    println!("GET /tasks/{{id}}:           {get_rate:>9.0} req/s");
    let post_rate = load(CLIENTS, {
        let (client, url, token) = (client.clone(), format!("{base}/api/v1/tasks"), writer.clone());
        move || {
            let (client, url, token) = (client.clone(), url.clone(), token.clone());
            async move {
                client
                    .post(url)
                    .bearer_auth(token)
                    .json(&serde_json::json!({ "title": "created by the benchmark", "priority": "high" }))
                    .send()
                    .await
                    .is_ok_and(|r| r.status() == 201)
            }
        }
    })
    .await;
    println!("POST /tasks:               {post_rate:>9.0} req/s");

    // A user with 10,000 tasks: the p99 of list requests with the default sort and a filter,
    // through distinct cursors (cache misses).
    let lister = token(format!("lister_{}@example.test", uuid::Uuid::now_v7().simple())).await?;
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
    println!();
    println!("ratio GET /tasks/{{id}} / hello: {:.2}  (target >= 0.35)", get_rate / hello_rate);
    println!("ratio POST /tasks / hello:     {:.2}  (target >= 0.2)", post_rate / hello_rate);
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
