//! The queue's promises under faults (SPEC section 7), with real worker processes, real
//! Redis, Postgres and SMTP capture: nothing here is simulated except the fault itself.

// Test helpers fail loudly: an unwrap here is an assertion.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use apalis_core::error::BoxDynError;
use apalis_core::monitor::Monitor;
use apalis_core::worker::builder::WorkerBuilder;
use tasklane_shared::domain::jobs::JobState;
use tasklane_shared::jobs::{Backoff, Job, JobSpec, PermanentError, Queue};
use tasklane_shared::queue::{
    HeldClaims, NewJob, Outcome, QueueSettings, QueueStore, RedisBackend,
};
use tasklane_testkit::email_address as address;
use tasklane_testkit::jobs::{enqueue_committed as enqueue, notice_email as email, wait_for_state};
use tasklane_testkit::{GateMode, TcpGate, TestApp, TestRedis, signal, wait_until};

#[tokio::test]
async fn a_job_held_by_a_killed_worker_is_finished_by_another_and_sends_once() {
    let app = TestApp::spawn_with(|s| s.job_lease = Duration::from_secs(3)).await;
    let store = app.store_with(QueueSettings::default());
    let hung_smtp = TcpGate::smtp(GateMode::Hold).await;
    let mut doomed = app.worker_process().env("SMTP_URL", hung_smtp.url("smtp")).spawn().unwrap();
    let to = address();
    let id = enqueue(&app, &email(&to)).await;
    wait_for_state(&store, Queue::Emails, &id, JobState::Running, Duration::from_secs(20)).await;

    signal(&doomed, "KILL");
    doomed.wait().await.unwrap();
    let killed_at = Instant::now();
    let _survivor = app.spawn_worker().await;

    app.wait_for_emails(&to, 1, Duration::from_secs(30)).await;
    let recovered_in = killed_at.elapsed();
    assert!(recovered_in < Duration::from_secs(30), "recovered in {recovered_in:?}");
    wait_for_state(&store, Queue::Emails, &id, JobState::Done, Duration::from_secs(10)).await;
    let job = store.job(Queue::Emails, &id).await.unwrap().unwrap();
    assert_eq!(job.attempts, 2, "the killed attempt counts");
    assert!(
        job.history[0].error.as_deref().unwrap().contains("lease expired"),
        "{:?}",
        job.history
    );
    assert_eq!(job.history[1].error, None);
    assert_eq!(app.emails_to(&to).await.len(), 1, "sent exactly once");
}

#[tokio::test]
async fn a_job_whose_worker_keeps_dying_is_dead_after_its_attempts() {
    let app = TestApp::spawn().await;
    let lease = Duration::from_millis(300);
    let store = app.store_with(QueueSettings { lease, ..QueueSettings::default() });
    let job =
        NewJob::plain("send_email", serde_json::to_string(&email("x@example.test")).unwrap(), 2);
    let id = job.id.to_string();
    store.push(Queue::Emails, &[job]).await.unwrap();

    // A "worker" that claims and dies each time: it never reports an outcome.
    for attempt in 1..=2 {
        let claim = wait_until(Duration::from_secs(10), "a claim", || async {
            store
                .claim(Queue::Emails, "send_email", &format!("crasher-{attempt}"), 1)
                .await
                .unwrap()
                .pop()
        })
        .await;
        assert_eq!(claim.attempt, attempt);
    }
    wait_until(Duration::from_secs(10), "the job to die", || async {
        store.claim(Queue::Emails, "send_email", "sweeper", 1).await.unwrap();
        let job = store.job(Queue::Emails, &id).await.unwrap()?;
        (job.state == JobState::Dead).then_some(())
    })
    .await;
    let job = store.job(Queue::Emails, &id).await.unwrap().unwrap();
    assert_eq!(job.attempts, 2);
    assert_eq!(job.history.len(), 2);
    assert!(job.history.iter().all(|a| a.error.as_deref().unwrap_or("").contains("lease expired")));
}

#[tokio::test]
async fn a_late_result_from_an_expired_claim_is_refused() {
    let app = TestApp::spawn().await;
    let store = app.store_with(QueueSettings {
        lease: Duration::from_millis(200),
        ..QueueSettings::default()
    });
    let job = NewJob::plain("send_email", "{}", 3);
    store.push(Queue::Emails, &[job]).await.unwrap();
    let first = store.claim(Queue::Emails, "send_email", "slow", 1).await.unwrap().pop().unwrap();
    let second = wait_until(Duration::from_secs(10), "the job to be reclaimed", || async {
        store.claim(Queue::Emails, "send_email", "fresh", 1).await.unwrap().pop()
    })
    .await;
    assert_eq!(second.attempt, 2);
    let late = Outcome::Dead { error: "stale".into() };
    assert!(!store.finish(&first, &late, Duration::ZERO).await.unwrap(), "stale token refused");
    assert!(store.finish(&second, &Outcome::Succeeded, Duration::ZERO).await.unwrap());
    let record = store.job(Queue::Emails, &second.id).await.unwrap().unwrap();
    assert_eq!(record.state, JobState::Done);
}

