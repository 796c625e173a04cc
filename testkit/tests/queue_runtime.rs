//! The worker runtime's promises around its claims (SPEC section 9): a job whose lease is
//! lost stops before another worker may take it, a worker that goes away holds nothing,
//! and a dependency outage holds its kind instead of burning attempts. Real worker
//! processes, real Redis, Postgres and SMTP capture; only the faults are injected.

// Test helpers fail loudly: an unwrap here is an assertion.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use apalis_core::backend::Backend;
use apalis_core::error::BoxDynError;
use apalis_core::monitor::Monitor;
use apalis_core::task::data::Data;
use apalis_core::worker::builder::WorkerBuilder;
use apalis_core::worker::context::WorkerContext;
use serde_json::Value;
use tasklane_shared::domain::jobs::JobState;
use tasklane_shared::jobs::{Backoff, DependencyDown, Job, JobSpec, Queue, SendEmail};
use tasklane_shared::queue::held::Cancel;
use tasklane_shared::queue::{Claim, HeldClaims, NewJob, QueueSettings, QueueStore, RedisBackend};
use tasklane_testkit::email_address as address;
use tasklane_testkit::jobs::{enqueue_committed as enqueue, notice_email as email, wait_for_state};
use tasklane_testkit::{GateMode, TcpGate, TestApp, email_address, signal, unique, wait_until};

/// A gate in front of the test's Redis.
async fn redis_gate(app: &TestApp) -> TcpGate {
    use secrecy::ExposeSecret;
    let url = url::Url::parse(app.settings.redis_url.expose_secret()).unwrap();
    let upstream = format!("{}:{}", url.host_str().unwrap(), url.port().unwrap_or(6379));
    TcpGate::start(upstream.parse().unwrap(), GateMode::Forward).await
}

/// A kind of this test's own, so a backend can be driven by hand.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Idle {
    n: u32,
}

impl Job for Idle {
    const SPEC: JobSpec = JobSpec {
        kind: "idle",
        queue: Queue::Maintenance,
        priority: tasklane_shared::jobs::Priority::Normal,
        max_attempts: 3,
        backoff: Backoff { base: Duration::from_millis(50), cap: Duration::from_millis(200) },
        timeout: Duration::from_secs(60),
        unique: false,
        schedule: None,
        fair_by: None,
    };
}

async fn push_idle(store: &QueueStore, n: u32) -> String {
    let new = NewJob::plain(
        Idle::SPEC.kind,
        serde_json::to_string(&Idle { n }).unwrap(),
        Idle::SPEC.max_attempts,
    );
    store.push(Idle::SPEC.queue, std::slice::from_ref(&new)).await.unwrap();
    new.id.to_string()
}

fn backend(app: &TestApp, store: &QueueStore, held: &HeldClaims) -> RedisBackend<Idle> {
    let blocking = tasklane_shared::redis::connect_blocking(&app.settings).unwrap();
    RedisBackend::<Idle>::new(store.clone(), blocking, unique("worker"), held.clone())
        .with_prefetch(3)
}

/// The next task the backend hands to its worker, as apalis would poll for it.
async fn next_task(
    backend: &mut RedisBackend<Idle>,
    worker: &WorkerContext,
) -> apalis_core::task::Task<Idle> {
    std::future::poll_fn(|cx| backend.poll_ready(cx, worker)).await.unwrap();
    std::future::poll_fn(|cx| backend.poll_next(cx, worker)).await.unwrap().unwrap()
}

