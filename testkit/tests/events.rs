//! Real-time events (SPEC section 8) against real API instances, a worker (whose relay
//! publishes), Postgres and Redis.

// Test helpers fail loudly: an unwrap here is an assertion.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use futures::StreamExt;
use reqwest::StatusCode;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tasklane_testkit::{TestApp, email_address, wait_until};

const WAIT: Duration = Duration::from_secs(15);

/// One parsed SSE event.
#[derive(Debug, Clone)]
struct SseEvent {
    id: String,
    event: String,
    data: Value,
}

/// A Server-Sent Events client over reqwest.
struct Sse {
    body: futures::stream::BoxStream<'static, reqwest::Result<bytes::Bytes>>,
    buffer: String,
}

impl Sse {
    async fn open(app_url: &str, auth: Auth<'_>, last_event_id: Option<&str>) -> reqwest::Response {
        let client = reqwest::Client::new();
        let mut request = match auth {
            Auth::Bearer(token) => {
                client.get(format!("{app_url}/api/v1/events")).bearer_auth(token)
            }
            Auth::Ticket(ticket) => client.get(format!("{app_url}/api/v1/events?ticket={ticket}")),
        };
        if let Some(id) = last_event_id {
            request = request.header("last-event-id", id);
        }
        request.send().await.unwrap()
    }

    async fn connect(app_url: &str, auth: Auth<'_>, last_event_id: Option<&str>) -> Self {
        let resp = Self::open(app_url, auth, last_event_id).await;
        assert_eq!(resp.status(), StatusCode::OK);
        assert!(resp.headers()["content-type"].to_str().unwrap().starts_with("text/event-stream"));
        Self { body: resp.bytes_stream().boxed(), buffer: String::new() }
    }

    /// The next event (heartbeat comments and `request.progress` skipped), or `None` when
    /// the stream ends.
    async fn next(&mut self) -> Option<SseEvent> {
        tokio::time::timeout(WAIT, async {
            loop {
                if let Some(end) = self.buffer.find("\n\n") {
                    let block: String = self.buffer.drain(..end + 2).collect();
                    let (mut id, mut event, mut data) =
                        (String::new(), String::new(), String::new());
                    for line in block.lines() {
                        if let Some(v) = line.strip_prefix("id:") {
                            id = v.trim().to_owned();
                        } else if let Some(v) = line.strip_prefix("event:") {
                            event = v.trim().to_owned();
                        } else if let Some(v) = line.strip_prefix("data:") {
                            data.push_str(v.trim_start());
                        }
                    }
                    // Heartbeats, and the progress of the account's own requests' jobs (its
                    // registration's verification email), which interleaves with what these
                    // tests watch; receipts.rs tests it.
                    if data.is_empty() || event == "request.progress" {
                        continue;
                    }
                    return Some(SseEvent {
                        id,
                        event,
                        data: serde_json::from_str(&data).unwrap(),
                    });
                }
                match self.body.next().await {
                    Some(chunk) => {
                        self.buffer.push_str(std::str::from_utf8(&chunk.unwrap()).unwrap())
                    }
                    None => return None,
                }
            }
        })
        .await
        .expect("an event within the deadline")
    }

    async fn expect(&mut self) -> SseEvent {
        self.next().await.expect("the stream is still open")
    }
}

