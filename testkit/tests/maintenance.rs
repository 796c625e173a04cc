//! The maintenance jobs of SPEC section 5 (mark_overdue, purge_deleted, daily_digest),
//! run by a real worker on second-level schedules.

// Test helpers fail loudly: an unwrap here is an assertion.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use chrono::{Timelike, Utc};
use reqwest::StatusCode;
use serde_json::{Value, json};
use tasklane_testkit::{TestApp, TestWorker, email_address, wait_until};

const DEADLINE: Duration = Duration::from_secs(30);

async fn token(app: &TestApp, email: &str) -> String {
    app.register(email).await["access_token"].as_str().unwrap().to_owned()
}

async fn create(app: &TestApp, token: &str, body: Value) -> String {
    let resp = app.post("/api/v1/tasks", &body, Some(token)).await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    resp.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned()
}

async fn worker_with(app: &TestApp, kind: &str, cron: &str) -> TestWorker {
    let mut settings = app.worker_settings();
    settings.cron.insert(kind.into(), cron.into());
    TestWorker::spawn(settings).await
}

async fn task(app: &TestApp, token: &str, id: &str) -> Value {
    app.get_as(&format!("/api/v1/tasks/{id}"), token).await.json().await.unwrap()
}

#[tokio::test]
async fn mark_overdue_marks_open_past_due_tasks_once_with_a_system_audit() {
    let app = TestApp::spawn().await;
    let user = token(&app, &email_address()).await;
    let late =
        create(&app, &user, json!({ "title": "late", "due_at": "2020-01-01T00:00:00Z" })).await;
    let done = create(
        &app,
        &user,
        json!({ "title": "done", "status": "done", "due_at": "2020-01-01T00:00:00Z" }),
    )
    .await;
    let future =
        create(&app, &user, json!({ "title": "future", "due_at": "2099-01-01T00:00:00Z" })).await;
    let trashed =
        create(&app, &user, json!({ "title": "trashed", "due_at": "2020-01-01T00:00:00Z" })).await;
    app.client
        .delete(app.url(&format!("/api/v1/tasks/{trashed}")))
        .bearer_auth(&user)
        .send()
        .await
        .unwrap();
    // Prime the list cache: marking must invalidate it.
    app.get_as("/api/v1/tasks?overdue=true", &user).await;
    assert_eq!(app.get_as("/api/v1/tasks?overdue=true", &user).await.headers()["x-cache"], "hit");
    // And the task's own cache entry: it must not outlive the change either.
    app.get_as(&format!("/api/v1/tasks/{late}"), &user).await;
    assert_eq!(
        app.get_as(&format!("/api/v1/tasks/{late}"), &user).await.headers()["x-cache"],
        "hit"
    );

    let _worker = worker_with(&app, "mark_overdue", "* * * * * *").await;
    // Within a few ticks, well before a stale entry would expire (30 s).
    wait_until(Duration::from_secs(10), "the late task marked", || async {
        (task(&app, &user, &late).await["overdue"] == true).then_some(())
    })
    .await;
    let listed = app.get_as("/api/v1/tasks?overdue=true", &user).await;
    assert_eq!(listed.headers()["x-cache"], "miss", "the job invalidated the cached list");
    let listed: Value = listed.json().await.unwrap();
    assert_eq!(listed["data"].as_array().unwrap().len(), 1);

    // More ticks change nothing (idempotent).
    let store = app.spawn_store();
    let first = store.last_tick("mark_overdue").await.unwrap().unwrap();
    wait_until(DEADLINE, "two more ticks", || async {
        (store.last_tick("mark_overdue").await.unwrap()? >= first + 2000).then_some(())
    })
    .await;
    let late_task = task(&app, &user, &late).await;
    assert_eq!(late_task["version"], 2, "marked exactly once");
    assert_eq!(task(&app, &user, &done).await["overdue"], false);
    assert_eq!(task(&app, &user, &future).await["overdue"], false);
    let trashed_overdue: bool = sqlx::query_scalar("select overdue from tasks where id = $1::uuid")
        .bind(&trashed)
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert!(!trashed_overdue);
    let history: Value =
        app.get_as(&format!("/api/v1/tasks/{late}/history"), &user).await.json().await.unwrap();
    let overdue: Vec<&Value> =
        history.as_array().unwrap().iter().filter(|e| e["action"] == "overdue").collect();
    assert_eq!(overdue.len(), 1);
    assert_eq!(overdue[0]["actor"]["type"], "system");
    assert_eq!(overdue[0]["changes"]["overdue"], json!({ "from": false, "to": true }));
}