#[tokio::test]
async fn sigterm_mid_job_hands_the_job_back_and_nothing_is_lost() {
    let app = TestApp::spawn().await;
    let store = app.store_with(QueueSettings::default());
    let hung_smtp = TcpGate::smtp(GateMode::Hold).await;
    let mut stopping = app
        .worker_process()
        .env("SMTP_URL", hung_smtp.url("smtp"))
        .env("TASKLANE_SHUTDOWN_GRACE_SECS", "1")
        .env("TASKLANE_JOB_LEASE_SECS", "60")
        .spawn()
        .unwrap();
    let to = address();
    let id = enqueue(&app, &email(&to)).await;
    wait_for_state(&store, Queue::Emails, &id, JobState::Running, Duration::from_secs(20)).await;

    signal(&stopping, "TERM");
    let exit = tokio::time::timeout(Duration::from_secs(15), stopping.wait())
        .await
        .expect("exits")
        .unwrap();
    assert!(exit.success(), "{exit:?}");
    // Handed back at once, not after the 60 s lease; and not counted as an attempt.
    let job = store.job(Queue::Emails, &id).await.unwrap().unwrap();
    assert_eq!(job.state, JobState::Pending);
    assert_eq!(job.attempts, 0);

    let _next = app.spawn_worker().await;
    app.wait_for_emails(&to, 1, Duration::from_secs(20)).await;
    wait_for_state(&store, Queue::Emails, &id, JobState::Done, Duration::from_secs(10)).await;
    assert_eq!(app.emails_to(&to).await.len(), 1);
}

/// A job kind of this test's own, on a queue of the real store, so the dead path can be
/// driven without waiting out `send_email`'s eight attempts.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Flaky {
    fail: bool,
    permanent: bool,
}

