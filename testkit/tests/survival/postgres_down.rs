//! F4: Postgres stopped for 60 s under traffic. Requests that need it are answered 503
//! problem+json with `Retry-After`, never 500; when it returns, every request that was
//! answered 2xx has its task, and every registration that succeeded its one email.
//!
//! The outage is a real stop (fast shutdown, as an operator's restart or a failover does):
//! open sessions are cut, new connections refused, and the server that returns is the same
//! data read back from disk. A SIGSTOP would instead test a hung server, which a request
//! could only wait out (its pool connections stay open to a process that never answers).
//! The test gets a server of its own: the shared one serves every other test.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tasklane_testkit::{
    PASSWORD, TestApp, TestPostgres, email_address, signal, unique, wait_until,
};
use tokio::sync::Mutex;

const OUTAGE: Duration = Duration::from_secs(60);
const CLIENTS: usize = 4;

/// What a request was for.
#[derive(Debug, Clone)]
enum Call {
    Register(String),
    CreateTask(String),
}

/// One answer the traffic got.
#[derive(Debug)]
struct Answer {
    call: Call,
    status: u16,
    content_type: String,
    retry_after: Option<String>,
    /// The created task's id, on a 201 to a task creation.
    task: Option<uuid::Uuid>,
    /// A problem's detail, to say what went wrong.
    detail: Option<String>,
}

/// Alternates registrations and task creations until `stop`.
async fn client(
    http: reqwest::Client,
    base: String,
    token: String,
    stop: Arc<AtomicBool>,
    answers: Arc<Mutex<Vec<Answer>>>,
) {
    let mut register = false;
    while !stop.load(Ordering::SeqCst) {
        register = !register;
        let (call, request) = if register {
            let address = email_address();
            let body = serde_json::json!({ "email": address, "password": PASSWORD });
            (Call::Register(address), http.post(format!("{base}/api/v1/auth/register")).json(&body))
        } else {
            let title = unique("outage");
            let body = serde_json::json!({ "title": title });
            let request = http.post(format!("{base}/api/v1/tasks")).bearer_auth(&token).json(&body);
            (Call::CreateTask(title), request)
        };
        let response = request.send().await.expect("the API answers (it never hangs up)");
        let header = |name: &str| {
            response.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_owned)
        };
        let (content_type, retry_after) =
            (header("content-type").unwrap_or_default(), header("retry-after"));
        let status = response.status().as_u16();
        let body: serde_json::Value = response.json().await.unwrap_or_default();
        let task = match call {
            Call::CreateTask(_) if status == 201 => {
                body["id"].as_str().and_then(|id| id.parse().ok())
            }
            _ => None,
        };
        let detail = body["detail"].as_str().map(str::to_owned);
        answers.lock().await.push(Answer { call, status, content_type, retry_after, task, detail });
    }
}

async fn successes(answers: &Mutex<Vec<Answer>>) -> usize {
    answers.lock().await.iter().filter(|a| (200..300).contains(&a.status)).count()
}