#[derive(Clone, Copy)]
enum Auth<'a> {
    Bearer(&'a str),
    Ticket(&'a str),
}

async fn token(app: &TestApp) -> String {
    app.register(&email_address()).await["access_token"].as_str().unwrap().to_owned()
}

async fn create(app: &TestApp, token: &str, title: &str) -> String {
    let resp = app.post("/api/v1/tasks", &json!({ "title": title }), Some(token)).await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    resp.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn a_client_on_one_instance_sees_a_change_made_through_another() {
    let app = TestApp::spawn().await;
    let _worker = app.spawn_worker().await;
    let other = app.spawn_instance().await;
    let token = token(&app).await;
    let mut events = Sse::connect(&other, Auth::Bearer(&token), None).await;

    let id = create(&app, &token, "seen elsewhere").await;
    let event = events.expect().await;
    assert_eq!(event.event, "task.created");
    assert_eq!(event.data["type"], "task.created");
    assert_eq!(event.data["id"], event.id.as_str(), "the SSE id is the event's id");
    assert_eq!(event.data["data"]["task"]["id"], id.as_str());
    assert_eq!(event.data["data"]["task"]["title"], "seen elsewhere");
    assert!(event.data["at"].is_string());

    let patch = app
        .client
        .patch(app.url(&format!("/api/v1/tasks/{id}")))
        .bearer_auth(&token)
        .header("if-match", "\"1\"")
        .json(&json!({ "status": "done" }))
        .send()
        .await
        .unwrap();
    assert_eq!(patch.status(), StatusCode::OK);
    let updated = events.expect().await;
    assert_eq!(updated.event, "task.updated");
    assert_eq!(updated.data["data"]["changes"]["status"], json!({ "from": "todo", "to": "done" }));
}

#[tokio::test]
async fn last_event_id_replays_exactly_the_missed_events_in_order() {
    let app = TestApp::spawn().await;
    let _worker = app.spawn_worker().await;
    let token = token(&app).await;
    let mut events = Sse::connect(&app.address, Auth::Bearer(&token), None).await;
    let first = create(&app, &token, "one").await;
    let seen = events.expect().await;
    drop(events);

    // Missed while disconnected: a create, a delete and a restore.
    let second = create(&app, &token, "two").await;
    let deleted = app
        .client
        .delete(app.url(&format!("/api/v1/tasks/{first}")))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), StatusCode::NO_CONTENT);
    let restored =
        app.post(&format!("/api/v1/tasks/{first}/restore"), &json!({}), Some(&token)).await;
    assert_eq!(restored.status(), StatusCode::OK);
    // Published (the outbox is empty) before reconnecting.
    wait_until(WAIT, "the events to be published", || async {
        (app.outbox_len().await == 0).then_some(())
    })
    .await;

    let mut resumed = Sse::connect(&app.address, Auth::Bearer(&token), Some(&seen.id)).await;
    let replayed = [resumed.expect().await, resumed.expect().await, resumed.expect().await];
    let kinds: Vec<&str> = replayed.iter().map(|e| e.event.as_str()).collect();
    assert_eq!(kinds, ["task.created", "task.deleted", "task.restored"]);
    assert_eq!(replayed[0].data["data"]["task"]["id"], second.as_str());
    assert_eq!(replayed[1].data["data"]["task_id"], first.as_str());
    assert!(
        replayed
            .windows(2)
            .all(|pair| pair[0].id < pair[1].id || pair[0].id.len() < pair[1].id.len())
    );
    // Then live again, with nothing replayed twice.
    let third = create(&app, &token, "three").await;
    let live = resumed.expect().await;
    assert_eq!(live.data["data"]["task"]["id"], third.as_str());

    // An id older than anything kept gets a resync, whose id moves the client forward.
    let mut stale = Sse::connect(&app.address, Auth::Bearer(&token), Some("1-0")).await;
    let resync = stale.expect().await;
    assert_eq!(resync.event, "resync");
    assert_eq!(resync.id, live.id);

    // A malformed Last-Event-ID is a problem, not a stream.
    let bad = Sse::open(&app.address, Auth::Bearer(&token), Some("yesterday")).await;
    assert_eq!(bad.status(), StatusCode::UNPROCESSABLE_ENTITY);
}

#[tokio::test]
async fn a_user_never_sees_another_users_events() {
    let app = TestApp::spawn().await;
    let _worker = app.spawn_worker().await;
    let alice = token(&app).await;
    let bob = token(&app).await;
    let mut bobs = Sse::connect(&app.address, Auth::Bearer(&bob), None).await;
    for i in 0..3 {
        create(&app, &alice, &format!("alice {i}")).await;
    }
    let own = create(&app, &bob, "bob's").await;
    let first = bobs.expect().await;
    assert_eq!(first.data["data"]["task"]["id"], own.as_str(), "Bob's first event is his own");
    // Nor by replaying: the newest event kept for Bob is his own.
    let mut replay = Sse::connect(&app.address, Auth::Bearer(&bob), Some("0-1")).await;
    let resync = replay.expect().await;
    assert_eq!((resync.event.as_str(), resync.id.as_str()), ("resync", first.id.as_str()));
}

