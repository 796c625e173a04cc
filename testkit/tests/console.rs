//! The operator console (SPEC section 11): the page and its assets served from the binary
//! under a strict CSP, the live stream for admins only and fed by one sampler per API
//! instance, and the whole console driven in Debian's Chromium by Playwright against the
//! real stack with two worker processes (`e2e/console.e2e.mjs`).

// Test helpers fail loudly: an unwrap here is an assertion.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use futures::StreamExt;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tasklane_shared::domain::jobs::JobState;
use tasklane_shared::jobs::{CronJob, MarkOverdue, Queue};
use tasklane_testkit::jobs::{enqueue_committed, wait_for_state};
use tasklane_testkit::{TestApp, email_address};

const DEADLINE: Duration = Duration::from_secs(30);

#[path = "console/e2e.rs"]
mod e2e;

/// A Server-Sent Events reader of `/api/v1/admin/live`.
struct Live {
    body: futures::stream::BoxStream<'static, reqwest::Result<bytes::Bytes>>,
    buffer: String,
}

impl Live {
    async fn open(app: &TestApp, base: &str, token: &str) -> Self {
        let ticket = ticket(app, base, token).await;
        let resp = app
            .client
            .get(format!("{base}/api/v1/admin/live?ticket={ticket}"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        let content_type = resp.headers()["content-type"].to_str().unwrap().to_owned();
        assert!(content_type.starts_with("text/event-stream"), "{content_type}");
        Self { body: resp.bytes_stream().boxed(), buffer: String::new() }
    }

    /// The next `snapshot` event's JSON (heartbeats skipped).
    async fn next(&mut self) -> Value {
        tokio::time::timeout(DEADLINE, async {
            loop {
                if let Some(end) = self.buffer.find("\n\n") {
                    let block: String = self.buffer.drain(..end + 2).collect();
                    let mut event = "";
                    let mut data = String::new();
                    for line in block.lines() {
                        if let Some(v) = line.strip_prefix("event:") {
                            event = v.trim();
                        } else if let Some(v) = line.strip_prefix("data:") {
                            data.push_str(v.trim_start());
                        }
                    }
                    if event == "snapshot" {
                        return serde_json::from_str(&data).unwrap();
                    }
                    continue;
                }
                let chunk = self.body.next().await.expect("the stream stays open").unwrap();
                self.buffer.push_str(&String::from_utf8_lossy(&chunk));
            }
        })
        .await
        .expect("a snapshot within the deadline")
    }

    /// Reads snapshots until `check` accepts one.
    async fn until(&mut self, what: &str, check: impl Fn(&Value) -> bool) -> Value {
        tokio::time::timeout(DEADLINE, async {
            loop {
                let snapshot = self.next().await;
                if check(&snapshot) {
                    return snapshot;
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for a snapshot where {what}"))
    }
}

async fn ticket(app: &TestApp, base: &str, token: &str) -> String {
    let resp = app
        .client
        .post(format!("{base}/api/v1/events/ticket"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    resp.json::<Value>().await.unwrap()["ticket"].as_str().unwrap().to_owned()
}

fn queue<'a>(snapshot: &'a Value, name: &str) -> &'a Value {
    snapshot["queues"].as_array().unwrap().iter().find(|q| q["queue"] == name).unwrap()
}

#[tokio::test]
async fn the_console_and_its_assets_are_served_from_the_binary_under_a_strict_csp() {
    let app = TestApp::spawn().await;
    for (path, content_type) in [
        ("/console", "text/html; charset=utf-8"),
        ("/console/", "text/html; charset=utf-8"),
        ("/console/console.js", "text/javascript; charset=utf-8"),
        ("/console/console.css", "text/css; charset=utf-8"),
        ("/console/icon.svg", "image/svg+xml"),
    ] {
        let resp = app.client.get(app.url(path)).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "{path}");
        let headers = resp.headers().clone();
        assert_eq!(headers["content-type"], content_type, "{path}");
        let csp = headers["content-security-policy"].to_str().unwrap();
        for directive in [
            "default-src 'none'",
            "script-src 'self'",
            "style-src 'self'",
            "connect-src 'self'",
            "frame-ancestors 'none'",
        ] {
            assert!(csp.contains(directive), "{path}: {csp}");
        }
        assert!(!csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"), "{csp}");
        assert_eq!(headers["x-content-type-options"], "nosniff");
        assert_eq!(headers["cache-control"], "no-store");
        assert!(!resp.text().await.unwrap().is_empty());
    }
    let html = app.client.get(app.url("/console")).send().await.unwrap().text().await.unwrap();
    // No inline script or style for the CSP to refuse, and the hooks SPEC section 11 lists.
    assert!(html.contains(r#"<script type="module" src="/console/console.js"></script>"#));
    assert_eq!(html.matches("<script").count(), 1, "one external script only");
    assert!(!html.contains("style=") && !html.contains("<style"));
    assert!(!html.contains("onclick=") && !html.contains("onsubmit=") && !html.contains("onload="));
    for hook in [
        "login-email",
        "login-password",
        "login-submit",
        "jobs-table",
        "retry-dead",
        "discard-dead",
        "workers-table",
    ] {
        assert!(html.contains(&format!(r#"data-testid="{hook}""#)), "{hook}");
    }
    // Anything else under /console is the API's usual problem, not the page.
    let missing = app.client.get(app.url("/console/nope.js")).send().await.unwrap();
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    assert_eq!(missing.headers()["content-type"], "application/problem+json");
    let posted = app.client.post(app.url("/console")).send().await.unwrap();
    assert_eq!(posted.status(), StatusCode::METHOD_NOT_ALLOWED);
    // The API keeps its own, stricter policy.
    let api = app.client.get(app.url("/health/live")).send().await.unwrap();
    assert_eq!(
        api.headers()["content-security-policy"],
        "default-src 'none'; frame-ancestors 'none'"
    );
}

#[tokio::test]
async fn the_live_stream_is_for_admins_only() {
    let (app, admin) = TestApp::spawn_admin(|_| {}).await;
    let anonymous = app.client.get(app.url("/api/v1/admin/live")).send().await.unwrap();
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(anonymous.headers()["www-authenticate"], "Bearer");
    assert_eq!(anonymous.headers()["content-type"], "application/problem+json");
    let used = app.client.get(app.url("/api/v1/admin/live?ticket=nope")).send().await.unwrap();
    assert_eq!(used.status(), StatusCode::UNAUTHORIZED);

    let user = app.register(&email_address()).await;
    let user = user["access_token"].as_str().unwrap();
    let by_header = app.get_as("/api/v1/admin/live", user).await;
    assert_eq!(by_header.status(), StatusCode::FORBIDDEN);
    assert_eq!(by_header.headers()["content-type"], "application/problem+json");
    let ticket = ticket(&app, &app.address, user).await;
    let by_ticket =
        app.client.get(app.url(&format!("/api/v1/admin/live?ticket={ticket}"))).send().await;
    assert_eq!(by_ticket.unwrap().status(), StatusCode::FORBIDDEN);

    let mut live = Live::open(&app, &app.address, &admin).await;
    let snapshot = live.next().await;
    let names: Vec<&str> = snapshot["queues"]
        .as_array()
        .unwrap()
        .iter()
        .map(|q| q["queue"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["emails", "uploads", "maintenance"]);
    assert_eq!(snapshot["error"], Value::Null);
}

#[tokio::test]
async fn every_console_of_an_instance_shares_one_sampler_fed_from_redis() {
    let (app, token) = TestApp::spawn_admin(|_| {}).await;
    let mut first = Live::open(&app, &app.address, &token).await;
    let early = first.until("the sampler has run twice", |s| s["seq"].as_u64() >= Some(2)).await;
    let sampler = early["sampler"].clone();

    // A second page joins the running sampler: same sampler, its numbering, not a new one.
    let mut second = Live::open(&app, &app.address, &token).await;
    let joined = second.next().await;
    assert_eq!(joined["sampler"], sampler);
    assert!(joined["seq"].as_u64() >= early["seq"].as_u64(), "{joined} after {early}");
    let a = first
        .until("sample 2 after the join", |s| s["seq"].as_u64() > joined["seq"].as_u64())
        .await;
    let b = second.until("the same sample", |s| s["seq"] == a["seq"]).await;
    assert_eq!((&a["sampler"], &a["at"]), (&b["sampler"], &b["at"]), "one sample for both");

    // Another instance has a sampler of its own.
    let other = app.spawn_instance().await;
    let mut elsewhere = Live::open(&app, &other, &token).await;
    assert_ne!(elsewhere.next().await["sampler"], sampler);

    // The figures are the fleet's: a pause as Redis has it, jobs done in the last minute,
    // the live workers.
    let resp = app.post("/api/v1/admin/queues/emails/pause", &json!({}), Some(&token)).await;
    assert_eq!(resp.status(), StatusCode::OK);
    first.until("emails is paused", |s| queue(s, "emails")["paused"] == true).await;
    let _worker = app.spawn_worker().await;
    let store = app.spawn_store();
    let id = enqueue_committed(&app, &MarkOverdue::for_tick(chrono::Utc::now())).await;
    wait_for_state(&store, Queue::Maintenance, &id, JobState::Done, DEADLINE).await;
    let seen = first
        .until("the job counted as done and the worker listed", |s| {
            queue(s, "maintenance")["done_last_minute"].as_u64() >= Some(1)
                && !s["workers"].as_array().unwrap().is_empty()
        })
        .await;
    assert_eq!(queue(&seen, "emails")["paused"], true);
    assert_eq!(seen["outbox_backlog"], 0);
    elsewhere
        .until("the other instance sees the pause too", |s| queue(s, "emails")["paused"] == true)
        .await;
}

#[tokio::test]
async fn the_sampler_sleeps_while_no_console_is_open() {
    let (app, token) = TestApp::spawn_admin(|_| {}).await;
    let mut live = Live::open(&app, &app.address, &token).await;
    let before = live.next().await["seq"].as_u64().unwrap();
    drop(live);
    // The assertion is that nothing happens for five sample periods, so this waits them
    // out: sampling on, they would be five more samples. The dropped stream is noticed at
    // its next write, which may cost one sample, and one may have been in flight.
    tokio::time::sleep(tasklane_api::services::live::SAMPLE_EVERY * 5).await;
    let mut again = Live::open(&app, &app.address, &token).await;
    let after = again.next().await["seq"].as_u64().unwrap();
    assert!(after <= before + 3, "sampled {} times with no console open", after - before - 1);
    // And it wakes at once for a new page: the next sample follows within a period.
    let next = again.next().await["seq"].as_u64().unwrap();
    assert_eq!(next, after + 1);
}

#[tokio::test]
async fn a_console_says_when_redis_cannot_be_read_and_keeps_the_last_figures() {
    let mut redis = tasklane_testkit::TestRedis::start().await;
    let url = redis.url();
    let (app, token) = TestApp::spawn_admin(|s| s.redis_url = url.into()).await;
    let mut live = Live::open(&app, &app.address, &token).await;
    assert_eq!(live.next().await["error"], Value::Null);

    redis.stop().await;
    let stale = live.until("the sample failed", |s| s["error"] != Value::Null).await;
    assert!(stale["error"].as_str().unwrap().contains("Redis"), "{stale}");
    assert_eq!(stale["queues"].as_array().unwrap().len(), 3, "the last figures are kept");

    redis.start_again().await;
    live.until("the samples read again", |s| s["error"] == Value::Null).await;
}