#[tokio::test]
async fn a_dropped_backend_hands_back_every_claim_and_holds_nothing() {
    let app = TestApp::spawn().await;
    let store = app.store_with(QueueSettings::default());
    let mut ids = Vec::new();
    for n in 0..3 {
        ids.push(push_idle(&store, n).await);
    }
    let held = HeldClaims::default();
    let mut backend = backend(&app, &store, &held);
    let worker = WorkerContext::new("restarted");
    // One task started, two claimed in the same round trip and buffered.
    let started = next_task(&mut backend, &worker).await;
    assert_eq!(held.len(), 3);
    for id in &ids {
        let job = store.job(Queue::Maintenance, id).await.unwrap().unwrap();
        assert_eq!((job.state, job.attempts), (JobState::Running, 1));
    }

    // What apalis' monitor does when it restarts a worker: the worker, its backend and its
    // running handlers are dropped, and a new backend is built.
    drop(started);
    drop(backend);
    wait_until(Duration::from_secs(10), "the dropped backend to hold nothing", || async {
        held.is_empty().then_some(())
    })
    .await;
    for id in &ids {
        let job = store.job(Queue::Maintenance, id).await.unwrap().unwrap();
        assert_eq!((job.state, job.attempts), (JobState::Pending, 0), "{id} handed back");
    }
    // The next backend of the same process claims them again.
    let mut next = self::backend(&app, &store, &held);
    let task = next_task(&mut next, &worker).await;
    assert!(ids.contains(&task.ctx().data().get::<Claim>().unwrap().id));
    assert_eq!(held.len(), 3, "held by the new backend only");
}

#[tokio::test]
async fn a_claim_whose_renewal_is_refused_cancels_its_handler() {
    let app = TestApp::spawn().await;
    let lease = Duration::from_secs(3);
    let store = app.store_with(QueueSettings { lease, ..QueueSettings::default() });
    push_idle(&store, 1).await;
    let held = HeldClaims::default();
    let mut backend = backend(&app, &store, &held);
    let worker = WorkerContext::new("refused");
    let task = next_task(&mut backend, &worker).await;
    let claim = task.ctx().data().get::<Claim>().unwrap().clone();
    let cancel = task.ctx().data().get::<Cancel>().unwrap().clone();
    assert!(!cancel.is_cancelled());

    // The job is no longer this claim's (as when its lease expired and it was requeued).
    assert_eq!(store.release(Queue::Maintenance, &[claim.claim_ref()]).await.unwrap(), 1);
    let refused_at = Instant::now();
    let reason = tokio::time::timeout(lease, cancel.cancelled()).await.expect("cancelled in time");
    assert_eq!(reason, "lease_lost");
    assert!(refused_at.elapsed() < lease, "at the next renewal");
    assert!(held.is_empty());
}

#[tokio::test]
async fn a_worker_partitioned_from_redis_stops_its_job_before_another_worker_takes_it() {
    // Long enough that the margin (lease/5) dwarfs scheduling noise; short enough that the
    // hung SMTP send (10 s timeout) is still waiting when the handler must stop.
    let lease = Duration::from_secs(5);
    let app = TestApp::spawn_with(|s| s.job_lease = lease).await;
    let store = app.store_with(QueueSettings::default());
    let smtp = TcpGate::smtp(GateMode::Hold).await;
    let redis = redis_gate(&app).await;
    let mut partitioned = app
        .worker_process()
        .env("REDIS_URL", redis.url("redis"))
        .env("SMTP_URL", smtp.url("smtp"))
        .spawn()
        .unwrap();
    let to = address();
    let id = enqueue(&app, &email(&to)).await;
    // The job is running on the first worker, held mid-send by the hung SMTP server.
    wait_until(Duration::from_secs(30), "the first worker to connect to SMTP", || async {
        (smtp.open() == 1).then_some(())
    })
    .await;
    wait_for_state(&store, Queue::Emails, &id, JobState::Running, Duration::from_secs(60)).await;
    let mut other = app.worker_process().env("SMTP_URL", smtp.url("smtp")).spawn().unwrap();

    redis.set(GateMode::Refuse);
    let partitioned_at = Instant::now();
    wait_until(lease * 2, "the partitioned worker to stop its handler", || async {
        (smtp.open() == 0).then_some(())
    })
    .await;
    let stopped_after = partitioned_at.elapsed();
    assert!(stopped_after < lease, "stopped {stopped_after:?} into the partition");
    // The other worker takes the job once its lease expired.
    wait_until(lease * 4, "the other worker to start the job", || async {
        (smtp.open() == 1).then_some(())
    })
    .await;
    assert_eq!(smtp.max_open(), 1, "the first handler stopped before the second started");

    tokio::time::sleep_until((partitioned_at + lease * 2).into()).await;
    redis.set(GateMode::Forward);
    smtp.set(GateMode::Forward);
    app.wait_for_emails(&to, 1, Duration::from_secs(60)).await;
    wait_for_state(&store, Queue::Emails, &id, JobState::Done, Duration::from_secs(60)).await;
    let job = store.job(Queue::Emails, &id).await.unwrap().unwrap();
    assert!(
        job.history[0].error.as_deref().unwrap_or("").contains("lease expired"),
        "{:?}",
        job.history
    );

    // The partitioned worker carries on once Redis is back: alone now, it sends the next.
    signal(&other, "TERM");
    other.wait().await.unwrap();
    let next = address();
    enqueue(&app, &email(&next)).await;
    app.wait_for_emails(&next, 1, Duration::from_secs(30)).await;
    assert!(partitioned.try_wait().unwrap().is_none(), "the partitioned worker survived");
    assert_eq!(app.emails_to(&to).await.len(), 1, "exactly one email");
    assert_eq!(app.emails_to(&next).await.len(), 1);
    signal(&partitioned, "TERM");
    partitioned.wait().await.unwrap();
}

