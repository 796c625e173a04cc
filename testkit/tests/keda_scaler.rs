//! The KEDA scaler of `deploy/kubernetes/` reads what the workers export (SPEC section 12):
//! its Prometheus queries, taken from the ScaledObject as written, run against a real
//! Prometheus scraping a real worker process, and measure the backlog Redis holds: the jobs
//! waiting, each counted once, and the age of the oldest; a paused queue's jobs leave both.

// Test helpers fail loudly: an unwrap here is an assertion.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;
use tasklane_shared::domain::jobs::JobState;
use tasklane_shared::jobs::Queue;
use tasklane_testkit::jobs::{enqueue_committed, notice_email};
use tasklane_testkit::prometheus::TestPrometheus;
use tasklane_testkit::{TestApp, email_address, free_port, wait_until};

const WAIT: Duration = Duration::from_secs(60);
const SCALED_OBJECT: &str =
    concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/kubernetes/worker-scaledobject.yaml");

/// Each Prometheus trigger of the ScaledObject: its name and query.
fn scaler_queries() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(SCALED_OBJECT).unwrap();
    let scaled: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
    scaled["spec"]["triggers"]
        .as_sequence()
        .unwrap()
        .iter()
        .filter(|trigger| trigger["type"] == "prometheus")
        .map(|trigger| {
            let name = trigger["name"].as_str().unwrap().to_owned();
            (name, trigger["metadata"]["query"].as_str().unwrap().to_owned())
        })
        .collect()
}

async fn admin_post(app: &TestApp, path: &str, token: &str) {
    let resp = app.post(path, &json!({}), Some(token)).await;
    assert_eq!(resp.status(), StatusCode::OK, "{path}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_scalers_queries_read_the_backlog_the_workers_export() {
    let queries = scaler_queries();
    let query = |name: &str| {
        queries.iter().find(|(n, _)| n == name).map(|(_, q)| q.clone()).unwrap_or_else(|| {
            panic!("no trigger {name} in {SCALED_OBJECT}");
        })
    };
    let (pending, oldest) = (query("pending-jobs"), query("oldest-pending-age"));
    assert_eq!(queries.len(), 2, "a new trigger needs its own check here: {queries:?}");

    let (app, token) = TestApp::spawn_admin(|_| {}).await;
    let store = app.spawn_store();
    // A paused kind keeps its jobs waiting in an unpaused queue: they are backlog.
    admin_post(&app, "/api/v1/admin/kinds/send_email/pause", &token).await;
    // Two workers, both scraped: each reports the whole backlog (read from Redis).
    let ports = [free_port(), free_port()];
    let _workers: Vec<_> = ports
        .iter()
        .map(|port| {
            let addr = format!("127.0.0.1:{port}");
            app.worker_process().env("TASKLANE_WORKER_ADDR", addr).spawn().unwrap()
        })
        .collect();
    for _ in 0..3 {
        enqueue_committed(&app, &notice_email(&email_address())).await;
    }
    wait_until(WAIT, "3 emails pending in Redis", || async {
        let depth = store.depth(Queue::Emails).await.ok()?;
        (depth.of(JobState::Pending) == 3).then_some(())
    })
    .await;

    let [first, second] = ports;
    let prometheus = TestPrometheus::start(&format!(
        "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\n\
         scrape_configs:\n\
         - job_name: tasklane-worker\n  \
           static_configs: [{{targets: [\"127.0.0.1:{first}\", \"127.0.0.1:{second}\"]}}]\n"
    ));
    // Both workers' reports of the 3 emails scraped (an `up` alone may come before them).
    wait_until(WAIT, "both workers' queue gauges scraped", || async {
        let reports =
            r#"count(queue_jobs{job="tasklane-worker", queue="emails", state="pending"} == 3)"#;
        (prometheus.query(reports).await? == 2.0).then_some(())
    })
    .await;
    // Counted once, not once per worker.
    wait_until(WAIT, "the scaler sees the 3 waiting emails", || async {
        (prometheus.query(&pending).await? == 3.0).then_some(())
    })
    .await;
    wait_until(WAIT, "the scaler sees the oldest email waiting", || async {
        (prometheus.query(&oldest).await? >= 1.0).then_some(())
    })
    .await;

    // Paused by an operator, the queue's jobs wait for a resume, not for more workers.
    admin_post(&app, "/api/v1/admin/queues/emails/pause", &token).await;
    wait_until(WAIT, "a paused queue adds nothing to the backlog", || async {
        let waiting = prometheus.query(&pending).await?;
        let age = prometheus.query(&oldest).await?;
        (waiting == 0.0 && age == 0.0).then_some(())
    })
    .await;
    let depth = store.depth(Queue::Emails).await.unwrap();
    assert_eq!(depth.of(JobState::Pending), 3, "the emails still wait in Redis");
}
