//! The outbox spine (SPEC section 7): API transaction -> outbox -> relay -> Redis -> worker
//! -> SMTP, with real processes and servers.

// Test helpers fail loudly: an unwrap here is an assertion.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use secrecy::SecretString;
use tasklane_shared::jobs::{EmailMessage, Job, Queue, SendEmail};
use tasklane_shared::outbox::{self, Relay};
use tasklane_testkit::{GateMode, TcpGate, TestApp, TestRedis, TestWorker, unique, wait_until};

const DEADLINE: Duration = Duration::from_secs(20);

fn email(to: &str, key: &str) -> SendEmail {
    SendEmail {
        idempotency_key: key.to_owned(),
        to: to.to_owned(),
        message: EmailMessage::PasswordChanged { display_name: Some(key.to_owned()) },
    }
}

fn address() -> String {
    format!("{}@example.test", unique("to"))
}

async fn enqueue_committed(app: &TestApp, job: &SendEmail) {
    let mut tx = app.db.begin().await.unwrap();
    outbox::enqueue(&mut tx, job, Some("req-test")).await.unwrap();
    tx.commit().await.unwrap();
}

#[tokio::test]
async fn a_job_from_a_committed_transaction_reaches_a_worker() {
    let app = TestApp::spawn().await;
    let _worker = app.spawn_worker().await;
    let to = address();
    enqueue_committed(&app, &email(&to, &unique("k"))).await;

    let emails = app.wait_for_emails(&to, 1, DEADLINE).await;
    assert!(emails[0]["text"].as_str().unwrap().contains("password of your Tasklane account"));
    wait_until(DEADLINE, "outbox drained", || async {
        (app.outbox_len().await == 0).then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_job_from_a_rolled_back_transaction_never_runs() {
    let app = TestApp::spawn().await;
    let _worker = app.spawn_worker().await;
    let to = address();
    let mut tx = app.db.begin().await.unwrap();
    outbox::enqueue(&mut tx, &email(&to, "rolled-back"), None).await.unwrap();
    tx.rollback().await.unwrap();
    // A job committed afterwards travels the same path; once it has arrived, the earlier
    // one would have too.
    enqueue_committed(&app, &email(&to, "committed-after")).await;

    let emails = app.wait_for_emails(&to, 1, DEADLINE).await;
    assert_eq!(emails.len(), 1);
    assert!(emails[0]["text"].as_str().unwrap().contains("committed-after"));
    assert_eq!(app.outbox_len().await, 0);
}

#[tokio::test]
async fn a_job_written_while_redis_is_down_arrives_after_redis_returns() {
    let mut redis = TestRedis::start().await;
    let url = redis.url();
    let app = TestApp::spawn_with(|s| s.redis_url = url.into()).await;
    let _worker = app.spawn_worker().await;
    redis.stop().await;

    let to = address();
    enqueue_committed(&app, &email(&to, &unique("k"))).await;
    // The relay tried and failed: the row is still there and says why.
    let error: String = wait_until(DEADLINE, "a failed relay attempt", || async {
        sqlx::query_scalar::<_, Option<String>>(
            "select last_error from outbox where relay_attempts > 0",
        )
        .fetch_optional(&app.db)
        .await
        .unwrap()
        .flatten()
    })
    .await;
    assert!(!error.is_empty());
    assert!(app.emails_to(&to).await.is_empty());

    redis.start_again().await;
    app.wait_for_emails(&to, 1, Duration::from_secs(30)).await;
    assert_eq!(app.outbox_len().await, 0);
}

#[tokio::test]
async fn two_relays_never_deliver_a_row_twice() {
    const ROWS: usize = 600;
    let app = TestApp::spawn().await;
    let mut tx = app.db.begin().await.unwrap();
    for i in 0..ROWS {
        outbox::enqueue(&mut tx, &email("nobody@example.test", &format!("k{i}")), None)
            .await
            .unwrap();
    }
    tx.commit().await.unwrap();

    let store = app.spawn_store();
    let relay = Relay::new(app.db.clone(), store.clone(), Duration::from_millis(100));
    let drain = |relay: Relay| async move {
        let mut moved = 0;
        loop {
            match relay.relay_batch().await.unwrap() {
                0 => return moved,
                n => moved += n,
            }
        }
    };
    let (a, b) = tokio::join!(tokio::spawn(drain(relay.clone())), tokio::spawn(drain(relay)));
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(a + b, ROWS, "each row delivered by exactly one relay ({a} + {b})");
    assert!(a > 0 && b > 0, "both relays took part ({a} + {b})");
    let depth = store.depth(Queue::Emails).await.unwrap();
    assert_eq!(depth.pending, ROWS as u64);
    assert_eq!(app.outbox_len().await, 0);
}

#[tokio::test]
async fn a_row_pushed_twice_is_one_job() {
    let app = TestApp::spawn().await;
    let store = app.spawn_store();
    let payload = serde_json::to_string(&email("x@example.test", "k")).unwrap();
    let job = tasklane_shared::queue::NewJob::plain(SendEmail::SPEC.kind, payload, 3);
    assert_eq!(store.push(Queue::Emails, std::slice::from_ref(&job)).await.unwrap(), 1);
    assert_eq!(store.push(Queue::Emails, &[job]).await.unwrap(), 0);
    assert_eq!(store.depth(Queue::Emails).await.unwrap().pending, 1);
}

#[tokio::test]
async fn duplicate_email_jobs_send_one_email() {
    // Both duplicates run at once: the first to take the email's idempotency key hangs at an
    // SMTP server that never answers, so the other is in its handler at the same time,
    // waiting on that key. When the hung send times out, its attempt rolls the key back and
    // the other sends; the retried first then finds the key taken and sends nothing.
    let app = TestApp::spawn().await;
    let hung_smtp = TcpGate::smtp(GateMode::Hold).await;
    let mut settings = app.worker_settings();
    settings.smtp_url = SecretString::from(hung_smtp.url("smtp"));
    let _worker = TestWorker::spawn(settings).await;
    let to = address();
    let key = unique("same-key");
    enqueue_committed(&app, &email(&to, &key)).await;
    enqueue_committed(&app, &email(&to, &key)).await;
    let store = app.spawn_store();
    wait_until(DEADLINE, "both duplicates running at once", || async {
        let depth = store.depth(Queue::Emails).await.unwrap();
        (depth.running == 2 && hung_smtp.accepted() >= 1).then_some(())
    })
    .await;
    hung_smtp.set(GateMode::Forward);
    wait_until(Duration::from_secs(60), "both duplicates done", || async {
        let depth = store.depth(Queue::Emails).await.unwrap();
        let idle = depth.pending == 0 && depth.running == 0 && depth.scheduled == 0;
        (idle && depth.done == 2).then_some(())
    })
    .await;
    assert_eq!(app.emails_to(&to).await.len(), 1);
}

#[tokio::test]
async fn the_worker_serves_health_and_queue_metrics() {
    let app = TestApp::spawn().await;
    let worker = app.spawn_worker().await;
    let base = format!("http://{}", worker.addr);
    let live = app.client.get(format!("{base}/health/live")).send().await.unwrap();
    assert_eq!(live.status(), 200);
    let ready = app.client.get(format!("{base}/health/ready")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    let metrics =
        app.client.get(format!("{base}/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains(r#"queue_jobs{queue="emails",state="pending"}"#), "{metrics}");
    assert!(metrics.contains("outbox_backlog"), "{metrics}");
    worker.stop().await.unwrap();
}

#[tokio::test]
async fn a_worker_process_stops_on_sigterm_and_leaves_nothing_held() {
    const JOBS: usize = 200;
    let app = TestApp::spawn().await;
    let mut child = app.worker_process().spawn().unwrap();
    let to = address();
    for _ in 0..JOBS {
        enqueue_committed(&app, &email(&to, &unique("k"))).await;
    }
    // TERM lands while the worker holds jobs: some sent, some running.
    let store = app.spawn_store();
    wait_until(DEADLINE, "jobs in flight", || async {
        let depth = store.depth(Queue::Emails).await.unwrap();
        (depth.running > 0 && depth.done > 0).then_some(())
    })
    .await;
    let pid = child.id().unwrap();
    let status =
        std::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status().unwrap();
    assert!(status.success());
    let exit = tokio::time::timeout(Duration::from_secs(15), child.wait())
        .await
        .expect("exits within the grace")
        .unwrap();
    assert!(exit.success(), "{exit:?}");
    let depth = store.depth(Queue::Emails).await.unwrap();
    assert_eq!(depth.running, 0, "nothing held after the worker exited");

    // What it did not finish was handed back, not lost: another worker sends the rest, each
    // email exactly once.
    let _next = app.spawn_worker().await;
    app.wait_for_emails(&to, JOBS, Duration::from_secs(60)).await;
    wait_until(DEADLINE, "every job done", || async {
        let depth = store.depth(Queue::Emails).await.unwrap();
        (depth.done == JOBS as u64 && depth.running == 0 && depth.pending == 0).then_some(())
    })
    .await;
    assert_eq!(app.emails_to(&to).await.len(), JOBS);
}