/// A kind whose dependency a test switches off and on.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Fragile {
    /// Fails for a reason of its own (its dependency answering).
    fail: bool,
}

impl Job for Fragile {
    const SPEC: JobSpec = JobSpec {
        kind: "fragile",
        queue: Queue::Maintenance,
        priority: tasklane_shared::jobs::Priority::Normal,
        max_attempts: 3,
        backoff: Backoff { base: Duration::from_millis(50), cap: Duration::from_millis(200) },
        timeout: Duration::from_secs(5),
        unique: false,
        schedule: None,
        fair_by: None,
    };
}

/// Whether the fragile kind's dependency is up, and how many attempts ran.
#[derive(Clone, Default)]
struct World {
    up: Arc<AtomicBool>,
    calls: Arc<AtomicUsize>,
}

async fn fragile(job: Fragile, world: Data<World>) -> Result<(), BoxDynError> {
    world.calls.fetch_add(1, Ordering::SeqCst);
    if !world.up.load(Ordering::SeqCst) {
        return Err(Box::new(DependencyDown::new("dep", "connection refused")));
    }
    if job.fail {
        return Err("the job's own failure".into());
    }
    Ok(())
}

async fn push_fragile(store: &QueueStore, job: &Fragile) -> String {
    let new = NewJob::plain(
        Fragile::SPEC.kind,
        serde_json::to_string(job).unwrap(),
        Fragile::SPEC.max_attempts,
    );
    store.push(Fragile::SPEC.queue, std::slice::from_ref(&new)).await.unwrap();
    new.id.to_string()
}

/// Runs a worker of the fragile kind until the returned sender is dropped or fired.
fn run_fragile(
    app: &TestApp,
    store: &QueueStore,
    world: &World,
) -> tokio::sync::oneshot::Sender<()> {
    let blocking = tasklane_shared::redis::connect_blocking(&app.settings).unwrap();
    let (store, world) = (store.clone(), world.clone());
    let monitor = Monitor::new().register(move |_| {
        WorkerBuilder::new("fragile-worker")
            .backend(
                RedisBackend::<Fragile>::new(
                    store.clone(),
                    blocking.clone(),
                    "fragile-worker".into(),
                    HeldClaims::default(),
                )
                .with_prefetch(4),
            )
            .data(world.clone())
            .build(fragile)
    });
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(monitor.run_with_signal(async move {
        let _ = stopped.await;
        Ok(())
    }));
    stop
}

/// The fragile kind's entry in the held kinds of Redis, if it is held.
async fn held_entry(store: &QueueStore) -> Option<std::collections::HashMap<String, String>> {
    let key = store.keys().global("{held}:fragile");
    let fields: std::collections::HashMap<String, String> =
        redis::cmd("HGETALL").arg(key).query_async(&mut store.connection()).await.unwrap();
    (!fields.is_empty()).then_some(fields)
}

