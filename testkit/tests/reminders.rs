//! Task reminders, the feature delayed jobs serve (SPEC section 10): `remind_at` on a task
//! sends one email at that time, moved when it changes, dropped when it is cleared or the
//! task is done or deleted; validated, and in the task's history.

// Test helpers fail loudly: an unwrap here is an assertion.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use chrono::{DateTime, SubsecRound, Utc};
use reqwest::StatusCode;
use serde_json::{Value, json};
use tasklane_testkit::{TestApp, email_address, wait_until};

const DEADLINE: Duration = Duration::from_secs(30);

/// A signed-in user of an app with a worker running; their address and token.
struct User {
    email: String,
    token: String,
}

async fn user(app: &TestApp) -> User {
    let email = email_address();
    let session = app.register_verified(&email).await;
    User { email, token: session["access_token"].as_str().unwrap().to_owned() }
}

fn in_ms(ms: i64) -> DateTime<Utc> {
    (Utc::now() + chrono::Duration::milliseconds(ms)).trunc_subsecs(3)
}

async fn create(app: &TestApp, user: &User, title: &str, remind_at: DateTime<Utc>) -> Value {
    let body = json!({ "title": title, "remind_at": remind_at });
    let resp = app.post("/api/v1/tasks", &body, Some(&user.token)).await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    resp.json().await.unwrap()
}

async fn patch(app: &TestApp, user: &User, task: &Value, body: Value) -> Value {
    let resp = app
        .client
        .patch(app.url(&format!("/api/v1/tasks/{}", task["id"].as_str().unwrap())))
        .bearer_auth(&user.token)
        .header("if-match", format!("\"{}\"", task["version"]))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    resp.json().await.unwrap()
}

/// The reminder emails `user` received, by subject.
async fn reminders(app: &TestApp, user: &User) -> Vec<String> {
    app.emails_to(&user.email)
        .await
        .iter()
        .map(|mail| mail["subject"].as_str().unwrap().to_owned())
        .filter(|subject| subject.starts_with("Reminder:"))
        .collect()
}

/// Waits until every reminder job of these tasks has ended (its record says so).
async fn reminder_jobs_ended(app: &TestApp, tasks: &[&Value]) {
    let ids: Vec<uuid::Uuid> =
        tasks.iter().map(|task| task["id"].as_str().unwrap().parse().unwrap()).collect();
    wait_until(DEADLINE, "every reminder job ended", || async {
        let open: i64 = sqlx::query_scalar(
            "select count(*) from outbox where kind = 'send_reminder'
               and (payload->>'task_id')::uuid = any($1) and outcome is distinct from 'succeeded'",
        )
        .bind(&ids)
        .fetch_one(&app.db)
        .await
        .unwrap();
        (open == 0).then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_reminder_is_emailed_once_at_its_time_and_is_in_the_tasks_history() {
    let app = TestApp::spawn().await;
    let _worker = app.spawn_worker().await;
    let user = user(&app).await;
    let at = in_ms(2_000);
    let task = create(&app, &user, "water the plants", at).await;
    assert_eq!(task["remind_at"].as_str().unwrap().parse::<DateTime<Utc>>().unwrap(), at);

    let mails = wait_until(DEADLINE, "the reminder", || async {
        let mails = reminders(&app, &user).await;
        (!mails.is_empty()).then_some(mails)
    })
    .await;
    assert!(Utc::now() >= at, "not before its time");
    assert_eq!(mails, ["Reminder: water the plants"]);
    reminder_jobs_ended(&app, &[&task]).await;
    assert_eq!(reminders(&app, &user).await.len(), 1, "one email per reminder");

    let history: Value = app
        .get_as(&format!("/api/v1/tasks/{}/history", task["id"].as_str().unwrap()), &user.token)
        .await
        .json()
        .await
        .unwrap();
    let created = &history[0];
    assert_eq!(created["action"], "create", "{history}");
    assert!(created["changes"]["remind_at"]["to"].is_string(), "{history}");
}

#[tokio::test]
async fn a_moved_reminder_sends_at_its_new_time_and_a_cleared_done_or_deleted_one_never() {
    let app = TestApp::spawn().await;
    let _worker = app.spawn_worker().await;
    let user = user(&app).await;
    let soon = in_ms(1_500);
    let moved = create(&app, &user, "moved", soon).await;
    let cleared = create(&app, &user, "cleared", soon).await;
    let done = create(&app, &user, "done", soon).await;
    let deleted = create(&app, &user, "deleted", soon).await;

    let later = in_ms(3_500);
    let moved = patch(&app, &user, &moved, json!({ "remind_at": later })).await;
    let cleared = patch(&app, &user, &cleared, json!({ "remind_at": null })).await;
    assert_eq!(cleared["remind_at"], Value::Null);
    let done = patch(&app, &user, &done, json!({ "status": "done" })).await;
    let resp = app
        .client
        .delete(app.url(&format!("/api/v1/tasks/{}", deleted["id"].as_str().unwrap())))
        .bearer_auth(&user.token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);

    let mails = wait_until(DEADLINE, "the moved reminder", || async {
        let mails = reminders(&app, &user).await;
        (!mails.is_empty()).then_some(mails)
    })
    .await;
    assert!(Utc::now() >= later, "at the new time, not the old one");
    reminder_jobs_ended(&app, &[&moved, &cleared, &done, &deleted]).await;
    assert_eq!(reminders(&app, &user).await, ["Reminder: moved"], "{mails:?}");
}

#[tokio::test]
async fn a_reminder_in_the_past_is_refused() {
    let app = TestApp::spawn().await;
    let _worker = app.spawn_worker().await;
    let user = user(&app).await;
    let body = json!({ "title": "late", "remind_at": in_ms(-60_000) });
    let resp = app.post("/api/v1/tasks", &body, Some(&user.token)).await;
    assert_eq!(resp.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let problem: Value = resp.json().await.unwrap();
    assert_eq!(problem["errors"][0]["field"], "remind_at", "{problem}");

    let task = create(&app, &user, "fine", in_ms(60_000)).await;
    let resp = app
        .client
        .patch(app.url(&format!("/api/v1/tasks/{}", task["id"].as_str().unwrap())))
        .bearer_auth(&user.token)
        .header("if-match", format!("\"{}\"", task["version"]))
        .json(&json!({ "remind_at": "2001-01-01T00:00:00Z" }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNPROCESSABLE_ENTITY);
}
