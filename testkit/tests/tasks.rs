//! Tasks (SPEC section 5) against the real API, Postgres and Redis.

// Test helpers fail loudly: an unwrap here is an assertion.
#![allow(clippy::unwrap_used)]

use std::collections::HashSet;

use reqwest::StatusCode;
use serde_json::{Value, json};
use tasklane_testkit::{TestApp, email_address};

struct User<'a> {
    app: &'a TestApp,
    token: String,
}

impl<'a> User<'a> {
    async fn new(app: &'a TestApp) -> Self {
        let session = app.register(&email_address()).await;
        Self { app, token: session["access_token"].as_str().unwrap().to_owned() }
    }

    async fn create(&self, body: Value) -> reqwest::Response {
        self.app.post("/api/v1/tasks", &body, Some(&self.token)).await
    }

    async fn created(&self, body: Value) -> Value {
        let resp = self.create(body).await;
        assert_eq!(resp.status(), StatusCode::CREATED);
        resp.json().await.unwrap()
    }

    async fn get(&self, path: &str) -> reqwest::Response {
        self.app.get_as(path, &self.token).await
    }

    async fn patch(&self, id: &str, if_match: Option<&str>, body: Value) -> reqwest::Response {
        let mut request = self
            .app
            .client
            .patch(self.app.url(&format!("/api/v1/tasks/{id}")))
            .bearer_auth(&self.token)
            .json(&body);
        if let Some(tag) = if_match {
            request = request.header("if-match", tag);
        }
        request.send().await.unwrap()
    }

    async fn delete(&self, id: &str) -> reqwest::Response {
        self.app
            .client
            .delete(self.app.url(&format!("/api/v1/tasks/{id}")))
            .bearer_auth(&self.token)
            .send()
            .await
            .unwrap()
    }
}

async fn json(resp: reqwest::Response) -> Value {
    resp.json().await.unwrap()
}