#[tokio::test]
async fn a_dependency_down_holds_the_kind_without_counting_attempts() {
    let app = TestApp::spawn().await;
    let store = app.store_with(QueueSettings::default());
    let world = World::default();
    let _stop = run_fragile(&app, &store, &world);
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(push_fragile(&store, &Fragile { fail: false }).await);
    }

    let entry = wait_until(Duration::from_secs(10), "the kind to be held", || async {
        held_entry(&store).await
    })
    .await;
    assert_eq!(entry["dependency"], "dep");
    assert!(entry["since_ms"].parse::<i64>().unwrap() > 0);
    assert!(entry["error"].contains("connection refused"), "{entry:?}");
    // Held: it stops claiming, but for a probe after each cool-down (1 s, then 2 s).
    let before = world.calls.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let probes = world.calls.load(Ordering::SeqCst) - before;
    assert!(probes <= 2, "{probes} attempts while held");
    for id in &ids {
        let job = store.job(Queue::Maintenance, id).await.unwrap().unwrap();
        assert_ne!(job.state, JobState::Dead);
        assert!(job.attempts <= 1 && job.history.is_empty(), "{job:?}");
    }

    world.up.store(true, Ordering::SeqCst);
    for id in &ids {
        wait_for_state(&store, Queue::Maintenance, id, JobState::Done, Duration::from_secs(60))
            .await;
        let job = store.job(Queue::Maintenance, id).await.unwrap().unwrap();
        assert_eq!(job.attempts, 1, "the outage cost no attempt: {job:?}");
    }
    wait_until(Duration::from_secs(10), "the kind to run again", || async {
        held_entry(&store).await.is_none().then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_job_failure_counts_its_attempts_and_holds_nothing() {
    let app = TestApp::spawn().await;
    let store = app.store_with(QueueSettings::default());
    let world = World::default();
    world.up.store(true, Ordering::SeqCst);
    let _stop = run_fragile(&app, &store, &world);

    let doomed = push_fragile(&store, &Fragile { fail: true }).await;
    wait_for_state(&store, Queue::Maintenance, &doomed, JobState::Dead, Duration::from_secs(60))
        .await;
    let job = store.job(Queue::Maintenance, &doomed).await.unwrap().unwrap();
    assert_eq!(job.attempts, 3, "{job:?}");
    assert!(job.history.iter().all(|a| a.error.as_deref() == Some("the job's own failure")));
    assert!(held_entry(&store).await.is_none(), "a job's failure does not hold its kind");
    let fine = push_fragile(&store, &Fragile { fail: false }).await;
    wait_for_state(&store, Queue::Maintenance, &fine, JobState::Done, Duration::from_secs(60))
        .await;
}

/// The held kinds of the emails queue in `GET /admin/queues`.
async fn held_emails(app: &TestApp, token: &str) -> Vec<Value> {
    let overview: Value = app.get_as("/api/v1/admin/queues", token).await.json().await.unwrap();
    let queues = overview["queues"].as_array().unwrap();
    let emails = queues.iter().find(|queue| queue["queue"] == "emails").unwrap();
    emails["held"].as_array().unwrap().clone()
}

#[tokio::test]
async fn smtp_down_longer_than_the_whole_retry_schedule_loses_no_email() {
    let (app, token) = TestApp::spawn_admin(|_| {}).await;
    let store = app.store_with(QueueSettings::default());
    // send_email's whole retry schedule (over a day) compressed to about 2 s.
    let spec = SendEmail::SPEC;
    let longest = spec.backoff.min_span(spec.max_attempts) * 2;
    let scale = 2.0 / longest.as_secs_f64();
    let smtp = TcpGate::smtp(GateMode::Hold).await;
    let mut worker = app
        .worker_process()
        .env("SMTP_URL", smtp.url("smtp"))
        .env("TASKLANE_RETRY_SCALE", scale.to_string())
        .spawn()
        .unwrap();
    let addresses: Vec<String> = (0..5).map(|_| email_address()).collect();
    for address in &addresses {
        app.register(address).await;
    }
    // Emails in flight (held mid-connection by the hung server), then SMTP goes down.
    wait_until(Duration::from_secs(30), "emails in flight", || async {
        (smtp.open() >= 2).then_some(())
    })
    .await;
    smtp.set(GateMode::Refuse);
    let down_at = Instant::now();

    let held = wait_until(Duration::from_secs(20), "send_email held in the admin API", || async {
        let held = held_emails(&app, &token).await;
        (!held.is_empty()).then_some(held)
    })
    .await;
    assert_eq!(held.len(), 1, "{held:?}");
    assert_eq!(held[0]["kind"], "send_email");
    assert_eq!(held[0]["dependency"], "smtp");
    assert!(held[0]["since"].is_string(), "{held:?}");
    // Down four times as long as the whole schedule: without the breaker every email would
    // be dead by now.
    tokio::time::sleep_until((down_at + Duration::from_secs(8)).into()).await;
    assert_eq!(store.depth(Queue::Emails).await.unwrap().dead, 0, "nothing dead");
    assert_eq!(held_emails(&app, &token).await.len(), 1, "still held");

    smtp.set(GateMode::Forward);
    for address in &addresses {
        app.wait_for_emails(address, 1, Duration::from_secs(30)).await;
    }
    wait_until(Duration::from_secs(20), "send_email no longer held", || async {
        held_emails(&app, &token).await.is_empty().then_some(())
    })
    .await;
    wait_until(Duration::from_secs(20), "the emails queue idle", || async {
        let depth = store.depth(Queue::Emails).await.unwrap();
        (depth.pending == 0 && depth.running == 0 && depth.scheduled == 0).then_some(())
    })
    .await;
    assert_eq!(store.depth(Queue::Emails).await.unwrap().dead, 0);
    for address in &addresses {
        assert_eq!(app.emails_to(address).await.len(), 1, "exactly one email to {address}");
    }
    let done: Value = app
        .get_as("/api/v1/admin/jobs?queue=emails&state=done&limit=100", &token)
        .await
        .json()
        .await
        .unwrap();
    let jobs = done["data"].as_array().unwrap();
    assert_eq!(jobs.len(), addresses.len() + 1, "the admin's own email and the five");
    for job in jobs {
        assert_eq!(job["attempts"], 1, "the outage cost no attempt: {job}");
    }
    signal(&worker, "TERM");
    worker.wait().await.unwrap();
}

#[tokio::test]
async fn postgres_unreachable_holds_send_email_and_costs_no_attempt() {
    use secrecy::ExposeSecret;
    let app = TestApp::spawn().await;
    let store = app.store_with(QueueSettings::default());
    let mut url = url::Url::parse(app.settings.database_url.expose_secret()).unwrap();
    let upstream = format!("{}:{}", url.host_str().unwrap(), url.port().unwrap_or(5432));
    let postgres = TcpGate::start(upstream.parse().unwrap(), GateMode::Refuse).await;
    url.set_port(Some(postgres.port)).unwrap();
    let mut worker = app.worker_process().env("DATABASE_URL", url.as_str()).spawn().unwrap();
    // Pushed straight to Redis: the worker's relay cannot reach the outbox either.
    let to = address();
    let job = NewJob::plain(
        SendEmail::SPEC.kind,
        serde_json::to_string(&email(&to)).unwrap(),
        SendEmail::SPEC.max_attempts,
    );
    let id = job.id.to_string();
    store.push(Queue::Emails, &[job]).await.unwrap();

    let held = wait_until(Duration::from_secs(30), "send_email held by Postgres", || async {
        let held = store.held_kinds().await.unwrap();
        held.into_iter().find(|held| held.kind == "send_email")
    })
    .await;
    assert_eq!(held.dependency, "postgres", "{held:?}");
    let during = store.job(Queue::Emails, &id).await.unwrap().unwrap();
    assert!(during.attempts <= 1 && during.history.is_empty(), "{during:?}");

    postgres.set(GateMode::Forward);
    app.wait_for_emails(&to, 1, Duration::from_secs(30)).await;
    wait_for_state(&store, Queue::Emails, &id, JobState::Done, Duration::from_secs(60)).await;
    assert_eq!(store.job(Queue::Emails, &id).await.unwrap().unwrap().attempts, 1);
    wait_until(Duration::from_secs(20), "send_email no longer held", || async {
        let held = store.held_kinds().await.unwrap();
        held.iter().all(|held| held.kind != "send_email").then_some(())
    })
    .await;
    assert_eq!(app.emails_to(&to).await.len(), 1);
    signal(&worker, "TERM");
    worker.wait().await.unwrap();
}
