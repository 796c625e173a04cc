//! Dev and test Redis run with the production persistence settings: a Redis killed and
//! started again still has every job it accepted.

use std::time::Duration;

use tasklane_shared::jobs::{Job, Queue, SendEmail};
use tasklane_shared::queue::NewJob;
use tasklane_testkit::{REDIS_PERSISTENCE, TestApp, TestRedis, wait_until};

use crate::{address, email};

async fn config(url: &str, name: &str) -> String {
    let client = redis::Client::open(url).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let (_, value): (String, String) =
        redis::cmd("CONFIG").arg("GET").arg(name).query_async(&mut conn).await.unwrap();
    value
}

#[tokio::test]
async fn test_redis_runs_with_the_production_persistence_settings() {
    let private = TestRedis::start().await;
    let shared = std::env::var("REDIS_URL").expect("REDIS_URL (scripts/test sets it)");
    for url in [shared, private.url()] {
        for pair in REDIS_PERSISTENCE.chunks(2) {
            let (name, expected) = (pair[0].trim_start_matches("--"), pair[1]);
            assert_eq!(config(&url, name).await, expected, "{url}: {name}");
        }
    }
}

#[tokio::test]
async fn a_redis_killed_and_started_again_still_has_the_jobs_it_accepted() {
    const JOBS: usize = 20;
    let mut redis = TestRedis::start().await;
    let url = redis.url();
    let app = TestApp::spawn_with(|s| s.redis_url = url.into()).await;
    let store = app.spawn_store();
    let addresses: Vec<String> = (0..JOBS).map(|_| address()).collect();
    let jobs: Vec<NewJob> = addresses
        .iter()
        .map(|to| {
            NewJob::plain(
                SendEmail::SPEC.kind,
                serde_json::to_string(&email(to)).unwrap(),
                SendEmail::SPEC.max_attempts,
            )
        })
        .collect();
    assert_eq!(store.push(Queue::Emails, &jobs).await.unwrap(), JOBS);

    // A crash (SIGKILL), not a shutdown: nothing gets a chance to save on the way out.
    redis.stop().await;
    redis.start_again().await;
    let depth = wait_until(Duration::from_secs(10), "the store after the restart", || async {
        store.depth(Queue::Emails).await.ok()
    })
    .await;
    assert_eq!(depth.pending, JOBS as u64, "every accepted job survived the crash");

    let _worker = app.spawn_worker().await;
    for to in &addresses {
        app.wait_for_emails(to, 1, Duration::from_secs(30)).await;
    }
    wait_until(Duration::from_secs(10), "every job done", || async {
        let depth = store.depth(Queue::Emails).await.ok()?;
        (depth.done == JOBS as u64).then_some(())
    })
    .await;
    for to in &addresses {
        assert_eq!(app.emails_to(to).await.len(), 1, "exactly one email to {to}");
    }

    // And `forget` is the restart that lost its data, for the tests that need one.
    redis.stop().await;
    redis.forget();
    redis.start_again().await;
    let depth = wait_until(Duration::from_secs(10), "the emptied store", || async {
        store.depth(Queue::Emails).await.ok()
    })
    .await;
    assert_eq!(depth.done + depth.pending, 0, "a forgotten Redis starts empty");
}
