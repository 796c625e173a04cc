//! Operating the queue (SPEC section 10) against the real stack with several workers: pauses
//! that hold fleet-wide and across restarts and a Redis that lost them, cancelling pending
//! and running jobs, bulk retry and discard of the dead set, fleet-wide limits, schedules
//! run now and paused, the live fleet, and the audit log of every admin write.

// Test helpers fail loudly: an unwrap here is an assertion.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use tasklane_shared::domain::jobs::JobState;
use tasklane_shared::jobs::{CronJob, MarkOverdue, Queue};
use tasklane_shared::outbox::{self, Relay};
use tasklane_shared::queue::{Outcome, QueueStore};
use tasklane_testkit::jobs::{dead_emails, enqueue_committed, notice_email, wait_for_state};
use tasklane_testkit::{GateMode, TcpGate, TestApp, TestWorker, email_address, wait_until};

const DEADLINE: Duration = Duration::from_secs(30);

async fn get(app: &TestApp, path: &str, token: &str) -> Value {
    let resp = app.get_as(path, token).await;
    assert_eq!(resp.status(), StatusCode::OK, "{path}");
    resp.json().await.unwrap()
}

async fn post(app: &TestApp, path: &str, body: Value, token: &str) -> (StatusCode, Value) {
    let resp = app.post(path, &body, Some(token)).await;
    let status = resp.status();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// Proves the fleet is fetching: a maintenance job enqueued now runs to its end. Whatever
/// a paused queue holds back was passed over by the same workers meanwhile.
async fn fleet_is_working(app: &TestApp, store: &QueueStore) {
    let id = enqueue_committed(app, &MarkOverdue::for_tick(chrono::Utc::now())).await;
    wait_for_state(store, Queue::Maintenance, &id, JobState::Done, DEADLINE).await;
}

async fn state_of(store: &QueueStore, queue: Queue, id: &str) -> JobState {
    store.job(queue, id).await.unwrap().unwrap().state
}

#[tokio::test]
async fn a_paused_queue_holds_its_jobs_on_every_worker_even_when_redis_lost_the_pause() {
    let (app, token) = TestApp::spawn_admin(|_| {}).await;
    let store = app.spawn_store();
    let mut workers = Vec::new();
    for _ in 0..2 {
        workers.push(app.worker_process().spawn().unwrap());
    }
    let (status, paused) = post(&app, "/api/v1/admin/queues/emails/pause", json!({}), &token).await;
    assert_eq!(status, StatusCode::OK, "{paused}");
    assert_eq!(paused["paused"], true);
    assert_eq!(paused["changed"], true);

    let to = email_address();
    let id = enqueue_committed(&app, &notice_email(&to)).await;
    wait_until(DEADLINE, "the job relayed", || async {
        store.job(Queue::Emails, &id).await.unwrap().map(|_| ())
    })
    .await;
    fleet_is_working(&app, &store).await;
    assert_eq!(state_of(&store, Queue::Emails, &id).await, JobState::Pending);
    let queues = get(&app, "/api/v1/admin/queues", &token).await;
    let emails =
        queues["queues"].as_array().unwrap().iter().find(|q| q["queue"] == "emails").unwrap();
    assert_eq!(emails["paused"], true);
    assert_eq!(emails["pending"], 1);

    // Redis loses the copy of the pause (as a restart without data or a failover would):
    // nothing is claimed until a copy is back from Postgres, and it still says paused.
    let mut conn = store.connection();
    let _: () = redis::cmd("DEL")
        .arg(store.key(Queue::Emails, "controls"))
        .query_async(&mut conn)
        .await
        .unwrap();
    fleet_is_working(&app, &store).await;
    fleet_is_working(&app, &store).await;
    assert_eq!(state_of(&store, Queue::Emails, &id).await, JobState::Pending);
    assert!(app.emails_to(&to).await.is_empty());

    let (status, resumed) =
        post(&app, "/api/v1/admin/queues/emails/resume", json!({}), &token).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(resumed["paused"], false);
    app.wait_for_emails(&to, 1, DEADLINE).await;
    wait_for_state(&store, Queue::Emails, &id, JobState::Done, DEADLINE).await;

    let audit = get(&app, "/api/v1/admin/audit?action=queue.", &token).await;
    let actions: Vec<&str> =
        audit["data"].as_array().unwrap().iter().map(|e| e["action"].as_str().unwrap()).collect();
    assert_eq!(actions, ["queue.resume", "queue.pause"], "{audit}");
    assert_eq!(audit["data"][0]["target"], "queue:emails");
    for worker in &mut workers {
        worker.start_kill().unwrap();
    }
}

#[tokio::test]
async fn a_paused_kind_stays_paused_across_a_worker_restart_and_its_queue_keeps_running() {
    let (app, token) = TestApp::spawn_admin(|_| {}).await;
    let store = app.spawn_store();
    let (status, _) = post(&app, "/api/v1/admin/kinds/send_email/pause", json!({}), &token).await;
    assert_eq!(status, StatusCode::OK);
    let to = email_address();
    let id = enqueue_committed(&app, &notice_email(&to)).await;
    {
        let worker = app.spawn_worker().await;
        fleet_is_working(&app, &store).await;
        worker.stop().await.unwrap();
    }
    let worker = app.spawn_worker().await;
    fleet_is_working(&app, &store).await;
    assert_eq!(state_of(&store, Queue::Emails, &id).await, JobState::Pending);
    let metrics = app.client.get(format!("http://{}/metrics", worker.addr)).send().await.unwrap();
    let metrics = metrics.text().await.unwrap();
    assert!(metrics.contains("kind_paused{kind=\"send_email\"} 1"), "{metrics}");
    assert!(metrics.contains("queue_paused{queue=\"emails\"} 0"), "{metrics}");
    let kinds = get(&app, "/api/v1/admin/kinds", &token).await;
    let kind = kinds.as_array().unwrap().iter().find(|k| k["kind"] == "send_email").unwrap();
    assert_eq!(kind["paused"], true, "{kind}");
    assert_eq!(kind["queue_paused"], false);
    assert_eq!(kind["pending"], 1);

    let (status, _) = post(&app, "/api/v1/admin/kinds/send_email/resume", json!({}), &token).await;
    assert_eq!(status, StatusCode::OK);
    app.wait_for_emails(&to, 1, DEADLINE).await;

    let (status, problem) =
        post(&app, "/api/v1/admin/kinds/no_such_kind/pause", json!({}), &token).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{problem}");
    let (status, _) = post(&app, "/api/v1/admin/queues/nope/pause", json!({}), &token).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn cancelling_a_pending_job_means_it_never_runs_and_a_second_cancel_is_a_conflict() {
    let (app, token) = TestApp::spawn_admin(|_| {}).await;
    let store = app.spawn_store();
    post(&app, "/api/v1/admin/kinds/send_email/pause", json!({}), &token).await;
    let _worker = app.spawn_worker().await;
    let to = email_address();
    let id = enqueue_committed(&app, &notice_email(&to)).await;
    wait_for_state(&store, Queue::Emails, &id, JobState::Pending, DEADLINE).await;

    let (status, cancelled) =
        post(&app, &format!("/api/v1/admin/jobs/{id}/cancel"), json!({}), &token).await;
    assert_eq!(status, StatusCode::OK, "{cancelled}");
    assert_eq!(cancelled["was"], "pending");
    assert_eq!(cancelled["state"], "cancelled");
    let (status, again) =
        post(&app, &format!("/api/v1/admin/jobs/{id}/cancel"), json!({}), &token).await;
    assert_eq!(status, StatusCode::CONFLICT, "{again}");

    post(&app, "/api/v1/admin/kinds/send_email/resume", json!({}), &token).await;
    let probe = email_address();
    enqueue_committed(&app, &notice_email(&probe)).await;
    app.wait_for_emails(&probe, 1, DEADLINE).await;
    assert!(app.emails_to(&to).await.is_empty(), "a cancelled job never sends");
    let record = outbox::record(&app.db, id.parse().unwrap()).await.unwrap().unwrap();
    assert_eq!(record.outcome.as_deref(), Some("cancelled"));
    let job = get(&app, &format!("/api/v1/admin/jobs/{id}"), &token).await;
    assert_eq!(job["state"], "cancelled");
}

#[tokio::test]
async fn a_job_still_in_the_outbox_is_cancelled_there_and_never_reaches_redis() {
    let (app, token) = TestApp::spawn_admin(|_| {}).await;
    // No worker: nothing relays it.
    let id = enqueue_committed(&app, &notice_email(&email_address())).await;
    let (status, cancelled) =
        post(&app, &format!("/api/v1/admin/jobs/{id}/cancel"), json!({}), &token).await;
    assert_eq!(status, StatusCode::OK, "{cancelled}");
    assert_eq!(cancelled["was"], "waiting");
    let store = app.spawn_store();
    Relay::new(app.db.clone(), store.clone(), Duration::from_secs(1)).relay_batch().await.unwrap();
    assert!(store.job(Queue::Emails, &id).await.unwrap().is_none());
    let (status, _) = post(
        &app,
        &format!("/api/v1/admin/jobs/{}/cancel", uuid::Uuid::now_v7()),
        json!({}),
        &token,
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn cancelling_a_running_job_stops_its_handler_and_refuses_its_late_outcome() {
    let gate = TcpGate::smtp(GateMode::Hold).await;
    let smtp = gate.url("smtp");
    let (app, token) = TestApp::spawn_admin(|_| {}).await;
    let store = app.spawn_store();
    let mut settings = app.worker_settings();
    settings.smtp_url = smtp.into();
    let _worker = TestWorker::spawn(settings).await;
    let to = email_address();
    let id = enqueue_committed(&app, &notice_email(&to)).await;
    // The handler is mid-send: SMTP holds it.
    wait_until(DEADLINE, "the handler connected to SMTP", || async {
        (gate.open() == 1).then_some(())
    })
    .await;
    assert_eq!(state_of(&store, Queue::Emails, &id).await, JobState::Running);

    let (status, cancelled) =
        post(&app, &format!("/api/v1/admin/jobs/{id}/cancel"), json!({}), &token).await;
    assert_eq!(status, StatusCode::OK, "{cancelled}");
    assert_eq!(cancelled["was"], "running");
    // The handler is dropped at its worker's next lease renewal, closing its connection.
    wait_until(Duration::from_secs(5), "the handler stopped", || async {
        (gate.open() == 0).then_some(())
    })
    .await;
    gate.set(GateMode::Forward);
    let probe = email_address();
    enqueue_committed(&app, &notice_email(&probe)).await;
    app.wait_for_emails(&probe, 1, DEADLINE).await;
    assert!(app.emails_to(&to).await.is_empty());
    assert_eq!(state_of(&store, Queue::Emails, &id).await, JobState::Cancelled);
}

#[tokio::test]
async fn a_claim_cancelled_under_its_worker_cannot_record_an_outcome() {
    let (app, token) = TestApp::spawn_admin(|_| {}).await;
    let store = app.spawn_store();
    let id = enqueue_committed(&app, &notice_email(&email_address())).await;
    Relay::new(app.db.clone(), store.clone(), Duration::from_secs(1)).relay_batch().await.unwrap();
    let claim = wait_until(DEADLINE, "a claim", || async {
        store.claim(Queue::Emails, "send_email", "w1", 1).await.unwrap().pop()
    })
    .await;
    assert_eq!(claim.id, id);
    let (status, _) =
        post(&app, &format!("/api/v1/admin/jobs/{id}/cancel"), json!({}), &token).await;
    assert_eq!(status, StatusCode::OK);
    assert!(!store.finish(&claim, &Outcome::Succeeded, Duration::ZERO).await.unwrap());
    assert!(store.renew(Queue::Emails, &[claim.claim_ref()]).await.unwrap().is_empty());
    assert_eq!(state_of(&store, Queue::Emails, &id).await, JobState::Cancelled);
}

#[tokio::test]
async fn bulk_retry_and_discard_take_the_dead_jobs_a_filter_matches_once() {
    let (app, token) = TestApp::spawn_admin(|_| {}).await;
    let store = app.spawn_store();
    let smtp = dead_emails(&app, &store, 30, "SMTP 451: try again later").await;
    let other = dead_emails(&app, &store, 12, "permanent failure: recipient rejected").await;

    let filter = json!({ "state": "dead", "queue": "emails", "kind": "send_email", "error_contains": "smtp 451" });
    let (status, result) = post(&app, "/api/v1/admin/jobs/retry", filter.clone(), &token).await;
    assert_eq!(status, StatusCode::OK, "{result}");
    assert_eq!(result, json!({ "matched": 30, "changed": 30 }));
    let (_, again) = post(&app, "/api/v1/admin/jobs/retry", filter, &token).await;
    assert_eq!(again, json!({ "matched": 0, "changed": 0 }), "idempotent");
    for id in &smtp {
        assert_eq!(state_of(&store, Queue::Emails, id).await, JobState::Pending);
        let record = outbox::record(&app.db, id.parse().unwrap()).await.unwrap().unwrap();
        assert_eq!(record.outcome, None, "in flight again, watched by the reconciler");
    }
    for id in &other {
        assert_eq!(state_of(&store, Queue::Emails, id).await, JobState::Dead);
    }

    let (status, discarded) =
        post(&app, "/api/v1/admin/jobs/discard", json!({ "state": "dead" }), &token).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(discarded, json!({ "matched": 12, "changed": 12 }));
    assert!(store.job(Queue::Emails, &other[0]).await.unwrap().is_none());

    let (status, problem) =
        post(&app, "/api/v1/admin/jobs/retry", json!({ "state": "done" }), &token).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{problem}");
    let (status, _) = post(
        &app,
        "/api/v1/admin/jobs/retry",
        json!({ "state": "dead", "queue": "uploads", "kind": "send_email" }),
        &token,
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let audit = get(&app, "/api/v1/admin/audit?action=jobs.", &token).await;
    assert_eq!(audit["data"].as_array().unwrap().len(), 3, "{audit}");
}

#[tokio::test]
async fn a_rate_limit_holds_for_the_whole_fleet() {
    let (app, token) = TestApp::spawn_admin(|_| {}).await;
    let store = app.spawn_store();
    let rate = 10.0;
    let (status, limits) = post_put(
        &app,
        "/api/v1/admin/kinds/send_email/limits",
        json!({ "rate_per_second": rate, "concurrency": null }),
        &token,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{limits}");
    let mut workers = Vec::new();
    for _ in 0..3 {
        workers.push(app.spawn_worker().await);
    }
    let mut ids = Vec::new();
    for _ in 0..30 {
        ids.push(enqueue_committed(&app, &notice_email(&email_address())).await);
    }
    for id in &ids {
        wait_for_state(&store, Queue::Emails, id, JobState::Done, DEADLINE).await;
    }
    // When each attempt started, by Redis' clock: no second holds more starts than the rate
    // plus the bucket's one-token burst.
    let mut starts = Vec::new();
    for id in &ids {
        let job = store.job(Queue::Emails, id).await.unwrap().unwrap();
        starts.push(job.history.last().unwrap().started_ms.unwrap());
    }
    starts.sort_unstable();
    for (i, end) in starts.iter().enumerate() {
        let within = starts[..=i].iter().filter(|start| *start > &(end - 1000)).count();
        assert!(
            within as f64 <= rate + 1.0,
            "{within} starts in the second up to {end}: {starts:?}"
        );
    }
    let span = (starts[starts.len() - 1] - starts[0]) as f64 / 1000.0;
    assert!(span >= (30.0 - 1.0) / rate - 0.1, "30 jobs at {rate}/s took {span}s");
}

#[tokio::test]
async fn a_concurrency_limit_holds_for_the_whole_fleet() {
    let gate = TcpGate::smtp(GateMode::Hold).await;
    let smtp = gate.url("smtp");
    // The two sends the gate held fail when it opens, and are retried at once.
    let (app, token) = TestApp::spawn_admin(|s| s.retry_scale = 0.001).await;
    let (status, _) = post_put(
        &app,
        "/api/v1/admin/kinds/send_email/limits",
        json!({ "concurrency": 2 }),
        &token,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let mut workers = Vec::new();
    for _ in 0..3 {
        let mut settings = app.worker_settings();
        settings.smtp_url = smtp.clone().into();
        workers.push(TestWorker::spawn(settings).await);
    }
    let store = app.spawn_store();
    let mut addresses = Vec::new();
    for _ in 0..6 {
        let to = email_address();
        enqueue_committed(&app, &notice_email(&to)).await;
        addresses.push(to);
    }
    wait_until(DEADLINE, "two sends held", || async { (gate.open() == 2).then_some(()) }).await;
    fleet_is_working(&app, &store).await;
    assert_eq!(gate.open(), 2);
    let kinds = get(&app, "/api/v1/admin/kinds", &token).await;
    let kind = kinds.as_array().unwrap().iter().find(|k| k["kind"] == "send_email").unwrap();
    assert_eq!(kind["running"], 2, "{kind}");
    assert_eq!(kind["limits"]["concurrency"], 2);
    gate.set(GateMode::Forward);
    for to in &addresses {
        app.wait_for_emails(to, 1, DEADLINE).await;
    }

    let (status, problem) = post_put(
        &app,
        "/api/v1/admin/kinds/send_email/limits",
        json!({ "concurrency": 0 }),
        &token,
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{problem}");
}

async fn post_put(app: &TestApp, path: &str, body: Value, token: &str) -> (StatusCode, Value) {
    let resp = app.client.put(app.url(path)).bearer_auth(token).json(&body).send().await.unwrap();
    let status = resp.status();
    (status, resp.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn a_schedule_runs_now_on_demand_and_a_paused_one_enqueues_no_ticks() {
    let (app, token) = TestApp::spawn_admin(|s| {
        s.cron.insert("mark_overdue".into(), "* * * * * *".into());
    })
    .await;
    let store = app.spawn_store();
    let (status, paused) =
        post(&app, "/api/v1/admin/schedules/mark_overdue/pause", json!({}), &token).await;
    assert_eq!(status, StatusCode::OK, "{paused}");
    // Ticks enqueued before the pause (while the admin signed up) are not counted.
    let paused_at: chrono::DateTime<chrono::Utc> =
        sqlx::query_scalar("select now()").fetch_one(&app.db).await.unwrap();
    let _worker = app.spawn_worker().await;
    let (status, run) =
        post(&app, "/api/v1/admin/schedules/mark_overdue/run", json!({}), &token).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{run}");
    let id = run["job_id"].as_str().unwrap().to_owned();
    wait_for_state(&store, Queue::Maintenance, &id, JobState::Done, DEADLINE).await;
    // Two more runs now, each after at least a whole second: ticks would have fired.
    for _ in 0..2 {
        let before = chrono::Utc::now();
        wait_until(DEADLINE, "a second passed", || async {
            (chrono::Utc::now() - before >= chrono::Duration::milliseconds(1100)).then_some(())
        })
        .await;
        let (_, run) =
            post(&app, "/api/v1/admin/schedules/mark_overdue/run", json!({}), &token).await;
        wait_for_state(
            &store,
            Queue::Maintenance,
            run["job_id"].as_str().unwrap(),
            JobState::Done,
            DEADLINE,
        )
        .await;
    }
    let overdue: i64 = sqlx::query_scalar(
        "select count(*) from outbox where kind = 'mark_overdue' and created_at > $1",
    )
    .bind(paused_at)
    .fetch_one(&app.db)
    .await
    .unwrap();
    assert_eq!(overdue, 3, "the three runs asked for, no tick");
    let schedules = get(&app, "/api/v1/admin/schedules", &token).await;
    let schedule =
        schedules.as_array().unwrap().iter().find(|s| s["kind"] == "mark_overdue").unwrap();
    assert_eq!(schedule["paused"], true);
    let (status, _) = post(&app, "/api/v1/admin/schedules/send_email/run", json!({}), &token).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "send_email has no schedule");
}

#[tokio::test]
async fn the_fleet_lists_live_workers_and_a_stopped_one_leaves() {
    let (app, token) = TestApp::spawn_admin(|_| {}).await;
    let first = app.spawn_worker().await;
    let _second = app.spawn_worker().await;
    let listed = wait_until(DEADLINE, "two workers listed", || async {
        let workers = get(&app, "/api/v1/admin/workers", &token).await;
        (workers.as_array().unwrap().len() == 2).then_some(workers)
    })
    .await;
    let worker = &listed[0];
    assert_eq!(worker["pid"], std::process::id());
    assert!(worker["id"].as_str().unwrap().contains(&std::process::id().to_string()));
    assert!(worker["last_seen"].is_string() && worker["version"].is_string(), "{worker}");
    first.stop().await.unwrap();
    wait_until(DEADLINE, "one worker listed", || async {
        let workers = get(&app, "/api/v1/admin/workers", &token).await;
        (workers.as_array().unwrap().len() == 1).then_some(())
    })
    .await;
}

#[tokio::test]
async fn operating_the_queue_is_for_admins_only() {
    let (app, _admin) = TestApp::spawn_admin(|_| {}).await;
    let user = {
        let _worker = app.spawn_worker().await;
        app.register_verified(&email_address()).await
    };
    let token = user["access_token"].as_str().unwrap();
    for path in ["/api/v1/admin/kinds", "/api/v1/admin/workers", "/api/v1/admin/audit"] {
        assert_eq!(app.get_as(path, token).await.status(), StatusCode::FORBIDDEN, "{path}");
    }
    let (status, _) = post(&app, "/api/v1/admin/queues/emails/pause", json!({}), token).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) =
        post(&app, "/api/v1/admin/jobs/retry", json!({ "state": "dead" }), token).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn waiting_high_priority_emails_start_before_any_low_priority_digest() {
    let (app, token) = TestApp::spawn_admin(|_| {}).await;
    let store = app.spawn_store();
    // Reset-like emails (high) and digests (low) land in the queue in one step; digests of an
    // account that does not exist end at once, without an email.
    let mut jobs = Vec::new();
    for i in 0..200 {
        let (kind, payload) = if i % 2 == 0 {
            ("send_email", serde_json::to_string(&notice_email(&email_address())).unwrap())
        } else {
            let digest = tasklane_shared::jobs::SendDigest {
                user_id: uuid::Uuid::now_v7(),
                date: "2026-12-02".into(),
                tick: chrono::Utc::now(),
            };
            ("send_digest", serde_json::to_string(&digest).unwrap())
        };
        jobs.push(tasklane_shared::queue::NewJob::plain(kind, payload, 3));
    }
    store.push(Queue::Emails, &jobs).await.unwrap();
    let kinds = get(&app, "/api/v1/admin/kinds", &token).await;
    let priority = |kind: &str| {
        kinds.as_array().unwrap().iter().find(|k| k["kind"] == kind).unwrap()["priority"].clone()
    };
    assert_eq!((priority("send_email"), priority("send_digest")), (json!("high"), json!("low")));

    let _workers = (app.spawn_worker().await, app.spawn_worker().await);
    let mut started = (Vec::new(), Vec::new());
    for job in &jobs {
        wait_for_state(&store, Queue::Emails, &job.id.to_string(), JobState::Done, DEADLINE).await;
        let record = store.job(Queue::Emails, &job.id.to_string()).await.unwrap().unwrap();
        let at = record.history.last().unwrap().started_ms.unwrap();
        if job.kind == "send_email" { started.0.push(at) } else { started.1.push(at) }
    }
    let last_email = started.0.iter().max().unwrap();
    let first_digest = started.1.iter().min().unwrap();
    assert!(
        first_digest >= last_email,
        "a digest started at {first_digest}, an email at {last_email}"
    );
}