#[tokio::test]
async fn purge_deleted_removes_tasks_trashed_over_30_days_ago_only() {
    let app = TestApp::spawn().await;
    let user = token(&app, &email_address()).await;
    let old = create(&app, &user, json!({ "title": "old" })).await;
    let recent = create(&app, &user, json!({ "title": "recent" })).await;
    let live = create(&app, &user, json!({ "title": "live" })).await;
    sqlx::query("update tasks set deleted_at = now() - interval '31 days' where id = $1::uuid")
        .bind(&old)
        .execute(&app.db)
        .await
        .unwrap();
    sqlx::query("update tasks set deleted_at = now() - interval '29 days' where id = $1::uuid")
        .bind(&recent)
        .execute(&app.db)
        .await
        .unwrap();
    let _worker = worker_with(&app, "purge_deleted", "* * * * * *").await;
    let exists = |id: String| {
        let db = app.db.clone();
        async move {
            sqlx::query_scalar::<_, bool>("select exists(select 1 from tasks where id = $1::uuid)")
                .bind(id)
                .fetch_one(&db)
                .await
                .unwrap()
        }
    };
    wait_until(DEADLINE, "the old task purged", || async {
        (!exists(old.clone()).await).then_some(())
    })
    .await;
    assert!(exists(recent).await);
    assert!(exists(live).await);
}

#[tokio::test]
async fn the_digest_reaches_each_user_once_per_local_day_across_time_zones() {
    // Whole-hour zones change hour with UTC: keep clear of an hour boundary.
    wait_until(Duration::from_secs(60), "not the last 30 s of an hour", || async {
        (Utc::now().minute() != 59 || Utc::now().second() < 30).then_some(())
    })
    .await;
    let app = TestApp::spawn().await;
    let now = Utc::now();
    let setup = |zone: &'static str, hour_offset: u32| {
        let app = &app;
        async move {
            let email = email_address();
            let user = token(app, &email).await;
            let tz: chrono_tz::Tz = zone.parse().unwrap();
            let local_hour = (now.with_timezone(&tz).hour() + hour_offset) % 24;
            sqlx::query(
                "update users set email_verified_at = now(), digest_enabled = true, timezone = $2, digest_hour = $3 where email = $1",
            )
            .bind(&email)
            .bind(zone)
            .bind(i16::try_from(local_hour).unwrap())
            .execute(&app.db)
            .await
            .unwrap();
            (email, user)
        }
    };
    let (tokyo, tokyo_token) = setup("Asia/Tokyo", 0).await;
    let (new_york, _) = setup("America/New_York", 0).await;
    let (not_now, _) = setup("Europe/Paris", 5).await;
    create(
        &app,
        &tokyo_token,
        json!({ "title": "Pay the rent", "due_at": "2020-01-01T00:00:00Z" }),
    )
    .await;
    create(&app, &tokyo_token, json!({ "title": "Plan the trip" })).await;

    let _worker = worker_with(&app, "daily_digest", "*/2 * * * * *").await;
    let digests = |email: String| {
        let app = &app;
        async move {
            app.emails_to(&email)
                .await
                .into_iter()
                .filter(|m| m["subject"].as_str().unwrap_or("").contains("digest"))
                .collect::<Vec<_>>()
        }
    };
    let tokyo_mail =
        wait_until(DEADLINE, "the Tokyo digest", || async { digests(tokyo.clone()).await.pop() })
            .await;
    wait_until(DEADLINE, "the New York digest", || async { digests(new_york.clone()).await.pop() })
        .await;
    let tokyo_date = now.with_timezone(&chrono_tz::Asia::Tokyo).date_naive().to_string();
    assert!(tokyo_mail["subject"].as_str().unwrap().contains(&tokyo_date), "the user's local date");
    let text = tokyo_mail["text"].as_str().unwrap();
    assert!(
        text.contains("Overdue (1)")
            && text.contains("Pay the rent")
            && text.contains("Plan the trip"),
        "{text}"
    );

    // Ticks keep coming within the hour: still one digest each, none for the others.
    let store = app.spawn_store();
    let first = store.last_tick("daily_digest").await.unwrap().unwrap();
    wait_until(DEADLINE, "three more ticks", || async {
        (store.last_tick("daily_digest").await.unwrap()? >= first + 6000).then_some(())
    })
    .await;
    tasklane_testkit::wait_until(DEADLINE, "the email queue idle", || async {
        let depth = store.depth(tasklane_shared::jobs::Queue::Emails).await.unwrap();
        (depth.pending == 0 && depth.running == 0).then_some(())
    })
    .await;
    assert_eq!(digests(tokyo).await.len(), 1);
    assert_eq!(digests(new_york).await.len(), 1);
    assert!(digests(not_now).await.is_empty());
}
