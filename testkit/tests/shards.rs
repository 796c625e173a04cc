//! Sharded queues (SPEC section 12, `TASKLANE_QUEUE_SHARDS`): one queue spread over three
//! hash tags still runs every job once, is served shard after shard, and keeps its
//! priorities and fleet-wide limits across the shards. On the single Redis in the main pass
//! (three namespaces of one server), and on the cluster in the cluster pass, where
//! `testkit/tests/cluster.rs` also checks the three shards are on three masters.

// Test helpers fail loudly: an unwrap here is an assertion.
#![allow(clippy::unwrap_used)]

use std::collections::HashSet;
use std::time::Duration;

use tasklane_shared::jobs::{EmailMessage, Job, Queue, SendDigest, SendEmail};
use tasklane_shared::queue::{NewJob, Outcome, QueueSettings, QueueStore};
use tasklane_testkit::jobs::enqueue_committed;
use tasklane_testkit::{TestApp, unique, wait_until};

async fn sharded_app() -> TestApp {
    TestApp::spawn_with(|settings| settings.queue_shards = 3).await
}

fn job(kind: &str) -> NewJob {
    NewJob::plain(kind, "{}", 3)
}

/// `n` jobs of `kind` whose ids put them in `shard` (of 3).
fn jobs_in(store: &QueueStore, kind: &str, shard: u16, n: usize) -> Vec<NewJob> {
    std::iter::repeat_with(|| job(kind))
        .filter(|job| store.shards().of_job(&job.id.to_string(), false) == shard)
        .take(n)
        .collect()
}

#[tokio::test]
async fn a_queue_over_three_shards_sends_every_email_once_from_every_shard() {
    let app = sharded_app().await;
    let _worker = app.spawn_worker().await;
    let tag = unique("sh").to_lowercase();
    for i in 0..45 {
        let email = SendEmail {
            idempotency_key: format!("{tag}-{i}"),
            to: format!("{tag}-{i}@example.test"),
            message: EmailMessage::PasswordChanged { display_name: None },
        };
        enqueue_committed(&app, &email).await;
    }
    let store = app.spawn_store();
    wait_until(Duration::from_secs(30), "every email done", || async {
        (store.depth(Queue::Emails).await.unwrap().done == 45).then_some(())
    })
    .await;
    for i in 0..45 {
        let sent = app.emails_to(&format!("{tag}-{i}@example.test")).await;
        assert_eq!(sent.len(), 1, "email {i}");
    }
    // Each shard held and ran some of them.
    let mut conn = store.connection();
    for shard in store.shards().all() {
        let done: u64 = redis::cmd("ZCARD")
            .arg(store.key_in(Queue::Emails, shard, "done"))
            .query_async(&mut conn)
            .await
            .unwrap();
        assert!(done > 0, "shard {shard} ran none of the 45");
    }
}

#[tokio::test]
async fn each_claim_starts_at_the_next_shard_so_every_shard_is_served() {
    let app = sharded_app().await;
    let store = app.spawn_store();
    for shard in 0..3 {
        let jobs = jobs_in(&store, SendEmail::SPEC.kind, shard, 5);
        store.push(Queue::Emails, &jobs).await.unwrap();
    }
    // Three claims of one job each, from a shard with jobs: three different shards.
    let mut served = HashSet::new();
    for _ in 0..3 {
        let claims = store.claim(Queue::Emails, SendEmail::SPEC.kind, "w", 1).await.unwrap();
        assert_eq!(claims.len(), 1);
        served.insert(claims[0].shard);
    }
    assert_eq!(served.len(), 3, "{served:?}");
    // A claim larger than one shard holds takes from the next ones.
    let claims = store.claim(Queue::Emails, SendEmail::SPEC.kind, "w", 12).await.unwrap();
    assert_eq!(claims.len(), 12);
}