#[tokio::test]
async fn create_validates_every_field_and_refuses_server_fields() {
    let app = TestApp::spawn().await;
    let user = User::new(&app).await;
    let resp = user
        .create(
            json!({ "title": "  Write the report ", "tags": ["work", "q3"], "priority": "high" }),
        )
        .await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    assert_eq!(resp.headers()["etag"], "\"1\"");
    let task = json(resp).await;
    assert_eq!(task["title"], "Write the report");
    assert_eq!(
        (task["status"].as_str(), task["priority"].as_str(), task["version"].as_i64()),
        (Some("todo"), Some("high"), Some(1))
    );

    let bad = user
        .create(json!({ "title": "", "tags": ["Bad Tag"], "description": "x".repeat(10_001) }))
        .await;
    assert_eq!(bad.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let fields: Vec<String> = json(bad).await["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(fields, ["title", "description", "tags[0]"]);
    for field in ["owner_id", "version", "deleted_at", "created_at"] {
        let resp = user.create(json!({ "title": "t", field: "x" })).await;
        assert_eq!(resp.status(), StatusCode::UNPROCESSABLE_ENTITY, "{field}");
        let problem = json(resp).await;
        assert_eq!(problem["errors"][0]["field"], field, "{problem}");
    }
    let malformed = app
        .client
        .post(app.url("/api/v1/tasks"))
        .bearer_auth(&user.token)
        .header("content-type", "application/json")
        .body("{\"title\":")
        .send()
        .await
        .unwrap();
    assert_eq!(malformed.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn etags_and_conditional_requests() {
    let app = TestApp::spawn().await;
    let user = User::new(&app).await;
    let id = user
        .created(json!({ "title": "t", "description": "d", "due_at": "2030-01-01T00:00:00Z" }))
        .await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let path = format!("/api/v1/tasks/{id}");
    let resp = user.get(&path).await;
    assert_eq!(resp.headers()["etag"], "\"1\"");
    assert_eq!(resp.headers()["cache-control"], "private, no-cache");
    let not_modified = app
        .client
        .get(app.url(&path))
        .bearer_auth(&user.token)
        .header("if-none-match", "\"1\"")
        .send()
        .await
        .unwrap();
    assert_eq!(not_modified.status(), StatusCode::NOT_MODIFIED);

    assert_eq!(
        user.patch(&id, None, json!({ "title": "u" })).await.status(),
        StatusCode::PRECONDITION_REQUIRED
    );
    let changed = user
        .patch(&id, Some("\"1\""), json!({ "title": "u", "description": null, "status": "done" }))
        .await;
    assert_eq!(changed.status(), StatusCode::OK);
    assert_eq!(changed.headers()["etag"], "\"2\"");
    let task = json(changed).await;
    assert_eq!(task["title"], "u");
    assert!(task["description"].is_null(), "null clears");
    let due = chrono::DateTime::parse_from_rfc3339(task["due_at"].as_str().unwrap()).unwrap();
    assert_eq!(
        due,
        chrono::DateTime::parse_from_rfc3339("2030-01-01T00:00:00Z").unwrap(),
        "absent leaves"
    );
    assert!(task["completed_at"].is_string(), "done stamps completed_at");

    let stale = user.patch(&id, Some("\"1\""), json!({ "title": "v" })).await;
    assert_eq!(stale.status(), StatusCode::PRECONDITION_FAILED);
    assert_eq!(json(stale).await["current_version"], 2);
    let unknown = user.patch(&id, Some("\"2\""), json!({ "owner_id": "x" })).await;
    assert_eq!(unknown.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let null_title = user.patch(&id, Some("\"2\""), json!({ "title": null })).await;
    assert_eq!(null_title.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let reopened = json(user.patch(&id, Some("\"2\""), json!({ "status": "todo" })).await).await;
    assert!(reopened["completed_at"].is_null());
}

/// The body is checked before the precondition: a patch that could never apply is 422
/// whatever `If-Match` says, and an empty `If-Match` is as good as none (428).
#[tokio::test]
async fn a_patch_body_is_checked_before_its_precondition() {
    let app = TestApp::spawn().await;
    let user = User::new(&app).await;
    let id = user.created(json!({ "title": "t" })).await["id"].as_str().unwrap().to_owned();
    for if_match in [None, Some(""), Some("\"7\""), Some("\"1\"")] {
        for invalid in
            [json!({ "owner_id": "x" }), json!({ "title": "  " }), json!({ "status": null })]
        {
            let resp = user.patch(&id, if_match, invalid.clone()).await;
            assert_eq!(resp.status(), StatusCode::UNPROCESSABLE_ENTITY, "{if_match:?} {invalid}");
        }
    }
    let empty = user.patch(&id, Some(""), json!({ "title": "u" })).await;
    assert_eq!(empty.status(), StatusCode::PRECONDITION_REQUIRED);
    let stale = user.patch(&id, Some("\"7\""), json!({ "title": "u" })).await;
    assert_eq!(stale.status(), StatusCode::PRECONDITION_FAILED);
    let task = json(user.get(&format!("/api/v1/tasks/{id}")).await).await;
    assert_eq!((task["title"].as_str(), task["version"].as_i64()), (Some("t"), Some(1)));
}

/// A field with no value is sent as `null`, never left out (and the document says
/// `nullable`, see `openapi_drift`).
#[tokio::test]
async fn optional_fields_without_a_value_are_sent_as_null() {
    let app = TestApp::spawn().await;
    let user = User::new(&app).await;
    let task = user.created(json!({ "title": "t" })).await;
    for field in ["description", "due_at", "completed_at", "deleted_at"] {
        assert_eq!(task.get(field), Some(&Value::Null), "{field}: {task}");
    }
    let list = json(user.get("/api/v1/tasks").await).await;
    assert_eq!(list.get("next_cursor"), Some(&Value::Null), "{list}");
    assert_eq!(list.get("total"), Some(&Value::Null), "{list}");
}

#[tokio::test]
async fn moving_the_due_date_into_the_future_clears_overdue() {
    let app = TestApp::spawn().await;
    let user = User::new(&app).await;
    let id = user.created(json!({ "title": "t", "due_at": "2020-01-01T00:00:00Z" })).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    sqlx::query("update tasks set overdue = true where id = $1::uuid")
        .bind(&id)
        .execute(&app.db)
        .await
        .unwrap();
    let task =
        json(user.patch(&id, Some("\"1\""), json!({ "due_at": "2099-01-01T00:00:00Z" })).await)
            .await;
    assert_eq!(task["overdue"], false);
}

#[tokio::test]
async fn of_two_concurrent_changes_of_one_version_exactly_one_wins() {
    let app = TestApp::spawn().await;
    let user = User::new(&app).await;
    let id = user.created(json!({ "title": "t" })).await["id"].as_str().unwrap().to_owned();
    let (a, b) = tokio::join!(
        user.patch(&id, Some("\"1\""), json!({ "title": "a" })),
        user.patch(&id, Some("\"1\""), json!({ "title": "b" }))
    );
    let mut statuses = [a.status(), b.status()];
    statuses.sort();
    assert_eq!(statuses, [StatusCode::OK, StatusCode::PRECONDITION_FAILED]);
}

#[tokio::test]
async fn trash_restore_and_history_with_diffs_and_actors() {
    let app = TestApp::spawn().await;
    let user = User::new(&app).await;
    let id = user.created(json!({ "title": "t" })).await["id"].as_str().unwrap().to_owned();
    user.patch(&id, Some("\"1\""), json!({ "priority": "urgent" })).await;
    assert_eq!(user.delete(&id).await.status(), StatusCode::NO_CONTENT);
    assert_eq!(user.get(&format!("/api/v1/tasks/{id}")).await.status(), StatusCode::NOT_FOUND);
    assert_eq!(user.delete(&id).await.status(), StatusCode::NOT_FOUND);
    let trash = json(user.get("/api/v1/tasks?deleted=true").await).await;
    assert_eq!(trash["data"][0]["id"], id.as_str());
    assert!(json(user.get("/api/v1/tasks").await).await["data"].as_array().unwrap().is_empty());

    let restored =
        app.post(&format!("/api/v1/tasks/{id}/restore"), &json!({}), Some(&user.token)).await;
    assert_eq!(restored.status(), StatusCode::OK);
    assert!(json(restored).await["deleted_at"].is_null());

    let history = json(user.get(&format!("/api/v1/tasks/{id}/history")).await).await;
    let actions: Vec<&str> =
        history.as_array().unwrap().iter().map(|e| e["action"].as_str().unwrap()).collect();
    assert_eq!(actions, ["create", "update", "delete", "restore"]);
    assert_eq!(history[1]["changes"]["priority"], json!({ "from": "normal", "to": "urgent" }));
    assert_eq!(history[1]["actor"]["type"], "user");
    assert_eq!(history[0]["changes"]["title"]["to"], "t");
}

#[tokio::test]
async fn another_users_task_is_404_everywhere() {
    let app = TestApp::spawn().await;
    let owner = User::new(&app).await;
    let other = User::new(&app).await;
    let id = owner.created(json!({ "title": "mine" })).await["id"].as_str().unwrap().to_owned();
    assert_eq!(other.get(&format!("/api/v1/tasks/{id}")).await.status(), StatusCode::NOT_FOUND);
    assert_eq!(
        other.get(&format!("/api/v1/tasks/{id}/history")).await.status(),
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        other.patch(&id, Some("\"1\""), json!({ "title": "x" })).await.status(),
        StatusCode::NOT_FOUND
    );
    assert_eq!(other.delete(&id).await.status(), StatusCode::NOT_FOUND);
    assert_eq!(
        app.post(&format!("/api/v1/tasks/{id}/restore"), &json!({}), Some(&other.token))
            .await
            .status(),
        StatusCode::NOT_FOUND
    );
    assert!(json(other.get("/api/v1/tasks").await).await["data"].as_array().unwrap().is_empty());
    assert_eq!(owner.get(&format!("/api/v1/tasks/{id}")).await.status(), StatusCode::OK);
}

#[tokio::test]
async fn bulk_is_all_or_nothing_and_names_the_item() {
    let app = TestApp::spawn().await;
    let user = User::new(&app).await;
    let bad = app
        .post(
            "/api/v1/tasks/bulk",
            &json!({ "tasks": [{ "title": "a" }, { "title": "b" }, { "title": "" }] }),
            Some(&user.token),
        )
        .await;
    assert_eq!(bad.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(json(bad).await["errors"][0]["field"], "tasks[2].title");
    assert!(
        json(user.get("/api/v1/tasks").await).await["data"].as_array().unwrap().is_empty(),
        "nothing was created"
    );
    let too_many: Vec<Value> = (0..101).map(|i| json!({ "title": format!("t{i}") })).collect();
    let resp =
        app.post("/api/v1/tasks/bulk", &json!({ "tasks": too_many }), Some(&user.token)).await;
    assert_eq!(resp.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let ok = app
        .post(
            "/api/v1/tasks/bulk",
            &json!({ "tasks": [{ "title": "a" }, { "title": "b" }] }),
            Some(&user.token),
        )
        .await;
    assert_eq!(ok.status(), StatusCode::CREATED);
    assert_eq!(json(ok).await["data"].as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn the_daily_quota_counts_each_item_and_refused_requests_use_none() {
    let app = TestApp::spawn_with(|s| s.tasks_daily_quota = 3).await;
    let user = User::new(&app).await;
    assert_eq!(
        user.create(json!({ "title": "" })).await.status(),
        StatusCode::UNPROCESSABLE_ENTITY
    );
    user.created(json!({ "title": "1" })).await;
    let two = app
        .post(
            "/api/v1/tasks/bulk",
            &json!({ "tasks": [{ "title": "2" }, { "title": "3" }, { "title": "4" }] }),
            Some(&user.token),
        )
        .await;
    assert_eq!(two.status(), StatusCode::TOO_MANY_REQUESTS, "3 more do not fit in 2");
    let retry_after: u64 = two.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=86_400).contains(&retry_after));
    let fits = app
        .post(
            "/api/v1/tasks/bulk",
            &json!({ "tasks": [{ "title": "2" }, { "title": "3" }] }),
            Some(&user.token),
        )
        .await;
    assert_eq!(fits.status(), StatusCode::CREATED, "the refused bulk took nothing");
    assert_eq!(user.create(json!({ "title": "4" })).await.status(), StatusCode::TOO_MANY_REQUESTS);
    let other = User::new(&app).await;
    assert_eq!(
        other.create(json!({ "title": "theirs" })).await.status(),
        StatusCode::CREATED,
        "per user"
    );
}

#[tokio::test]
async fn filters_and_search_narrow_the_list() {
    let app = TestApp::spawn().await;
    let user = User::new(&app).await;
    user.created(json!({ "title": "Quarterly report", "description": "numbers for the board", "tags": ["work"], "priority": "high" })).await;
    user.created(json!({ "title": "Buy milk", "tags": ["home"], "status": "done" })).await;
    user.created(
        json!({ "title": "Call the plumber", "tags": ["home"], "due_at": "2020-01-01T00:00:00Z" }),
    )
    .await;
    let titles = |v: Value| -> Vec<String> {
        v["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["title"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(
        titles(json(user.get("/api/v1/tasks?tag=home&sort=title").await).await),
        ["Buy milk", "Call the plumber"]
    );
    assert_eq!(
        titles(json(user.get("/api/v1/tasks?status=todo,in_progress&sort=title").await).await),
        ["Call the plumber", "Quarterly report"]
    );
    assert_eq!(
        titles(json(user.get("/api/v1/tasks?priority=high").await).await),
        ["Quarterly report"]
    );
    assert_eq!(titles(json(user.get("/api/v1/tasks?q=board").await).await), ["Quarterly report"]);
    assert_eq!(
        titles(json(user.get("/api/v1/tasks?due_before=2021-01-01T00:00:00Z").await).await),
        ["Call the plumber"]
    );
    for bad in ["sort=owner_id", "status=later", "limit=101", "page=1&cursor=abc", "cursor=garbage"]
    {
        let resp = user.get(&format!("/api/v1/tasks?{bad}")).await;
        assert_eq!(resp.status(), StatusCode::UNPROCESSABLE_ENTITY, "{bad}");
    }
    let paged = json(user.get("/api/v1/tasks?page=2&limit=2&sort=title").await).await;
    assert_eq!(
        (paged["total"].as_i64(), paged["total_pages"].as_i64(), paged["page"].as_i64()),
        (Some(3), Some(2), Some(2))
    );
    assert_eq!(titles(paged), ["Quarterly report"]);
}

#[tokio::test]
async fn cursor_pages_visit_every_row_once_under_every_sort_while_rows_are_added() {
    let app = TestApp::spawn_with(|s| s.tasks_daily_quota = 10_000).await;
    let user = User::new(&app).await;
    let priorities = ["low", "normal", "high", "urgent"];
    let mut batch = Vec::new();
    for i in 0..60 {
        let mut task =
            json!({ "title": format!("task {:02}", i % 7), "priority": priorities[i % 4] });
        if i % 3 != 0 {
            task["due_at"] = json!(format!("2031-01-{:02}T00:00:00Z", 1 + i % 5));
        }
        batch.push(task);
    }
    let resp = app.post("/api/v1/tasks/bulk", &json!({ "tasks": batch }), Some(&user.token)).await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    let original: HashSet<String> = json(resp).await["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap().to_owned())
        .collect();

    for sort in [
        "-created_at",
        "created_at",
        "title",
        "-title,due_at",
        "due_at",
        "-due_at",
        "priority,-created_at",
        "-priority,title",
        "updated_at",
    ] {
        let mut seen = HashSet::new();
        let mut cursor: Option<String> = None;
        let mut page = 0;
        loop {
            let mut path = format!("/api/v1/tasks?limit=7&sort={sort}");
            if let Some(c) = &cursor {
                path.push_str(&format!("&cursor={c}"));
            }
            let body = json(user.get(&path).await).await;
            for task in body["data"].as_array().unwrap() {
                let id = task["id"].as_str().unwrap().to_owned();
                assert!(seen.insert(id), "{sort}: a row came twice");
            }
            // A row is added between pages.
            user.created(json!({ "title": format!("added {sort} {page}"), "due_at": "2031-01-03T00:00:00Z" })).await;
            page += 1;
            match body["next_cursor"].as_str() {
                Some(next) => cursor = Some(next.to_owned()),
                None => break,
            }
        }
        assert!(original.is_subset(&seen), "{sort}: every row that existed throughout was visited");
    }
}

#[tokio::test]
async fn lists_are_cached_until_the_user_writes() {
    let app = TestApp::spawn().await;
    let user = User::new(&app).await;
    user.created(json!({ "title": "one" })).await;
    let first = user.get("/api/v1/tasks").await;
    assert_eq!(first.headers()["x-cache"], "miss");
    let second = user.get("/api/v1/tasks").await;
    assert_eq!(second.headers()["x-cache"], "hit");
    assert_eq!(json(second).await["data"].as_array().unwrap().len(), 1);
    user.created(json!({ "title": "two" })).await;
    let after_write = user.get("/api/v1/tasks").await;
    assert_eq!(after_write.headers()["x-cache"], "miss");
    assert_eq!(json(after_write).await["data"].as_array().unwrap().len(), 2);
    let other = User::new(&app).await;
    assert_eq!(other.get("/api/v1/tasks").await.headers()["x-cache"], "miss", "per user");
}

#[tokio::test]
async fn a_task_is_served_from_the_cache_until_any_write_and_never_stale() {
    let app = TestApp::spawn().await;
    let user = User::new(&app).await;
    let task = user.created(json!({ "title": "cached", "tags": ["a"] })).await;
    let id = task["id"].as_str().unwrap();
    let path = format!("/api/v1/tasks/{id}");

    let first = user.get(&path).await;
    assert_eq!(first.headers()["x-cache"], "miss");
    let first_body = first.bytes().await.unwrap();
    let hit = user.get(&path).await;
    assert_eq!(hit.headers()["x-cache"], "hit");
    assert_eq!(hit.headers()["etag"], "\"1\"");
    assert_eq!(hit.headers()["content-type"], "application/json; charset=utf-8");
    assert_eq!(
        hit.bytes().await.unwrap(),
        first_body,
        "a hit is byte for byte the database's answer"
    );
    let not_modified = user
        .app
        .client
        .get(user.app.url(&path))
        .bearer_auth(&user.token)
        .header("if-none-match", "\"1\"")
        .send()
        .await
        .unwrap();
    assert_eq!(not_modified.status(), StatusCode::NOT_MODIFIED);
    assert_eq!(not_modified.headers()["x-cache"], "hit");

    // A change is seen by the very next read, and so is a write to another task.
    assert_eq!(
        user.patch(id, Some("\"1\""), json!({ "title": "changed" })).await.status(),
        StatusCode::OK
    );
    let after = user.get(&path).await;
    assert_eq!(after.headers()["x-cache"], "miss");
    assert_eq!(after.headers()["etag"], "\"2\"");
    assert_eq!(json(after).await["title"], "changed");
    assert_eq!(user.get(&path).await.headers()["x-cache"], "hit");
    user.created(json!({ "title": "another" })).await;
    assert_eq!(
        user.get(&path).await.headers()["x-cache"],
        "miss",
        "any write of the user moves the generation"
    );

    // Deleted: 404 at once, not the cached copy; another user never reaches the owner's entry.
    assert_eq!(user.get(&path).await.headers()["x-cache"], "hit");
    let other = User::new(&app).await;
    assert_eq!(other.get(&path).await.status(), StatusCode::NOT_FOUND);
    assert_eq!(user.delete(id).await.status(), StatusCode::NO_CONTENT);
    assert_eq!(user.get(&path).await.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn a_read_racing_a_write_never_caches_the_old_version() {
    // Many reads and writes of one task at once: whatever interleaving happens, once the
    // writes are done every read shows the last version.
    let app = TestApp::spawn().await;
    let user = User::new(&app).await;
    let id = user.created(json!({ "title": "v1" })).await["id"].as_str().unwrap().to_owned();
    let path = format!("/api/v1/tasks/{id}");
    for version in 1..=15 {
        let reads = (0..4).map(|_| user.get(&path));
        let tag = format!("\"{version}\"");
        let write = user.patch(&id, Some(&tag), json!({ "title": format!("v{}", version + 1) }));
        let (written, _) = tokio::join!(write, futures::future::join_all(reads));
        assert_eq!(written.status(), StatusCode::OK);
        for _ in 0..2 {
            let read = json(user.get(&path).await).await;
            assert_eq!(
                read["version"],
                version + 1,
                "no read after a write shows an older version"
            );
        }
    }
}

#[tokio::test]
async fn concurrent_creations_share_statements_and_each_gets_its_own_task() {
    let app = TestApp::spawn_with(|s| s.tasks_daily_quota = 1_000).await;
    let user = User::new(&app).await;
    let titles: Vec<String> = (0..60).map(|i| format!("parallel {i}")).collect();
    let responses = futures::future::join_all(
        titles.iter().map(|title| user.create(json!({ "title": title, "tags": ["p"] }))),
    )
    .await;
    let mut ids = HashSet::new();
    for (resp, title) in responses.into_iter().zip(&titles) {
        assert_eq!(resp.status(), StatusCode::CREATED);
        let task = json(resp).await;
        assert_eq!(&task["title"], title, "each request gets its own task back");
        ids.insert(task["id"].as_str().unwrap().to_owned());
    }
    assert_eq!(ids.len(), 60);
    let (tasks, audits, events): (i64, i64, i64) = sqlx::query_as(
        "select (select count(*) from tasks), (select count(*) from task_events where action = 'create'),
                (select count(*) from outbox where queue = 'events' and kind = 'task.created')",
    )
    .fetch_one(&app.db)
    .await
    .unwrap();
    assert_eq!((tasks, audits, events), (60, 60, 60), "every task with its audit entry and event");
    let used: i64 = redis_quota_used(&app).await;
    assert_eq!(used, 60);
    let listed = json(user.get("/api/v1/tasks?limit=100").await).await;
    assert_eq!(
        listed["data"].as_array().unwrap().len(),
        60,
        "the list after the responses sees them all"
    );
}

/// Creations taken from the test user's quota today (the only quota key of this prefix).
async fn redis_quota_used(app: &TestApp) -> i64 {
    // The app's own client: on a cluster it asks every master for the keys.
    let mut conn = tasklane_shared::redis::connect(&app.settings).unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{}:quota:*", app.settings.redis_prefix))
        .query_async(&mut conn)
        .await
        .unwrap();
    let mut used = 0;
    for key in keys {
        let n: i64 = redis::cmd("GET").arg(&key).query_async(&mut conn).await.unwrap();
        used += n;
    }
    used
}

#[tokio::test]
async fn one_failing_creation_never_fails_the_others_it_shares_a_statement_with() {
    let app = TestApp::spawn_with(|s| s.tasks_daily_quota = 1_000).await;
    let alice = User::new(&app).await;
    let gone = User::new(&app).await;
    // Gone's account is cached by this instance; then it vanishes from the database, so its
    // creations fail (foreign key) after authentication.
    assert_eq!(gone.get("/api/v1/me").await.status(), StatusCode::OK);
    let gone_id = json(gone.get("/api/v1/me").await).await["id"].as_str().unwrap().to_owned();
    sqlx::query("delete from users where id = $1::uuid")
        .bind(&gone_id)
        .execute(&app.db)
        .await
        .unwrap();

    // Hold the writers on a lock, so that the requests below queue up and are written
    // together once it is released: alice's and gone's share statements.
    let mut lock = app.db.begin().await.unwrap();
    sqlx::query("lock table outbox in exclusive mode").execute(&mut *lock).await.unwrap();
    let blockers = futures::future::join_all(
        (0..2).map(|i| alice.create(json!({ "title": format!("first {i}") }))),
    );
    let mixed = futures::future::join_all((0..20).map(|i| {
        let user = if i % 2 == 0 { &alice } else { &gone };
        user.create(json!({ "title": format!("mixed {i}") }))
    }));
    let release = async {
        // Every request has taken its quota (the step before it is handed to the writers),
        // and a writer waits on the lock.
        tasklane_testkit::wait_until(std::time::Duration::from_secs(10), "all 22 requests at the writers", || async {
            let waiting: i64 = sqlx::query_scalar("select count(*) from pg_locks where relation = 'outbox'::regclass and not granted")
                .fetch_one(&app.db)
                .await
                .unwrap();
            (waiting >= 1 && redis_quota_used(&app).await == 22).then_some(())
        })
        .await;
        lock.rollback().await.unwrap();
    };
    let (blocked, mixed, ()) = tokio::join!(blockers, mixed, release);
    assert!(blocked.iter().all(|r| r.status() == StatusCode::CREATED));
    for (i, resp) in mixed.iter().enumerate() {
        if i % 2 == 0 {
            assert_eq!(resp.status(), StatusCode::CREATED, "alice's request {i}");
        } else {
            // There is no account deletion in the API; this stands for any request whose
            // own rows cannot be written.
            assert!(resp.status().is_server_error(), "gone's request {i}: {}", resp.status());
        }
    }
    let created: i64 =
        sqlx::query_scalar("select count(*) from tasks").fetch_one(&app.db).await.unwrap();
    assert_eq!(created, 12, "alice's 2 + 10, none of gone's");
    // The failed requests gave their quota back: only alice's 12 stay used.
    tasklane_testkit::wait_until(std::time::Duration::from_secs(5), "quota given back", || async {
        (redis_quota_used(&app).await == 12).then_some(())
    })
    .await;
}

#[tokio::test]
async fn task_search_is_gated_by_its_flag_per_user() {
    let admin_email = email_address();
    let listed = admin_email.clone();
    let app = TestApp::spawn_with(move |s| s.auth.admin_emails = vec![listed]).await;
    let admin = {
        let _worker = app.spawn_worker().await;
        app.register_verified(&admin_email).await["access_token"].as_str().unwrap().to_owned()
    };
    let allowed = User::new(&app).await;
    let other = User::new(&app).await;
    assert_eq!(other.get("/api/v1/tasks?q=milk").await.status(), StatusCode::OK, "on by default");
    let flags = json(other.get("/api/v1/flags").await).await;
    assert_eq!(flags["flags"]["task_search"], true);

    let me: Value = json(allowed.get("/api/v1/me").await).await;
    let put = app
        .client
        .put(app.url("/api/v1/admin/flags/task_search"))
        .bearer_auth(&admin)
        .json(&json!({ "enabled": true, "rollout_percent": 0, "allow_users": [me["id"]] }))
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), StatusCode::OK);
    assert_eq!(allowed.get("/api/v1/tasks?q=milk").await.status(), StatusCode::OK);
    let refused = other.get("/api/v1/tasks?q=milk").await;
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);
    assert_eq!(json(refused).await["type"], "urn:tasklane:problem:feature_disabled");
    assert_eq!(other.get("/api/v1/tasks").await.status(), StatusCode::OK, "only q is gated");
    assert_eq!(json(other.get("/api/v1/flags").await).await["flags"]["task_search"], false);

    let user_put = app
        .client
        .put(app.url("/api/v1/admin/flags/x"))
        .bearer_auth(&other.token)
        .json(&json!({ "enabled": true, "rollout_percent": 5 }))
        .send()
        .await
        .unwrap();
    assert_eq!(user_put.status(), StatusCode::FORBIDDEN);
    let bad = app
        .client
        .put(app.url("/api/v1/admin/flags/Bad-Key"))
        .bearer_auth(&admin)
        .json(&json!({ "enabled": true, "rollout_percent": 101 }))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let delete = app
        .client
        .delete(app.url("/api/v1/admin/flags/task_search"))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(delete.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        other.get("/api/v1/tasks?q=milk").await.status(),
        StatusCode::OK,
        "back to the default"
    );
}