#[tokio::test]
async fn postgres_stopped_for_a_minute_under_traffic_costs_503s_never_500s_and_loses_nothing() {
    let mut postgres = TestPostgres::start().await;
    let app = TestApp::spawn_on_postgres(&postgres.url("postgres"), |s| {
        s.tasks_daily_quota = 100_000;
    })
    .await;
    let mut worker = app.worker_process().spawn().unwrap();
    let owner = app.register(&email_address()).await;
    let token = owner["access_token"].as_str().unwrap().to_owned();

    let stop = Arc::new(AtomicBool::new(false));
    let answers = Arc::new(Mutex::new(Vec::new()));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            tokio::spawn(client(
                app.client.clone(),
                app.address.clone(),
                token.clone(),
                stop.clone(),
                answers.clone(),
            ))
        })
        .collect();
    wait_until(Duration::from_secs(30), "traffic flowing", || async {
        (successes(&answers).await >= 20).then_some(())
    })
    .await;

    postgres.stop().await;
    let outage = Instant::now();
    let before_outage = answers.lock().await.len();
    // The outage lasts its minute whatever happens; traffic keeps coming meanwhile.
    tokio::time::sleep_until((outage + OUTAGE).into()).await;
    let during_outage: Vec<u16> =
        answers.lock().await[before_outage..].iter().map(|a| a.status).collect();
    postgres.start_again().await;
    let restarted = successes(&answers).await;
    wait_until(Duration::from_secs(60), "traffic flowing again", || async {
        (successes(&answers).await >= restarted + 20).then_some(())
    })
    .await;
    stop.store(true, Ordering::SeqCst);
    for client in clients {
        client.await.unwrap();
    }

    let answers = answers.lock().await;
    assert!(
        during_outage.iter().filter(|s| **s == 503).count() >= CLIENTS,
        "the outage was felt: {during_outage:?}"
    );
    for answer in answers.iter() {
        match answer.status {
            200..=299 => {}
            503 => {
                assert_eq!(answer.content_type, "application/problem+json", "{answer:?}");
                let retry = answer.retry_after.as_deref().and_then(|v| v.parse::<u32>().ok());
                assert!(retry.is_some_and(|s| s > 0), "503 with Retry-After: {answer:?}");
            }
            _ => panic!(
                "neither a success nor a 503 ({}): {answer:?}",
                answer.detail.as_deref().unwrap_or("no detail")
            ),
        }
    }

    let count = |status: u16| answers.iter().filter(|a| a.status == status).count();
    eprintln!(
        "F4: {} answers ({} during the {OUTAGE:?} outage): {} created, {} unavailable",
        answers.len(),
        during_outage.len(),
        count(201),
        count(503)
    );

    // Nothing that was answered 2xx is lost: its task is there, its email arrives once.
    let mut registered = Vec::new();
    for answer in answers.iter().filter(|a| (200..300).contains(&a.status)) {
        match &answer.call {
            Call::CreateTask(title) => {
                let id = answer.task.expect("a created task has an id");
                let stored: Option<String> =
                    sqlx::query_scalar("select title from tasks where id = $1")
                        .bind(id)
                        .fetch_optional(&app.db)
                        .await
                        .unwrap();
                assert_eq!(stored.as_deref(), Some(title.as_str()), "task {id} kept");
            }
            Call::Register(address) => registered.push(address.clone()),
        }
    }
    for address in &registered {
        app.wait_for_emails(address, 1, Duration::from_secs(60)).await;
    }
    wait_until(Duration::from_secs(30), "the outbox drained", || async {
        (app.outbox_len().await == 0).then_some(())
    })
    .await;
    for address in &registered {
        assert_eq!(app.emails_to(address).await.len(), 1, "exactly one email to {address}");
    }
    assert!(worker.try_wait().unwrap().is_none(), "the worker rode out the outage");
    signal(&worker, "TERM");
    worker.wait().await.unwrap();
}

/// The operations with a body of their own bad-request handling (task create, bulk, patch,
/// attachment create) answer a failed token check as every operation does: poem-openapi
/// hands the check's error to that handler, which used to turn it into a 400.
#[tokio::test]
async fn write_operations_answer_a_bad_token_401_not_400() {
    let app = TestApp::spawn().await;
    let task = uuid::Uuid::now_v7();
    for (method, path, body) in [
        (reqwest::Method::POST, "/api/v1/tasks".to_owned(), serde_json::json!({ "title": "t" })),
        (
            reqwest::Method::POST,
            "/api/v1/tasks/bulk".to_owned(),
            serde_json::json!({ "tasks": [{ "title": "t" }] }),
        ),
        (
            reqwest::Method::PATCH,
            format!("/api/v1/tasks/{task}"),
            serde_json::json!({ "title": "t" }),
        ),
        (
            reqwest::Method::POST,
            format!("/api/v1/tasks/{task}/attachments"),
            serde_json::json!({ "filename": "a.txt", "content_type": "text/plain", "size": 1 }),
        ),
    ] {
        let response = app
            .client
            .request(method.clone(), app.url(&path))
            .bearer_auth("not-a-token")
            .header("If-Match", "\"1\"")
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 401, "{method} {path}");
        assert_eq!(response.headers()["www-authenticate"], "Bearer", "{method} {path}");
        assert_eq!(response.headers()["content-type"], "application/problem+json");
    }
}