impl Job for Flaky {
    const SPEC: JobSpec = JobSpec {
        kind: "flaky",
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

async fn flaky(job: Flaky) -> Result<(), BoxDynError> {
    match (job.fail, job.permanent) {
        (true, true) => Err(Box::new(PermanentError("bad input".into()))),
        (true, false) => Err("always fails".into()),
        _ => Ok(()),
    }
}

async fn push_flaky(store: &QueueStore, job: &Flaky) -> String {
    let new = NewJob::plain(
        Flaky::SPEC.kind,
        serde_json::to_string(job).unwrap(),
        Flaky::SPEC.max_attempts,
    );
    store.push(Flaky::SPEC.queue, std::slice::from_ref(&new)).await.unwrap();
    new.id.to_string()
}

#[tokio::test]
async fn a_job_that_always_fails_is_dead_after_its_attempts_and_the_worker_carries_on() {
    let app = TestApp::spawn().await;
    let store = app.store_with(QueueSettings::default());
    let blocking = tasklane_shared::redis::connect_blocking(&app.settings).unwrap();
    let backend_store = store.clone();
    let monitor = Monitor::new().register(move |_| {
        WorkerBuilder::new("flaky-worker")
            .backend(RedisBackend::<Flaky>::new(
                backend_store.clone(),
                blocking.clone(),
                "flaky-worker".into(),
                HeldClaims::default(),
            ))
            .build(flaky)
    });
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let monitor = tokio::spawn(monitor.run_with_signal(async move {
        let _ = stopped.await;
        Ok(())
    }));
    let _email_worker = app.spawn_worker().await;

    let doomed = push_flaky(&store, &Flaky { fail: true, permanent: false }).await;
    let hopeless = push_flaky(&store, &Flaky { fail: true, permanent: true }).await;
    wait_for_state(&store, Queue::Maintenance, &doomed, JobState::Dead, Duration::from_secs(20))
        .await;
    wait_for_state(&store, Queue::Maintenance, &hopeless, JobState::Dead, Duration::from_secs(20))
        .await;

    let dead = store.job(Queue::Maintenance, &doomed).await.unwrap().unwrap();
    assert_eq!(dead.attempts, 3, "{dead:?}");
    assert_eq!(dead.history.len(), 3);
    assert!(
        dead.history
            .iter()
            .all(|a| a.error.as_deref() == Some("always fails") && a.worker.is_some())
    );
    let skipped = store.job(Queue::Maintenance, &hopeless).await.unwrap().unwrap();
    assert_eq!(skipped.attempts, 1, "a permanent error skips the retries");

    // The same worker still runs the next job, and other queues never noticed.
    let fine = push_flaky(&store, &Flaky { fail: false, permanent: false }).await;
    wait_for_state(&store, Queue::Maintenance, &fine, JobState::Done, Duration::from_secs(20))
        .await;
    let to = address();
    enqueue(&app, &email(&to)).await;
    app.wait_for_emails(&to, 1, Duration::from_secs(20)).await;
    assert_eq!(store.depth(Queue::Maintenance).await.unwrap().dead, 2);

    let _ = stop.send(());
    monitor.await.unwrap().unwrap();
}

#[tokio::test]
async fn after_a_redis_restart_relay_and_workers_reconnect_by_themselves() {
    let mut redis = TestRedis::start().await;
    let url = redis.url();
    let app = TestApp::spawn_with(|s| s.redis_url = url.into()).await;
    let mut worker = app.worker_process().spawn().unwrap();
    let before = address();
    enqueue(&app, &email(&before)).await;
    app.wait_for_emails(&before, 1, Duration::from_secs(20)).await;

    redis.stop().await;
    let during = address();
    enqueue(&app, &email(&during)).await;
    redis.start_again().await;

    app.wait_for_emails(&during, 1, Duration::from_secs(30)).await;
    let after = address();
    enqueue(&app, &email(&after)).await;
    app.wait_for_emails(&after, 1, Duration::from_secs(30)).await;
    // Then nothing is left to run, and each email went out exactly once.
    let store = app.store_with(QueueSettings::default());
    wait_until(Duration::from_secs(30), "the outbox and the emails queue idle", || async {
        let depth = store.depth(Queue::Emails).await.ok()?;
        let idle = depth.pending == 0 && depth.running == 0 && depth.scheduled == 0;
        (idle && app.outbox_len().await == 0).then_some(())
    })
    .await;
    for to in [&before, &during, &after] {
        assert_eq!(app.emails_to(to).await.len(), 1, "exactly one email to {to}");
    }
    assert!(worker.try_wait().unwrap().is_none(), "the worker process survived the restart");
    signal(&worker, "TERM");
    worker.wait().await.unwrap();
}

#[tokio::test]
async fn three_worker_processes_run_each_tick_of_a_two_second_schedule_once() {
    const WINDOW: Duration = Duration::from_secs(60);
    let app = TestApp::spawn().await;
    let store = app.store_with(QueueSettings::default());
    let mut workers: Vec<_> = (0..3)
        .map(|_| {
            app.worker_process()
                .env("TASKLANE_CRON_PRUNE_SENT_EMAILS", "*/2 * * * * *")
                .spawn()
                .unwrap()
        })
        .collect();

    let first = wait_until(Duration::from_secs(20), "the first tick", || async {
        store.last_tick("prune_sent_emails").await.unwrap()
    })
    .await;
    let end = first + i64::try_from(WINDOW.as_millis()).unwrap();
    wait_until(WINDOW + Duration::from_secs(20), "a minute of ticks", || async {
        (store.last_tick("prune_sent_emails").await.unwrap()? >= end).then_some(())
    })
    .await;
    for worker in &workers {
        signal(worker, "TERM");
    }
    for worker in &mut workers {
        worker.wait().await.unwrap();
    }

    let mut runs: BTreeMap<i64, u32> = BTreeMap::new();
    for state in JobState::ALL {
        for id in store.ids(Queue::Maintenance, state, 10_000).await.unwrap() {
            let job = store.job(Queue::Maintenance, &id).await.unwrap().unwrap();
            if job.kind != "prune_sent_emails" {
                continue; // other schedules (mark_overdue…) may tick during the minute
            }
            let payload: serde_json::Value = serde_json::from_str(&job.payload).unwrap();
            let tick =
                chrono::DateTime::parse_from_rfc3339(payload["tick"].as_str().unwrap()).unwrap();
            *runs.entry(tick.timestamp()).or_default() += 1;
            assert!(job.attempts <= 1, "a tick's job ran at most once: {job:?}");
        }
    }
    let ticks: Vec<i64> = runs.keys().copied().collect();
    assert!(runs.values().all(|n| *n == 1), "one job per tick: {runs:?}");
    assert!(ticks.len() >= 30, "a minute of two-second ticks: {ticks:?}");
    assert!(ticks.windows(2).all(|w| w[1] - w[0] == 2), "no tick missed: {ticks:?}");
}

#[tokio::test]
async fn after_all_workers_were_down_only_the_latest_missed_tick_runs() {
    let app = TestApp::spawn().await;
    let store = app.store_with(QueueSettings::default());
    // An hourly schedule that last ran ten hours ago: ten ticks were missed. Hourly, so the
    // catch-up's tick is known (the hour the workers came up in) and a regular tick can run
    // while the test looks only if an hour begins meanwhile: with a two-second schedule the
    // catch-up could not be told from the first regular tick once the workers' start-up
    // outlasted a tick (it failed so in a cluster run, its one tick after the spawn).
    let ten_hours_ago = chrono::Utc::now() - chrono::Duration::hours(10);
    store.record_tick("prune_sent_emails", ten_hours_ago.timestamp_millis()).await.unwrap();

    let mut settings = app.worker_settings();
    settings.cron.insert("prune_sent_emails".into(), "0 0 * * * *".into());
    let started = chrono::Utc::now();
    let worker = tasklane_testkit::TestWorker::spawn(settings.clone()).await;
    let again = tasklane_testkit::TestWorker::spawn(settings).await;
    wait_until(Duration::from_secs(10), "the catch-up run", || async {
        for id in store.ids(Queue::Maintenance, JobState::Done, 1000).await.unwrap() {
            if store.job(Queue::Maintenance, &id).await.unwrap()?.kind == "prune_sent_emails" {
                return Some(());
            }
        }
        None
    })
    .await;
    let caught_up = chrono::Utc::now();
    worker.stop().await.unwrap();
    again.stop().await.unwrap();

    let mut ticks = Vec::new();
    for state in JobState::ALL {
        for id in store.ids(Queue::Maintenance, state, 1000).await.unwrap() {
            let job = store.job(Queue::Maintenance, &id).await.unwrap().unwrap();
            if job.kind != "prune_sent_emails" {
                continue;
            }
            let payload: serde_json::Value = serde_json::from_str(&job.payload).unwrap();
            ticks.push(
                chrono::DateTime::parse_from_rfc3339(payload["tick"].as_str().unwrap()).unwrap(),
            );
        }
    }
    // The catch-up's tick is the latest at or before the moment the workers came up, which
    // lies between the spawn and the run: the hour of one of the two. They differ only when
    // an hour began meanwhile, whose own tick may then have run too; never an older hour.
    let hour = |at: chrono::DateTime<chrono::Utc>| at.timestamp() - at.timestamp() % 3600;
    let allowed = [hour(started), hour(caught_up)];
    let mut seen: Vec<i64> = ticks.iter().map(|tick| tick.timestamp()).collect();
    seen.sort_unstable();
    assert!(
        !seen.is_empty() && seen.windows(2).all(|w| w[0] < w[1]),
        "one job per tick: {ticks:?}"
    );
    assert!(
        seen.iter().all(|tick| allowed.contains(tick)),
        "only the latest missed tick, not the backlog: {ticks:?}, workers started {started}"
    );
}

#[tokio::test]
async fn finished_jobs_expire_and_the_storage_returns_to_its_baseline() {
    let app = TestApp::spawn_with(|s| s.job_retention = Duration::from_secs(1)).await;
    let conn = tasklane_shared::redis::connect(&app.settings).unwrap();
    // The emails queue's own keys (schedules ticking meanwhile keep their own records), and
    // the job records in its `jobs` hash. Its `kinds` set is left out: it names each kind
    // ever pushed, so it is bounded by the registry, not by the jobs.
    let ns = format!("{}:{{emails}}:", app.settings.redis_prefix);
    let count_keys = || {
        let mut conn = conn.clone();
        let ns = ns.clone();
        async move {
            let keys: Vec<String> =
                redis::cmd("KEYS").arg(format!("{ns}*")).query_async(&mut conn).await.unwrap();
            let fields: usize =
                redis::cmd("HLEN").arg(format!("{ns}jobs")).query_async(&mut conn).await.unwrap();
            keys.iter().filter(|key| **key != format!("{ns}kinds")).count() + fields
        }
    };
    let _worker = app.spawn_worker().await;
    let baseline = count_keys().await;
    let to = address();
    for round in 1..=3 {
        for _ in 0..20 {
            enqueue(&app, &email(&to)).await;
        }
        // Counted from the rounds, not read after enqueueing: emails of this round may
        // already have arrived by then.
        app.wait_for_emails(&to, round * 20, Duration::from_secs(30)).await;
        let peak = count_keys().await;
        assert!(peak > baseline);
        wait_until(Duration::from_secs(15), "keys back to the baseline", || async {
            (count_keys().await <= baseline).then_some(())
        })
        .await;
    }
}

#[tokio::test]
async fn the_worker_reports_an_eviction_policy_that_can_lose_jobs() {
    let redis = TestRedis::start().await;
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = tasklane_shared::redis::Conn::Single(
        redis::aio::ConnectionManager::new(client).await.unwrap(),
    );
    assert!(
        tasklane_shared::redis::check_eviction_policy(&mut conn).await,
        "noeviction is accepted"
    );
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory-policy")
        .arg("allkeys-lru")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(
        !tasklane_shared::redis::check_eviction_policy(&mut conn).await,
        "allkeys-lru is reported"
    );
}

#[tokio::test]
async fn an_email_carries_the_message_id_of_its_idempotency_key() {
    let app = TestApp::spawn().await;
    let _worker = app.spawn_worker().await;
    let to = address();
    let (first, second) = (email(&to), email(&to));
    enqueue(&app, &first).await;
    enqueue(&app, &second).await;
    let mail = app.wait_for_emails(&to, 2, Duration::from_secs(30)).await;
    let from: lettre::message::Mailbox = app.settings.mail_from.parse().unwrap();
    let mut got: Vec<String> = mail
        .iter()
        .map(|m| m["headers"]["message-id"].as_str().expect("a Message-ID header").to_owned())
        .collect();
    let mut expected = vec![
        tasklane_worker::mailer::message_id(&first.idempotency_key, &from),
        tasklane_worker::mailer::message_id(&second.idempotency_key, &from),
    ];
    got.sort();
    expected.sort();
    assert_eq!(got, expected);
}

#[tokio::test]
async fn redis_over_maxmemory_refuses_new_work_whole_keeps_leases_and_says_so() {
    let redis = TestRedis::start().await;
    let url = redis.url();
    let app = TestApp::spawn_with(|s| s.redis_url = url.into()).await;
    let store = app.store_with(QueueSettings::default());
    let new_job =
        || NewJob::plain("send_email", serde_json::to_string(&email(&address())).unwrap(), 8);
    let jobs = [new_job(), new_job()];
    store.push(Queue::Emails, &jobs).await.unwrap();
    let claims = store.claim(Queue::Emails, "send_email", "w1", 1).await.unwrap();
    let running = &claims[0];
    // Whichever was claimed (on a sharded queue, the claim's first shard decides), the other
    // waits.
    let waiting = jobs.iter().find(|job| job.id.to_string() != running.id).unwrap();

    let conn = store.connection();
    let keys = || {
        let mut conn = conn.clone();
        async move { redis::cmd("DBSIZE").query_async::<u64>(&mut conn).await.unwrap() }
    };
    let set_maxmemory = |bytes: u64| {
        let mut conn = conn.clone();
        async move {
            redis::cmd("CONFIG")
                .arg("SET")
                .arg("maxmemory")
                .arg(bytes)
                .query_async::<()>(&mut conn)
                .await
                .unwrap();
        }
    };
    set_maxmemory(1).await;
    let before = keys().await;

    // New work is refused whole, before anything of it is written.
    let refused = store.push(Queue::Emails, &[new_job()]).await.unwrap_err();
    assert!(refused.to_string().contains("OOM"), "{refused}");
    assert_eq!(keys().await, before, "nothing of the refused push was written");
    // So is a claim: the waiting job stays pending, its attempt not counted.
    assert!(store.claim(Queue::Emails, "send_email", "w2", 1).await.is_err());
    let job = store.job(Queue::Emails, &waiting.id.to_string()).await.unwrap().unwrap();
    assert_eq!((job.state, job.attempts), (JobState::Pending, 0));
    // The running job keeps its lease, and its outcome is recorded.
    let renewed = store.renew(Queue::Emails, &[running.claim_ref()]).await.unwrap();
    assert_eq!(renewed, std::slice::from_ref(&running.id));
    assert!(store.finish(running, &Outcome::Succeeded, Duration::from_millis(5)).await.unwrap());
    // Readiness says so.
    let ready = app.client.get(app.url("/health/ready")).send().await.unwrap();
    assert_eq!(ready.status(), 503);
    let body = ready.text().await.unwrap();
    assert!(body.contains("out of memory"), "{body}");

    // Memory freed: work flows again.
    set_maxmemory(0).await;
    let claimed = store.claim(Queue::Emails, "send_email", "w2", 1).await.unwrap();
    assert_eq!(claimed[0].id, waiting.id.to_string());
    let ready = app.client.get(app.url("/health/ready")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
}
