//! The admin job API (SPEC section 7): queues, jobs, retry of dead jobs, schedules.

// Test helpers fail loudly: an unwrap here is an assertion.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use tasklane_shared::jobs::{EmailMessage, SendEmail};
use tasklane_shared::outbox;
use tasklane_testkit::{TestApp, email_address, wait_until};

const DEADLINE: Duration = Duration::from_secs(20);

async fn get(app: &TestApp, path: &str, token: &str) -> Value {
    let resp = app.get_as(path, token).await;
    assert_eq!(resp.status(), StatusCode::OK, "{path}");
    resp.json().await.unwrap()
}

async fn dead_email_job(app: &TestApp) -> String {
    let job = SendEmail {
        idempotency_key: tasklane_testkit::unique("k"),
        to: "not an address".into(),
        message: EmailMessage::PasswordChanged { display_name: None },
    };
    let mut tx = app.db.begin().await.unwrap();
    let id = outbox::enqueue(&mut tx, &job, Some("req-dead")).await.unwrap();
    tx.commit().await.unwrap();
    id.to_string()
}

#[tokio::test]
async fn admins_see_dead_jobs_with_their_errors_and_can_retry_them() {
    let (app, token) = TestApp::spawn_admin(|s| {
        s.cron.insert("prune_sent_emails".into(), "0 */10 * * * *".into());
    })
    .await;
    let _worker = app.spawn_worker().await;
    let id = dead_email_job(&app).await;
    let job = wait_until(DEADLINE, "the job to die", || async {
        let resp = app.get_as(&format!("/api/v1/admin/jobs/{id}"), &token).await;
        if resp.status() != StatusCode::OK {
            return None;
        }
        let job: Value = resp.json().await.unwrap();
        (job["state"] == "dead").then_some(job)
    })
    .await;
    assert_eq!(job["kind"], "send_email");
    assert_eq!(job["attempts"], 1, "an invalid address is permanent: no retries");
    assert_eq!(job["request_id"], "req-dead");
    assert!(
        job["history"][0]["error"].as_str().unwrap().contains("permanent failure: recipient"),
        "{job}"
    );
    assert!(job["history"][0]["worker"].is_string());

    let listed =
        get(&app, "/api/v1/admin/jobs?queue=emails&state=dead&kind=send_email", &token).await;
    assert!(listed["data"].as_array().unwrap().iter().any(|j| j["id"] == id.as_str()));
    let overview = get(&app, "/api/v1/admin/queues", &token).await;
    let emails = overview["queues"]
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["queue"] == "emails")
        .unwrap()
        .clone();
    assert_eq!(emails["dead"], 1);
    assert!(emails["failed_last_hour"].as_u64().unwrap() >= 1);
    assert_eq!(overview["queues"].as_array().unwrap().len(), 3);

    let retried =
        app.post(&format!("/api/v1/admin/jobs/{id}/retry"), &json!({}), Some(&token)).await;
    assert_eq!(retried.status(), StatusCode::ACCEPTED);
    wait_until(DEADLINE, "the retried job to run (and die) again", || async {
        let job = get(&app, &format!("/api/v1/admin/jobs/{id}"), &token).await;
        (job["state"] == "dead" && job["history"].as_array().unwrap().len() == 2).then_some(())
    })
    .await;

    let unknown = app
        .post(
            &format!("/api/v1/admin/jobs/{}/retry", uuid::Uuid::now_v7()),
            &json!({}),
            Some(&token),
        )
        .await;
    assert_eq!(unknown.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn only_dead_jobs_can_be_retried() {
    let (app, token) = TestApp::spawn_admin(|s| {
        s.cron.insert("prune_sent_emails".into(), "0 */10 * * * *".into());
    })
    .await;
    let _worker = app.spawn_worker().await;
    let to = email_address();
    let job = SendEmail {
        idempotency_key: tasklane_testkit::unique("k"),
        to: to.clone(),
        message: EmailMessage::PasswordChanged { display_name: None },
    };
    let mut tx = app.db.begin().await.unwrap();
    let id = outbox::enqueue(&mut tx, &job, None).await.unwrap();
    tx.commit().await.unwrap();
    app.wait_for_emails(&to, 1, DEADLINE).await;
    wait_until(DEADLINE, "the job done", || async {
        (get(&app, &format!("/api/v1/admin/jobs/{id}"), &token).await["state"] == "done")
            .then_some(())
    })
    .await;
    let resp = app.post(&format!("/api/v1/admin/jobs/{id}/retry"), &json!({}), Some(&token)).await;
    assert_eq!(resp.status(), StatusCode::CONFLICT);
}

#[tokio::test]
async fn job_payloads_hide_tokens_and_carry_the_request_id() {
    let (app, token) = TestApp::spawn_admin(|s| {
        s.cron.insert("prune_sent_emails".into(), "0 */10 * * * *".into());
    })
    .await;
    let _worker = app.spawn_worker().await;
    let user = email_address();
    app.register(&user).await;
    let resp = app
        .client
        .post(app.url("/api/v1/auth/forgot-password"))
        .header("x-request-id", "trace-me-123")
        .json(&json!({ "email": user }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    app.wait_for_emails(&user, 2, DEADLINE).await;
    let page = wait_until(DEADLINE, "the reset job done", || async {
        let page = get(&app, "/api/v1/admin/jobs?queue=emails&state=done&limit=100", &token).await;
        page["data"].as_array().unwrap().iter().find(|j| j["request_id"] == "trace-me-123").cloned()
    })
    .await;
    assert_eq!(page["payload"]["message"]["template"], "reset_password");
    // The job carries no token at all, only its row's id (SPEC section 14: the worker
    // mints the token as it sends); that id is hidden with everything named like a secret.
    assert!(page["payload"]["message"].get("token").is_none(), "{page}");
    assert_eq!(page["payload"]["message"]["token_id"], "[redacted]");
    assert_eq!(page["payload"]["to"], user.as_str());
}

#[tokio::test]
async fn schedules_show_the_effective_cron_and_the_next_run() {
    let (app, token) = TestApp::spawn_admin(|s| {
        s.cron.insert("prune_sent_emails".into(), "0 */10 * * * *".into());
    })
    .await;
    let schedules = get(&app, "/api/v1/admin/schedules", &token).await;
    let prune =
        schedules.as_array().unwrap().iter().find(|s| s["kind"] == "prune_sent_emails").unwrap();
    assert_eq!(prune["cron"], "0 */10 * * * *", "the override, not the default");
    assert_eq!(prune["queue"], "maintenance");
    let next = chrono::DateTime::parse_from_rfc3339(prune["next_run"].as_str().unwrap()).unwrap();
    assert!(next > chrono::Utc::now());
}

#[tokio::test]
async fn the_job_api_is_for_admins_only() {
    let app = TestApp::spawn().await;
    let user = app.register(&email_address()).await;
    let token = user["access_token"].as_str().unwrap();
    for path in [
        "/api/v1/admin/queues",
        "/api/v1/admin/jobs",
        "/api/v1/admin/schedules",
        "/api/v1/admin/jobs/x",
    ] {
        assert_eq!(app.get_as(path, token).await.status(), StatusCode::FORBIDDEN, "{path}");
        assert_eq!(
            app.client.get(app.url(path)).send().await.unwrap().status(),
            StatusCode::UNAUTHORIZED,
            "{path}"
        );
    }
    let resp = app.post("/api/v1/admin/jobs/x/retry", &json!({}), Some(token)).await;
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
}
