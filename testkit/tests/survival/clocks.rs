//! F8: a worker whose wall clock is ten minutes off changes nothing (SPEC section 9,
//! "Clocks"). Workers run as real processes under Debian's libfaketime, their monotonic
//! clock real; leases, retries and cron ticks all go by Redis' clock.

use std::collections::BTreeMap;
use std::time::Duration;

use tasklane_shared::domain::jobs::JobState;
use tasklane_shared::jobs::Queue;
use tasklane_shared::queue::QueueStore;
use tasklane_testkit::{BusyMailbox, GateMode, TcpGate, TestApp, signal, skew_clock, wait_until};

use crate::{address, email, enqueue, wait_for_state};

const SKEWS: [&str; 2] = ["+10m", "-10m"];

/// When the lease of job `id` (claimed in the emails queue) ends, by Redis' clock.
async fn lease_end_ms(store: &QueueStore, id: &str) -> Option<i64> {
    // In the job's shard (a queue may be spread over several, see `Shards`).
    for shard in store.shards().homes(id) {
        let score = redis::cmd("ZSCORE")
            .arg(store.key_in(Queue::Emails, shard, "running"))
            .arg(id)
            .query_async::<Option<f64>>(&mut store.connection())
            .await
            .unwrap();
        if let Some(score) = score {
            return Some(score as i64);
        }
    }
    None
}

/// A job claimed by a worker whose clock is `skew` off stays its own for as long as the
/// worker lives (it renews its lease by Redis' clock: a slow clock must not make the lease
/// look expired), and returns to the queue within a lease once the worker dies (a fast
/// clock must not push that ten minutes out). One email in the end.
async fn a_claim_of_a_skewed_worker_lasts_exactly_its_lease(skew: &str) {
    let lease = Duration::from_secs(3);
    let app = TestApp::spawn_with(|s| s.job_lease = lease).await;
    let store = app.spawn_store();
    let hung_smtp = TcpGate::smtp(GateMode::Hold).await;
    let mut skewed = skew_clock(&mut app.worker_process(), skew)
        .env("SMTP_URL", hung_smtp.url("smtp"))
        .spawn()
        .unwrap();
    let to = address();
    let id = enqueue(&app, &email(&to)).await;
    wait_for_state(&store, Queue::Emails, &id, JobState::Running, Duration::from_secs(20)).await;
    let first_end = lease_end_ms(&store, &id).await.unwrap();

    // A healthy worker joins while the skewed one holds the job (its SMTP hangs).
    let _healthy = app.spawn_worker().await;
    let lease_ms = i64::try_from(lease.as_millis()).unwrap();
    wait_until(Duration::from_secs(30), "three leases renewed by the skewed worker", || async {
        let job = store.job(Queue::Emails, &id).await.unwrap().unwrap();
        assert_eq!(job.attempts, 1, "{skew}: taken over while its worker lived: {job:?}");
        assert_eq!(job.state, JobState::Running, "{skew}: {job:?}");
        let end = lease_end_ms(&store, &id).await?;
        (end >= first_end + 3 * lease_ms).then_some(())
    })
    .await;
    assert!(app.emails_to(&to).await.is_empty(), "{skew}: nobody else ran it");

    signal(&skewed, "KILL");
    skewed.wait().await.unwrap();
    let killed = std::time::Instant::now();
    app.wait_for_emails(&to, 1, Duration::from_secs(30)).await;
    wait_for_state(&store, Queue::Emails, &id, JobState::Done, Duration::from_secs(10)).await;
    let job = store.job(Queue::Emails, &id).await.unwrap().unwrap();
    assert_eq!(job.attempts, 2, "{skew}: the killed attempt counts, one more ran it");
    assert!(
        killed.elapsed() < Duration::from_secs(30),
        "{skew}: recovered in {:?}",
        killed.elapsed()
    );
    assert_eq!(app.emails_to(&to).await.len(), 1, "{skew}: exactly one email");
}

#[tokio::test]
async fn a_claim_of_a_worker_ten_minutes_slow_is_not_taken_over_early() {
    a_claim_of_a_skewed_worker_lasts_exactly_its_lease("-10m").await;
}

#[tokio::test]
async fn a_claim_of_a_worker_ten_minutes_fast_returns_within_its_lease() {
    a_claim_of_a_skewed_worker_lasts_exactly_its_lease("+10m").await;
}

#[tokio::test]
async fn retries_by_workers_ten_minutes_off_wait_their_real_backoff() {
    let app = TestApp::spawn().await;
    let store = app.spawn_store();
    // The mail server answers "mailbox busy" (a failure of the email, which costs an
    // attempt; an unreachable server would hold the kind instead) until told otherwise.
    let smtp = BusyMailbox::start(true).await;
    let mut workers: Vec<_> = SKEWS
        .iter()
        .map(|skew| {
            skew_clock(&mut app.worker_process(), skew)
                .env("SMTP_URL", smtp.url())
                // send_email's backoff starts at 30 s: compressed, as SPEC section 9 allows.
                .env("TASKLANE_RETRY_SCALE", "0.03")
                .spawn()
                .unwrap()
        })
        .collect();
    let to = address();
    let id = enqueue(&app, &email(&to)).await;
    let job = wait_until(Duration::from_secs(60), "three failed attempts", || async {
        let job = store.job(Queue::Emails, &id).await.unwrap()?;
        (job.history.len() >= 3).then_some(job)
    })
    .await;
    // Each attempt started no earlier than the previous one's end plus its backoff (all
    // three by Redis' clock), and not ten minutes later either.
    for pair in job.history.windows(2) {
        let (before, after) = (&pair[0], &pair[1]);
        let due = before.started_ms.unwrap()
            + before.duration_ms.unwrap()
            + before.retry_in_ms.expect("a retried failure has a backoff");
        let started = after.started_ms.unwrap();
        assert!(started >= due, "attempt {} started {} ms early", after.attempt, due - started);
        assert!(
            started - due < 10_000,
            "attempt {} started {} ms late",
            after.attempt,
            started - due
        );
    }

    smtp.set_busy(false);
    app.wait_for_emails(&to, 1, Duration::from_secs(60)).await;
    wait_for_state(&store, Queue::Emails, &id, JobState::Done, Duration::from_secs(10)).await;
    assert_eq!(app.emails_to(&to).await.len(), 1, "one email in the end");
    for worker in &workers {
        signal(worker, "TERM");
    }
    for worker in &mut workers {
        worker.wait().await.unwrap();
    }
}

