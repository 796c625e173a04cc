//! The read paths served from caches (`GET /me` from the account cache, `GET /tasks/{id}`
//! and list pages from the task cache) with two API instances behind one database and
//! Redis: a write through one instance is seen by the next read on the other. And with
//! Redis down, reads are the database's answers rather than what an instance holds.

// Test helpers fail loudly: an unwrap here is an assertion.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use tasklane_testkit::{TestApp, email_address, wait_until};

/// Announcements cross instances through Redis pub/sub: well under this.
const HEARD: Duration = Duration::from_secs(3);

async fn get(app: &TestApp, base: &str, path: &str, token: &str) -> reqwest::Response {
    app.client.get(format!("{base}{path}")).bearer_auth(token).send().await.unwrap()
}

async fn me(app: &TestApp, base: &str, token: &str) -> Value {
    let resp = get(app, base, "/api/v1/me", token).await;
    assert_eq!(resp.status(), StatusCode::OK);
    resp.json().await.unwrap()
}

/// A new user's access token, and the path of the one task they created, titled `title`.
async fn user_with_task(app: &TestApp, title: &str) -> (String, String) {
    let session = app.register(&email_address()).await;
    let token = session["access_token"].as_str().unwrap().to_owned();
    let created = app.post("/api/v1/tasks", &json!({ "title": title }), Some(&token)).await;
    let task: Value = created.json().await.unwrap();
    (token, format!("/api/v1/tasks/{}", task["id"].as_str().unwrap()))
}

