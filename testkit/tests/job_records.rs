//! Postgres' job records and the reconciler (SPEC section 9, "Nothing lost while Postgres
//! holds", "Every producer goes through the outbox", "Poison is isolated"), against real
//! processes and servers: Redis emptied with jobs in flight, poison rows among good ones, a
//! digest run killed halfway.

// Test helpers fail loudly: an unwrap here is an assertion.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::time::{Duration, Instant};

use chrono::DurationRound;
use reqwest::StatusCode;
use serde_json::Value;
use tasklane_shared::domain::jobs::JobState;
use tasklane_shared::jobs::{DailyDigest, EmailMessage, Queue, SendEmail};
use tasklane_shared::outbox;
use tasklane_shared::queue::NewJob;
use tasklane_testkit::{
    GateMode, TcpGate, TestApp, TestRedis, TestWorker, email_address, signal, unique, wait_until,
};

const DEADLINE: Duration = Duration::from_secs(30);

fn email(to: &str, key: &str) -> SendEmail {
    SendEmail {
        idempotency_key: key.to_owned(),
        to: to.to_owned(),
        message: EmailMessage::PasswordChanged { display_name: Some(key.to_owned()) },
    }
}

/// Outcomes of the job records, by outcome (`None`: not finished).
async fn outcomes(app: &TestApp) -> HashMap<Option<String>, i64> {
    sqlx::query_as::<_, (Option<String>, i64)>(
        "select outcome, count(*) from outbox where queue <> 'events' group by outcome",
    )
    .fetch_all(&app.db)
    .await
    .unwrap()
    .into_iter()
    .collect()
}

/// The distinct Message-IDs among emails.
fn message_ids(emails: &[Value]) -> std::collections::HashSet<String> {
    emails
        .iter()
        .map(|mail| mail["headers"]["message-id"].as_str().unwrap_or_default().to_owned())
        .collect()
}

#[tokio::test]
async fn every_accepted_job_keeps_a_record_until_its_outcome_is_recorded() {
    let app = TestApp::spawn().await;
    let to = email_address();
    let mut tx = app.db.begin().await.unwrap();
    for i in 0..20 {
        outbox::enqueue(&mut tx, &email(&to, &unique(&format!("k{i}"))), None).await.unwrap();
    }
    outbox::enqueue(&mut tx, &email("not an address", &unique("bad")), None).await.unwrap();
    tx.commit().await.unwrap();
    // Accepted, not yet relayed: waiting records.
    assert_eq!(outcomes(&app).await, HashMap::from([(None, 21)]));

    let _worker = app.spawn_worker().await;
    app.wait_for_emails(&to, 20, DEADLINE).await;
    wait_until(DEADLINE, "every outcome recorded", || async {
        let outcomes = outcomes(&app).await;
        (outcomes
            == HashMap::from([(Some("succeeded".to_owned()), 20), (Some("dead".to_owned()), 1)]))
        .then_some(())
    })
    .await;
    let (relayed, error): (i64, Option<String>) = sqlx::query_as(
        "select count(relayed_at), max(last_error) filter (where outcome = 'dead') from outbox",
    )
    .fetch_one(&app.db)
    .await
    .unwrap();
    assert_eq!(relayed, 21, "every record says when it was relayed");
    assert!(
        error.as_deref().is_some_and(|e| e.contains("permanent")),
        "the dead job's record keeps its error: {error:?}"
    );
}