#[tokio::test]
async fn a_schedule_ticks_once_per_tick_and_never_early_on_workers_ten_minutes_off() {
    const WINDOW_MS: i64 = 16_000;
    let app = TestApp::spawn().await;
    let store = app.spawn_store();
    let every_two_seconds = |command: &mut tokio::process::Command| {
        command.env("TASKLANE_CRON_PRUNE_SENT_EMAILS", "*/2 * * * * *");
    };
    let mut workers = Vec::new();
    for skew in [Some("+10m"), Some("-10m"), None] {
        let mut command = app.worker_process();
        if let Some(skew) = skew {
            skew_clock(&mut command, skew);
        }
        every_two_seconds(&mut command);
        workers.push(command.spawn().unwrap());
    }

    // Every tick's job, by tick (Unix seconds): (times enqueued, when by Redis' clock).
    let runs = || async {
        let mut runs: BTreeMap<i64, Vec<i64>> = BTreeMap::new();
        for state in JobState::ALL {
            for id in store.ids(Queue::Maintenance, state, 10_000).await.unwrap() {
                let Some(job) = store.job(Queue::Maintenance, &id).await.unwrap() else {
                    continue;
                };
                if job.kind != "prune_sent_emails" {
                    continue; // other schedules may tick meanwhile
                }
                assert!(job.attempts <= 1, "a tick's job ran at most once: {job:?}");
                let payload: serde_json::Value = serde_json::from_str(&job.payload).unwrap();
                let tick = chrono::DateTime::parse_from_rfc3339(payload["tick"].as_str().unwrap())
                    .unwrap();
                runs.entry(tick.timestamp()).or_default().push(job.created_ms);
            }
        }
        runs
    };
    wait_until(Duration::from_secs(60), "sixteen seconds of ticks", || async {
        let runs = runs().await;
        let (first, last) = (runs.keys().next()?, runs.keys().next_back()?);
        ((last - first) * 1000 >= WINDOW_MS).then_some(())
    })
    .await;
    for worker in &workers {
        signal(worker, "TERM");
    }
    for worker in &mut workers {
        worker.wait().await.unwrap();
    }

    let runs = runs().await;
    let ticks: Vec<i64> = runs.keys().copied().collect();
    assert!(ticks.windows(2).all(|w| w[1] - w[0] == 2), "one run per tick, none missed: {ticks:?}");
    for (tick, created) in &runs {
        assert_eq!(created.len(), 1, "tick {tick} enqueued once: {created:?}");
        let late_ms = created[0] - tick * 1000;
        assert!(late_ms >= 0, "tick {tick} enqueued {} ms early", -late_ms);
        assert!(late_ms < 5_000, "tick {tick} enqueued {late_ms} ms late");
    }
}

/// The start-up catch-up judges "missed" by Redis' clock: a worker ten minutes fast that
/// starts after a pause enqueues the latest tick Redis has reached, not one ten minutes
/// ahead of it.
#[tokio::test]
async fn a_worker_ten_minutes_fast_catches_up_no_tick_from_the_future() {
    let app = TestApp::spawn().await;
    let store = app.spawn_store();
    let (seconds, _): (i64, i64) =
        redis::cmd("TIME").query_async(&mut store.connection()).await.unwrap();
    // The every-minute schedule last ran two minutes ago: one tick was missed since.
    store.record_tick("prune_sent_emails", (seconds - 120) * 1000).await.unwrap();
    let mut fast = skew_clock(&mut app.worker_process(), "+10m")
        .env("TASKLANE_CRON_PRUNE_SENT_EMAILS", "0 * * * * *")
        .spawn()
        .unwrap();

    let (tick, created_ms) = wait_until(Duration::from_secs(30), "the catch-up tick", || async {
        for state in JobState::ALL {
            for id in store.ids(Queue::Maintenance, state, 1000).await.unwrap() {
                let job = store.job(Queue::Maintenance, &id).await.unwrap()?;
                if job.kind == "prune_sent_emails" {
                    let payload: serde_json::Value = serde_json::from_str(&job.payload).unwrap();
                    let tick = payload["tick"].as_str().unwrap().to_owned();
                    return Some((tick, job.created_ms));
                }
            }
        }
        None
    })
    .await;
    let tick = chrono::DateTime::parse_from_rfc3339(&tick).unwrap().timestamp_millis();
    assert!(tick <= created_ms, "tick {tick} enqueued {} ms before it was due", tick - created_ms);
    assert!(created_ms - tick < 120_000, "the latest missed tick, not an older one");
    signal(&fast, "TERM");
    fast.wait().await.unwrap();
}