/// Retitles the task at `path` of version `version` through the instance at `base`.
async fn retitle(app: &TestApp, base: &str, path: &str, token: &str, version: u32, title: &str) {
    let resp = app
        .client
        .patch(format!("{base}{path}"))
        .bearer_auth(token)
        .header("if-match", format!("\"{version}\""))
        .json(&json!({ "title": title }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
}

#[tokio::test]
async fn a_profile_change_through_one_instance_is_seen_by_the_next_me_on_every_instance() {
    let app = TestApp::spawn().await;
    let other = app.spawn_instance().await;
    let _worker = app.spawn_worker().await;
    let email = email_address();
    let session = app.register(&email).await;
    let token = session["access_token"].as_str().unwrap();

    // Both instances have the account cached; what they serve is what registering answered.
    for base in [&app.address, &other] {
        for _ in 0..2 {
            assert_eq!(me(&app, base, token).await, session["user"]);
        }
    }

    let change = json!({ "display_name": "Ada", "timezone": "Europe/Paris", "digest_hour": 7 });
    let resp = app
        .client
        .patch(format!("{other}/api/v1/me"))
        .bearer_auth(token)
        .json(&change)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let changed: Value = resp.json().await.unwrap();
    assert_eq!(changed["display_name"], "Ada");
    assert_eq!(me(&app, &other, token).await, changed, "at once where it was made");
    wait_until(HEARD, "the other instance to serve the new profile", || async {
        (me(&app, &app.address, token).await == changed).then_some(())
    })
    .await;

    // Verifying the address (through the first instance) shows on the second.
    assert_eq!(me(&app, &other, token).await["email_verified"], false);
    app.register_verified_existing(&email).await;
    assert_eq!(me(&app, &app.address, token).await["email_verified"], true, "at once");
    wait_until(HEARD, "the other instance to serve the verified address", || async {
        (me(&app, &other, token).await["email_verified"] == true).then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_task_write_through_one_instance_is_seen_by_the_next_read_on_another() {
    let app = TestApp::spawn().await;
    let other = app.spawn_instance().await;
    let (token, path) = user_with_task(&app, "first").await;
    let token = token.as_str();

    // Cached on the first instance.
    for read in [path.as_str(), "/api/v1/tasks"] {
        get(&app, &app.address, read, token).await;
        let hit = get(&app, &app.address, read, token).await;
        assert_eq!(hit.headers()["x-cache"], "hit", "{read}");
    }

    // Changed through the other: the very next read on the first sees it.
    retitle(&app, &other, &path, token, 1, "changed elsewhere").await;
    let read: Value = get(&app, &app.address, &path, token).await.json().await.unwrap();
    assert_eq!(read["title"], "changed elsewhere");
    let page: Value = get(&app, &app.address, "/api/v1/tasks", token).await.json().await.unwrap();
    assert_eq!(page["data"][0]["title"], "changed elsewhere");

    // So is a creation, once the first instance has the new page cached.
    assert_eq!(get(&app, &app.address, "/api/v1/tasks", token).await.headers()["x-cache"], "hit");
    let resp = app
        .client
        .post(format!("{other}/api/v1/tasks"))
        .bearer_auth(token)
        .json(&json!({ "title": "second" }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    let page: Value = get(&app, &app.address, "/api/v1/tasks", token).await.json().await.unwrap();
    assert_eq!(page["data"].as_array().unwrap().len(), 2);
    assert_eq!(page["data"][0]["title"], "second");
}

#[tokio::test]
async fn an_entry_cached_by_one_instance_is_a_hit_on_another_until_either_writes() {
    let app = TestApp::spawn().await;
    let other = app.spawn_instance().await;
    let (token, path) = user_with_task(&app, "first").await;
    let token = token.as_str();

    // Read (and so cached) on the first instance only: the other's first read is a hit too,
    // from the copy in Redis, and its next one from its own memory.
    for read in [path.as_str(), "/api/v1/tasks"] {
        assert_eq!(get(&app, &app.address, read, token).await.headers()["x-cache"], "miss");
        for _ in 0..2 {
            assert_eq!(get(&app, &other, read, token).await.headers()["x-cache"], "hit", "{read}");
        }
    }

    // Both now hold the task in memory; a change through the first is seen by the very
    // next read on the other, and the reverse.
    for (version, (writer, reader)) in [(1, (&app.address, &other)), (2, (&other, &app.address))] {
        let title = format!("changed through {writer}");
        retitle(&app, writer, &path, token, version, &title).await;
        let read = get(&app, reader, &path, token).await;
        assert_eq!(read.headers()["x-cache"], "miss");
        assert_eq!(read.json::<Value>().await.unwrap()["title"], title.as_str());
        let page: Value = get(&app, reader, "/api/v1/tasks", token).await.json().await.unwrap();
        assert_eq!(page["data"][0]["title"], title.as_str());
    }
}

/// Reads share their generation round trips; one that arrives while a round trip is in
/// flight must wait for the next, or it could miss a write answered just before it.
#[tokio::test]
async fn under_concurrent_reads_every_read_after_a_write_sees_it() {
    let app = TestApp::spawn().await;
    let other = app.spawn_instance().await;
    let (token, path) = user_with_task(&app, "0").await;
    get(&app, &app.address, &path, &token).await;

    // Readers keep the first instance's round trips busy with hits on the same task.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let readers: Vec<_> = (0..16)
        .map(|_| {
            let client = app.client.clone();
            let (url, token, stop) =
                (format!("{}{path}", app.address), token.clone(), stop.clone());
            tokio::spawn(async move {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let resp = client.get(&url).bearer_auth(&token).send().await.unwrap();
                    assert_eq!(resp.status(), StatusCode::OK);
                }
            })
        })
        .collect();

    for version in 1..=40 {
        retitle(&app, &other, &path, &token, version, &version.to_string()).await;
        let read: Value = get(&app, &app.address, &path, &token).await.json().await.unwrap();
        assert_eq!(read["title"], version.to_string(), "the read right after write {version}");
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for reader in readers {
        reader.await.unwrap();
    }
}

#[tokio::test]
async fn while_redis_is_down_task_reads_are_answered_from_the_database_and_hits_resume_after() {
    let mut redis = tasklane_testkit::TestRedis::start().await;
    let url = redis.url();
    let app = TestApp::spawn_with(|s| s.redis_url = url.into()).await;
    let (token, path) = user_with_task(&app, "kept").await;
    let token = token.as_str();
    for read in [path.as_str(), "/api/v1/tasks"] {
        get(&app, &app.address, read, token).await;
        assert_eq!(get(&app, &app.address, read, token).await.headers()["x-cache"], "hit");
    }

    // Without Redis no instance can know the current generation: nothing it holds is
    // served, and every read is the database's answer.
    redis.stop().await;
    for _ in 0..3 {
        let read = get(&app, &app.address, &path, token).await;
        assert_eq!(read.status(), StatusCode::OK);
        assert_eq!(read.headers()["x-cache"], "miss");
        assert_eq!(read.json::<Value>().await.unwrap()["title"], "kept");
        let page = get(&app, &app.address, "/api/v1/tasks", token).await;
        assert_eq!(page.headers()["x-cache"], "miss");
        assert_eq!(page.json::<Value>().await.unwrap()["data"][0]["title"], "kept");
    }

    redis.start_again().await;
    wait_until(Duration::from_secs(10), "cache hits again", || async {
        get(&app, &app.address, &path, token).await;
        let read = get(&app, &app.address, &path, token).await;
        (read.headers()["x-cache"] == "hit").then_some(())
    })
    .await;
}

/// Concurrent reads of several users share their generation round trips; on a cluster each
/// user's generation is in a slot of its own, and every read must still be a hit.
#[tokio::test]
async fn concurrent_reads_of_many_users_are_all_hits() {
    let app = TestApp::spawn().await;
    let mut users = Vec::new();
    for i in 0..4 {
        let (token, path) = user_with_task(&app, &format!("task {i}")).await;
        get(&app, &app.address, &path, &token).await;
        users.push((token, path));
    }
    let app = &app;
    let reads = users.iter().cycle().take(64).map(|(token, path)| async move {
        get(app, &app.address, path, token).await.headers()["x-cache"].clone()
    });
    let caches = futures::future::join_all(reads).await;
    assert!(caches.iter().all(|cache| cache == "hit"), "{caches:?}");
}