#[tokio::test]
async fn redis_emptied_with_jobs_in_flight_loses_nothing_and_sends_each_email_once() {
    let redis = TestRedis::start().await;
    let url = redis.url();
    let app = TestApp::spawn_with(|s| {
        s.redis_url = url.into();
        s.job_lease = Duration::from_secs(3);
    })
    .await;
    let store = app.spawn_store();
    // SMTP holds every connection: four jobs are running (stuck in their send) and the rest
    // are pending when Redis loses everything.
    let smtp = TcpGate::smtp(GateMode::Hold).await;
    let mut settings = app.worker_settings();
    settings.smtp_url = smtp.url("smtp").into();
    settings.worker_concurrency = 4;
    settings.reconcile_interval = Duration::from_millis(500);
    let _worker = TestWorker::spawn(settings).await;

    const JOBS: usize = 30;
    let to = email_address();
    let mut tx = app.db.begin().await.unwrap();
    for i in 0..JOBS {
        outbox::enqueue(&mut tx, &email(&to, &unique(&format!("k{i}"))), None).await.unwrap();
    }
    tx.commit().await.unwrap();
    wait_until(DEADLINE, "four running and the rest pending", || async {
        let depth = store.depth(Queue::Emails).await.unwrap();
        (depth.running == 4 && depth.pending == (JOBS - 4) as u64).then_some(())
    })
    .await;

    let mut conn = store.connection();
    redis::cmd("FLUSHALL").query_async::<()>(&mut conn).await.unwrap();
    let flushed = Instant::now();
    wait_until(Duration::from_secs(30), "the reconciler to put every job back", || async {
        let depth = store.depth(Queue::Emails).await.unwrap();
        (depth.pending + depth.running == JOBS as u64).then_some(())
    })
    .await;
    let restored_in = flushed.elapsed();
    assert!(restored_in < Duration::from_secs(30), "restored in {restored_in:?}");

    smtp.set(GateMode::Forward);
    let emails = app.wait_for_emails(&to, JOBS, Duration::from_secs(60)).await;
    wait_until(DEADLINE, "every outcome recorded", || async {
        (outcomes(&app).await == HashMap::from([(Some("succeeded".to_owned()), JOBS as i64)]))
            .then_some(())
    })
    .await;
    // Every job has finished: no send can still be on its way.
    let emails_now = app.emails_to(&to).await;
    assert_eq!(emails_now.len(), JOBS, "one email per job, none twice");
    assert_eq!(message_ids(&emails).len(), JOBS);
}

/// Inserts an outbox row as a buggy producer (or a newer release) might.
async fn raw_row(app: &TestApp, queue: &str, kind: &str, payload: Value) -> uuid::Uuid {
    let id = uuid::Uuid::now_v7();
    sqlx::query(
        "insert into outbox (id, queue, kind, payload, max_attempts, created_at)
         values ($1, $2, $3, $4, 3, now() - interval '1 minute')",
    )
    .bind(id)
    .bind(queue)
    .bind(kind)
    .bind(payload)
    .execute(&app.db)
    .await
    .unwrap();
    id
}

#[tokio::test]
async fn poison_rows_are_quarantined_with_their_reason_and_never_stall_the_rest() {
    let (app, token) = TestApp::spawn_admin(|_| {}).await;
    // Older than the good rows, so they come first in the relay's batch.
    let unknown = raw_row(&app, "emails", "send_emial", serde_json::json!({})).await;
    let garbled = raw_row(&app, "emails", "send_email", serde_json::json!({"to": 7})).await;
    let misplaced = raw_row(&app, "uploads", "send_email", serde_json::json!({})).await;
    let bad_event = raw_row(&app, "events", "task.created", serde_json::json!("nope")).await;
    let to = email_address();
    let mut tx = app.db.begin().await.unwrap();
    for i in 0..5 {
        outbox::enqueue(&mut tx, &email(&to, &unique(&format!("k{i}"))), None).await.unwrap();
    }
    tx.commit().await.unwrap();

    let _worker = app.spawn_worker().await;
    app.wait_for_emails(&to, 5, DEADLINE).await;

    let resp = app.get_as("/api/v1/admin/outbox", &token).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let view: Value = resp.json().await.unwrap();
    assert_eq!(view["backlog"], 0, "{view}");
    assert_eq!(view["quarantined_total"], 4, "{view}");
    let reasons: HashMap<String, String> = view["quarantined"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| {
            (row["id"].as_str().unwrap().to_owned(), row["reason"].as_str().unwrap().to_owned())
        })
        .collect();
    assert!(reasons[&unknown.to_string()].contains("unknown job kind"), "{reasons:?}");
    assert!(reasons[&garbled.to_string()].contains("does not decode as send_email"), "{reasons:?}");
    assert!(reasons[&misplaced.to_string()].contains("belongs to queue"), "{reasons:?}");
    assert!(reasons[&bad_event.to_string()].contains("event payload"), "{reasons:?}");

    // The job record shows it too, and a page of one continues with a cursor.
    let record: Value =
        app.get_as(&format!("/api/v1/admin/jobs/{garbled}"), &token).await.json().await.unwrap();
    assert_eq!(record["state"], "quarantined", "{record}");
    assert!(record["last_error"].as_str().unwrap().contains("does not decode"));
    let page: Value =
        app.get_as("/api/v1/admin/outbox?limit=1", &token).await.json().await.unwrap();
    assert_eq!(page["quarantined"].as_array().unwrap().len(), 1);
    let cursor = page["next_cursor"].as_str().unwrap();
    let next: Value = app
        .get_as(&format!("/api/v1/admin/outbox?limit=1&cursor={cursor}"), &token)
        .await
        .json()
        .await
        .unwrap();
    assert_ne!(next["quarantined"][0]["id"], page["quarantined"][0]["id"]);
    let bad = app.get_as("/api/v1/admin/outbox?cursor=nope", &token).await;
    assert_eq!(bad.status(), StatusCode::UNPROCESSABLE_ENTITY);
}