#[tokio::test]
async fn an_urgent_email_in_any_shard_holds_back_the_digests_of_every_shard() {
    let app = sharded_app().await;
    let store = app.spawn_store();
    let digests: Vec<NewJob> =
        (0..3).flat_map(|shard| jobs_in(&store, SendDigest::SPEC.kind, shard, 2)).collect();
    store.push(Queue::Emails, &digests).await.unwrap();
    // One urgent email, in one shard only.
    let urgent = jobs_in(&store, SendEmail::SPEC.kind, 2, 1);
    store.push(Queue::Emails, &urgent).await.unwrap();
    for _ in 0..3 {
        let claims = store.claim(Queue::Emails, SendDigest::SPEC.kind, "w", 6).await.unwrap();
        assert!(claims.is_empty(), "a digest started before the urgent email: {claims:?}");
    }
    let claims = store.claim(Queue::Emails, SendEmail::SPEC.kind, "w", 6).await.unwrap();
    assert_eq!(claims.len(), 1);
    let claims = store.claim(Queue::Emails, SendDigest::SPEC.kind, "w", 6).await.unwrap();
    assert_eq!(claims.len(), 6);
}

#[tokio::test]
async fn a_concurrency_limit_holds_across_shards_and_a_dead_workers_permits_lapse() {
    let app = sharded_app().await;
    let lease = Duration::from_secs(2);
    let store = app.store_with(QueueSettings { lease, ..QueueSettings::default() });
    // Newer than any copy from Postgres (which holds no limit), so it stays.
    let limit = [(format!("concurrency:{}", SendEmail::SPEC.kind), "2".to_owned())];
    assert!(store.apply_controls(Queue::Emails, i64::MAX / 2, &limit).await.unwrap());
    let jobs: Vec<NewJob> =
        (0..3).flat_map(|shard| jobs_in(&store, SendEmail::SPEC.kind, shard, 3)).collect();
    store.push(Queue::Emails, &jobs).await.unwrap();

    let kind = SendEmail::SPEC.kind;
    let first = store.claim(Queue::Emails, kind, "a", 5).await.unwrap();
    assert_eq!(first.len(), 2, "the limit is 2 over all three shards");
    for worker in ["b", "c", "d"] {
        assert!(store.claim(Queue::Emails, kind, worker, 5).await.unwrap().is_empty());
    }
    // An outcome frees one place, for whichever shard.
    assert!(store.finish(&first[0], &Outcome::Succeeded, Duration::ZERO).await.unwrap());
    let next = store.claim(Queue::Emails, kind, "b", 5).await.unwrap();
    assert_eq!(next.len(), 1);
    assert!(store.claim(Queue::Emails, kind, "c", 5).await.unwrap().is_empty());

    // Workers "a" and "b" die holding two: their permits lapse with their leases.
    let again = wait_until(Duration::from_secs(10), "the dead workers' places back", || async {
        let claims = store.claim(Queue::Emails, kind, "e", 5).await.unwrap();
        (!claims.is_empty()).then_some(claims)
    })
    .await;
    assert!(again.len() <= 2, "{again:?}");
}

#[tokio::test]
async fn a_limit_set_after_a_kind_was_claimed_without_one_holds_from_the_next_claim() {
    let app = sharded_app().await;
    let store = app.store_with(QueueSettings::default());
    let kind = SendEmail::SPEC.kind;
    // Claimed without a limit: the store remembers the kind has none, and skips admission.
    store.push(Queue::Emails, &jobs_in(&store, kind, 1, 1)).await.unwrap();
    assert_eq!(store.claim(Queue::Emails, kind, "a", 5).await.unwrap().len(), 1);
    assert_eq!(store.claim(Queue::Emails, kind, "a", 5).await.unwrap().len(), 0);

    let limit = [(format!("concurrency:{kind}"), "2".to_owned())];
    assert!(store.apply_controls(Queue::Emails, i64::MAX / 2, &limit).await.unwrap());
    let jobs: Vec<NewJob> = (0..3).flat_map(|shard| jobs_in(&store, kind, shard, 3)).collect();
    store.push(Queue::Emails, &jobs).await.unwrap();
    // The first claim finds the limit in a shard's controls and takes nothing; from the next
    // on, claims are admitted again. The job claimed before the limit holds no permit.
    let mut claimed = Vec::new();
    for worker in ["b", "c", "d", "e"] {
        claimed.push(store.claim(Queue::Emails, kind, worker, 5).await.unwrap().len());
    }
    assert_eq!(claimed, [0, 2, 0, 0]);
}