#[tokio::test]
async fn a_ticket_works_once_and_not_after_it_expires() {
    let app = TestApp::spawn().await;
    let _worker = app.spawn_worker().await;
    let token = token(&app).await;
    let issue = || async {
        let resp = app.post("/api/v1/events/ticket", &json!({}), Some(&token)).await;
        assert_eq!(resp.status(), StatusCode::CREATED);
        resp.json::<Value>().await.unwrap()["ticket"].as_str().unwrap().to_owned()
    };
    let ticket = issue().await;
    let mut events = Sse::connect(&app.address, Auth::Ticket(&ticket), None).await;
    let id = create(&app, &token, "via ticket").await;
    assert_eq!(events.expect().await.data["data"]["task"]["id"], id.as_str());
    let reused = Sse::open(&app.address, Auth::Ticket(&ticket), None).await;
    assert_eq!(reused.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(reused.headers()["content-type"], "application/problem+json");

    // A ticket lives 30 s in Redis; make this one expire now.
    let expired = issue().await;
    let hash: String =
        Sha256::digest(expired.as_bytes()).iter().map(|b| format!("{b:02x}")).collect();
    let key = format!("{}:events:ticket:{hash}", app.settings.redis_prefix);
    let mut redis = tasklane_shared::redis::connect(&app.settings).unwrap();
    let ttl: i64 = redis::cmd("TTL").arg(&key).query_async(&mut redis).await.unwrap();
    assert!((1..=30).contains(&ttl), "ttl {ttl}");
    let _: () = redis::cmd("PEXPIRE").arg(&key).arg(1).query_async(&mut redis).await.unwrap();
    wait_until(WAIT, "the ticket to expire", || {
        let (mut redis, key) = (redis.clone(), key.clone());
        async move {
            (!redis::cmd("EXISTS").arg(&key).query_async::<bool>(&mut redis).await.unwrap())
                .then_some(())
        }
    })
    .await;
    assert_eq!(
        Sse::open(&app.address, Auth::Ticket(&expired), None).await.status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        Sse::open(&app.address, Auth::Ticket("made-up"), None).await.status(),
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn a_rolled_back_change_emits_nothing() {
    let app = TestApp::spawn().await;
    let _worker = app.spawn_worker().await;
    let token = token(&app).await;
    let me: Value = app.get_as("/api/v1/me", &token).await.json().await.unwrap();
    let user: uuid::Uuid = me["id"].as_str().unwrap().parse().unwrap();
    let mut events = Sse::connect(&app.address, Auth::Bearer(&token), None).await;

    let mut tx = app.db.begin().await.unwrap();
    tasklane_shared::outbox::record_event(
        &mut tx,
        user,
        "task.deleted",
        json!({ "task_id": "rolled-back" }),
    )
    .await
    .unwrap();
    tx.rollback().await.unwrap();
    let mut tx = app.db.begin().await.unwrap();
    tasklane_shared::outbox::record_event(
        &mut tx,
        user,
        "task.deleted",
        json!({ "task_id": "committed" }),
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();

    let event = events.expect().await;
    assert_eq!(event.data["data"]["task_id"], "committed", "the rolled-back event never arrives");
}

#[tokio::test]
async fn jobs_publish_overdue_events_and_the_websocket_carries_the_same_stream() {
    let app = TestApp::spawn().await;
    let mut settings = app.worker_settings();
    settings.cron.insert("mark_overdue".into(), "* * * * * *".into());
    let _worker = tasklane_testkit::TestWorker::spawn(settings).await;
    let token = token(&app).await;
    let ticket = app
        .post("/api/v1/events/ticket", &json!({}), Some(&token))
        .await
        .json::<Value>()
        .await
        .unwrap()["ticket"]
        .as_str()
        .unwrap()
        .to_owned();
    let ws_url = format!("{}/api/v1/ws?ticket={ticket}", app.address.replacen("http", "ws", 1));
    let (mut socket, _) = tokio_tungstenite::connect_async(ws_url).await.unwrap();

    let resp = app
        .post(
            "/api/v1/tasks",
            &json!({ "title": "late", "due_at": "2020-01-01T00:00:00Z" }),
            Some(&token),
        )
        .await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    let id = resp.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned();

    let mut kinds = Vec::new();
    while kinds.len() < 2 {
        let message =
            tokio::time::timeout(WAIT, socket.next()).await.expect("a message").unwrap().unwrap();
        if let tokio_tungstenite::tungstenite::Message::Text(text) = message {
            let event: Value = serde_json::from_str(&text).unwrap();
            // The registration's email reports its progress too (see `Sse::next`).
            if event["type"] == "request.progress" {
                continue;
            }
            assert_eq!(event["data"]["task"]["id"], id.as_str());
            kinds.push(event["type"].as_str().unwrap().to_owned());
        }
    }
    assert_eq!(kinds, ["task.created", "task.overdue"]);
}

#[tokio::test]
async fn an_upload_stuck_in_processing_is_rejected_and_its_owner_hears_of_it() {
    let app = TestApp::spawn().await;
    let token = token(&app).await;
    let task = create(&app, &token, "with a file").await;
    let declared = app
        .post(
            &format!("/api/v1/tasks/{task}/attachments"),
            &json!({ "filename": "a.txt", "content_type": "text/plain", "size_bytes": 5 }),
            Some(&token),
        )
        .await;
    assert_eq!(declared.status(), StatusCode::CREATED);
    let attachment =
        declared.json::<Value>().await.unwrap()["attachment"]["id"].as_str().unwrap().to_owned();
    // As if its last process_upload attempt died with its worker two hours ago.
    sqlx::query(
        "update attachments set status = 'processing', updated_at = now() - interval '2 hours'
         where id = $1::uuid",
    )
    .bind(&attachment)
    .execute(&app.db)
    .await
    .unwrap();
    let mut events = Sse::connect(&app.address, Auth::Bearer(&token), None).await;

    let mut settings = app.worker_settings();
    settings.cron.insert("expire_uploads".into(), "* * * * * *".into());
    let _worker = tasklane_testkit::TestWorker::spawn(settings).await;
    // The task's own creation may be published first: the rejection follows within a few.
    let mut rejected = None;
    for _ in 0..5 {
        let event = events.expect().await;
        if event.event == "attachment.rejected" {
            rejected = Some(event);
            break;
        }
    }
    let rejected = rejected.expect("an attachment.rejected event");
    assert_eq!(rejected.data["data"]["attachment_id"], attachment.as_str());
    assert_eq!(rejected.data["data"]["task_id"], task.as_str());
    assert_eq!(rejected.data["data"]["status"], "rejected");
    assert_eq!(rejected.data["data"]["reject_reason"], "processing_failed");
}

#[tokio::test]
async fn shutting_down_ends_open_streams_with_a_closing_event() {
    let app = TestApp::spawn().await;
    let token = token(&app).await;
    let instance = tasklane_api::app::Application::build(app.settings.clone()).await.unwrap();
    let url = format!("http://{}", instance.local_addr());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(instance.run_until_stopped(async {
        let _ = stopped.await;
    }));
    let mut events = Sse::connect(&url, Auth::Bearer(&token), None).await;
    stop.send(()).unwrap();
    let closing = events.expect().await;
    assert_eq!(closing.event, "closing");
    assert_eq!(closing.data["data"]["reason"], "closing");
    assert!(events.next().await.is_none(), "the stream ends");
    // Well within the 25 s grace: streams do not hold up the drain.
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("the server stops")
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn a_client_that_stops_reading_is_disconnected_as_a_slow_consumer() {
    let app = TestApp::spawn().await;
    let token = token(&app).await;
    let me: Value = app.get_as("/api/v1/me", &token).await.json().await.unwrap();
    let user: uuid::Uuid = me["id"].as_str().unwrap().parse().unwrap();
    let mut events = Sse::connect(&app.address, Auth::Bearer(&token), None).await;

    // Publish (as the relay does) while the client reads nothing, until the socket buffers
    // are full and the connection's own buffer overflows.
    let redis = tasklane_shared::redis::connect(&app.settings).unwrap();
    let keys = tasklane_shared::redis::Keys::new(app.settings.redis_prefix.clone());
    let padding = "x".repeat(1_000);
    wait_until(Duration::from_secs(60), "the hub to drop the slow client", || {
        let (mut redis, keys, padding) = (redis.clone(), keys.clone(), padding.clone());
        let app = &app;
        async move {
            for _ in 0..500 {
                let recorded = tasklane_shared::events::Recorded {
                    user_id: user,
                    at: chrono::Utc::now(),
                    data: json!({ "task_id": padding }),
                };
                tasklane_shared::events::publish(&mut redis, &keys, "task.deleted", &recorded)
                    .await
                    .unwrap();
            }
            let metrics =
                app.client.get(app.url("/metrics")).send().await.unwrap().text().await.unwrap();
            metrics
                .lines()
                .any(|line| {
                    line.starts_with("events_slow_consumers_total") && !line.ends_with(" 0")
                })
                .then_some(())
        }
    })
    .await;
    // What was buffered arrives, then the reason, then the end: the buffer never grew.
    let mut last = None;
    while let Some(event) = events.next().await {
        last = Some(event);
    }
    let last = last.unwrap();
    assert_eq!(last.event, "closing");
    assert_eq!(last.data["data"]["reason"], "slow_consumer");
}