#[tokio::test]
async fn a_payload_a_worker_cannot_decode_is_quarantined_in_its_record() {
    let (app, token) = TestApp::spawn_admin(|_| {}).await;
    let store = app.spawn_store();
    // A job already in Redis whose payload this release cannot read (written by another).
    let id = uuid::Uuid::now_v7();
    sqlx::query(
        "insert into outbox (id, queue, kind, payload, max_attempts, relayed_at)
         values ($1, 'emails', 'send_email', '{\"v2\": true}', 8, now())",
    )
    .bind(id)
    .execute(&app.db)
    .await
    .unwrap();
    let job = NewJob { id, ..NewJob::plain("send_email", r#"{"v2": true}"#, 8) };
    store.push(Queue::Emails, &[job]).await.unwrap();
    let _worker = app.spawn_worker().await;
    let record = wait_until(DEADLINE, "the record quarantined", || async {
        let record = outbox::record(&app.db, id).await.unwrap()?;
        (record.outcome.as_deref() == Some("quarantined")).then_some(record)
    })
    .await;
    assert!(record.last_error.unwrap().contains("does not decode as send_email"));
    let view: Value =
        app.get_as(&format!("/api/v1/admin/jobs/{id}"), &token).await.json().await.unwrap();
    assert!(view["last_error"].as_str().unwrap().contains("quarantined"), "{view}");
}

#[tokio::test]
async fn a_digest_run_killed_halfway_still_gives_every_user_one_digest() {
    let app = TestApp::spawn_with(|s| s.job_lease = Duration::from_secs(3)).await;
    let mut users = Vec::new();
    {
        let _worker = app.spawn_worker().await;
        for _ in 0..6 {
            let address = email_address();
            app.register_verified(&address).await;
            users.push(address);
        }
    }
    let tick = chrono::Utc::now().duration_trunc(chrono::TimeDelta::hours(1)).unwrap();
    sqlx::query(
        "update users set digest_enabled = true, digest_hour = $1, timezone = 'UTC'
         where email = any($2)",
    )
    .bind(i16::try_from(chrono::Timelike::hour(&tick)).unwrap())
    .bind(&users)
    .execute(&app.db)
    .await
    .unwrap();
    // One user's digest fails for good; it must cost no other user theirs.
    let broken = users.pop().unwrap();
    sqlx::query("update users set email = 'not an address' where email = $1")
        .bind(&broken)
        .execute(&app.db)
        .await
        .unwrap();

    // The run is stopped mid-way: the users table is locked, so the fan-out waits inside
    // the job, and the worker running it is killed there.
    let mut lock = app.db.begin().await.unwrap();
    sqlx::query("lock table users in access exclusive mode").execute(&mut *lock).await.unwrap();
    let mut tx = app.db.begin().await.unwrap();
    let run = outbox::enqueue(&mut tx, &DailyDigest { tick }, None).await.unwrap();
    tx.commit().await.unwrap();
    let mut doomed = app.worker_process().spawn().unwrap();
    let store = app.spawn_store();
    wait_until(DEADLINE, "the digest run to be running", || async {
        let job = store.job(Queue::Maintenance, &run.to_string()).await.unwrap()?;
        (job.state == JobState::Running).then_some(())
    })
    .await;
    signal(&doomed, "KILL");
    doomed.wait().await.unwrap();
    lock.rollback().await.unwrap();

    let _worker = app.spawn_worker().await;
    for user in &users {
        let mail = app.wait_for_emails(user, 2, DEADLINE).await;
        assert!(mail[1]["subject"].as_str().unwrap().to_lowercase().contains("digest"), "{mail:?}");
    }
    wait_until(DEADLINE, "every digest job finished", || async {
        let open: i64 = sqlx::query_scalar(
            "select count(*) from outbox where kind in ('daily_digest', 'send_digest') and finished_at is null",
        )
        .fetch_one(&app.db)
        .await
        .unwrap();
        (open == 0).then_some(())
    })
    .await;
    for user in &users {
        // The verification email and one digest.
        assert_eq!(app.emails_to(user).await.len(), 2, "{user}");
    }
    let digests: Vec<(String, Option<String>)> = sqlx::query_as(
        "select outcome, last_error from outbox where kind = 'send_digest' order by outcome",
    )
    .fetch_all(&app.db)
    .await
    .unwrap()
    .into_iter()
    .map(|(outcome, error): (Option<String>, Option<String>)| (outcome.unwrap(), error))
    .collect();
    assert_eq!(digests.len(), 6, "one digest job per user: {digests:?}");
    assert_eq!(digests.iter().filter(|(o, _)| o == "dead").count(), 1, "{digests:?}");
    assert_eq!(digests.iter().filter(|(o, _)| o == "succeeded").count(), 5, "{digests:?}");
}

#[tokio::test]
async fn redis_killed_with_jobs_pending_scheduled_and_running_finishes_each_once() {
    let mut redis = TestRedis::start().await;
    let url = redis.url();
    let app = TestApp::spawn_with(|s| {
        s.redis_url = url.into();
        s.job_lease = Duration::from_secs(3);
    })
    .await;
    let store = app.spawn_store();
    let to = email_address();
    const JOBS: usize = 12;
    let mut tx = app.db.begin().await.unwrap();
    for i in 0..JOBS {
        outbox::enqueue(&mut tx, &email(&to, &unique(&format!("k{i}"))), None).await.unwrap();
    }
    tx.commit().await.unwrap();
    // Relay them with no worker draining: every job is pending in Redis.
    let relay = outbox::Relay::new(app.db.clone(), store.clone(), Duration::from_millis(100));
    while relay.relay_batch().await.unwrap() > 0 {}
    assert_eq!(store.depth(Queue::Emails).await.unwrap().pending, JOBS as u64);
    // This test plays a worker: four attempts failed and wait out a retry (scheduled), four
    // are claimed by a worker that then vanishes (running), four stay pending.
    let failed = store.claim(Queue::Emails, "send_email", "gone", 4).await.unwrap();
    for claim in &failed {
        let retry = tasklane_shared::queue::Outcome::Retry {
            error: "smtp: timed out".into(),
            delay: Duration::from_secs(2),
        };
        assert!(store.finish(claim, &retry, Duration::from_millis(5)).await.unwrap());
    }
    store.claim(Queue::Emails, "send_email", "gone", 4).await.unwrap();
    let depth = store.depth(Queue::Emails).await.unwrap();
    assert_eq!((depth.pending, depth.scheduled, depth.running), (4, 4, 4));

    // Redis crashes and comes back.
    redis.stop().await;
    redis.start_again().await;
    let mut settings = app.worker_settings();
    settings.reconcile_interval = Duration::from_millis(500);
    let _worker = TestWorker::spawn(settings).await;

    let emails = app.wait_for_emails(&to, JOBS, Duration::from_secs(60)).await;
    wait_until(DEADLINE, "every outcome recorded", || async {
        (outcomes(&app).await == HashMap::from([(Some("succeeded".to_owned()), JOBS as i64)]))
            .then_some(())
    })
    .await;
    assert_eq!(app.emails_to(&to).await.len(), JOBS, "one email per job, none twice");
    assert_eq!(message_ids(&emails).len(), JOBS);
}

#[tokio::test]
async fn finished_records_are_pruned_after_the_job_retention() {
    let app = TestApp::spawn_with(|s| {
        s.job_retention = Duration::from_secs(1);
        s.dead_job_retention = Duration::from_secs(3600);
        s.reconcile_interval = Duration::from_millis(500);
    })
    .await;
    let to = email_address();
    let mut tx = app.db.begin().await.unwrap();
    for i in 0..3 {
        outbox::enqueue(&mut tx, &email(&to, &unique(&format!("k{i}"))), None).await.unwrap();
    }
    outbox::enqueue(&mut tx, &email("not an address", &unique("bad")), None).await.unwrap();
    tx.commit().await.unwrap();
    let _worker = app.spawn_worker().await;
    app.wait_for_emails(&to, 3, DEADLINE).await;
    // Successes go after the (one second) retention; the dead job stays for its own.
    wait_until(DEADLINE, "the successes pruned", || async {
        (outcomes(&app).await == HashMap::from([(Some("dead".to_owned()), 1)])).then_some(())
    })
    .await;
}
