//! A real Prometheus (Debian's package, as `scripts/dev` runs it with `TASKLANE_OBSERVE=1`)
//! scrapes the API and a worker process and evaluates the alert rules of
//! `deploy/prometheus/rules/` on what it scraped (SPEC section 13).

// Test helpers fail loudly: an unwrap here is an assertion.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use serde_json::Value;
use tasklane_testkit::prometheus::TestPrometheus;
use tasklane_testkit::{TestApp, free_port, wait_until};

const WAIT: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread")]
async fn prometheus_scrapes_the_api_and_a_worker_and_evaluates_the_rules() {
    let app = TestApp::spawn().await;
    let worker_port = free_port();
    let _worker = app
        .worker_process()
        .env("TASKLANE_WORKER_ADDR", format!("127.0.0.1:{worker_port}"))
        .spawn()
        .expect("worker starts");
    let client = reqwest::Client::new();
    wait_until(WAIT, "the worker's /metrics", || async {
        let url = format!("http://127.0.0.1:{worker_port}/metrics");
        client.get(url).send().await.ok().filter(|r| r.status().is_success())
    })
    .await;

    let rules = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/prometheus/rules/tasklane.yml");
    let api = app.address.trim_start_matches("http://");
    let prometheus = TestPrometheus::start(&format!(
        "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\n\
         rule_files: [\"{rules}\"]\n\
         scrape_configs:\n\
         - job_name: tasklane-api\n  static_configs: [{{targets: [\"{api}\"]}}]\n\
         - job_name: tasklane-worker\n  static_configs: [{{targets: [\"127.0.0.1:{worker_port}\"]}}]\n"
    ));

    // Both processes scraped, with the metrics the rules read.
    for promql in [
        r#"up{job="tasklane-api"} == 1"#,
        r#"up{job="tasklane-worker"} == 1"#,
        "max(outbox_backlog) >= 0",
        "max(outbox_oldest_age_seconds) >= 0",
        r#"max(queue_oldest_pending_age_seconds{queue="emails"}) >= 0"#,
        "time() - max(worker_heartbeat_timestamp_seconds) < 60",
        "sum(http_requests_total) > 0",
    ] {
        wait_until(WAIT, promql, || async { prometheus.query(promql).await }).await;
    }

    // Every rule evaluated on that data, without error; none fires on a healthy stack
    // (`TasklaneNoWorker` may be pending until the worker's first scrape).
    let rules = wait_until(WAIT, "every rule evaluated, healthy and inactive", || async {
        let body: Value = prometheus.api("rules").await?;
        let rules: Vec<Value> = body["data"]["groups"]
            .as_array()?
            .iter()
            .flat_map(|group| group["rules"].as_array().cloned().unwrap_or_default())
            .collect();
        let settled = !rules.is_empty()
            && rules.iter().all(|rule| {
                rule["lastEvaluation"].as_str().is_some_and(|t| !t.starts_with("0001"))
                    && rule["health"] == "ok"
                    && rule["state"] == "inactive"
            });
        settled.then_some(rules)
    })
    .await;
    assert_eq!(rules.len(), 8, "{rules:#?}");
}
