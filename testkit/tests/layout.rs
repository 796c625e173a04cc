//! The queue's keys (SPEC section 12): every script gets every key it touches in `KEYS`,
//! which the scripts check themselves in every test build, and a queue written in the
//! earlier layout (a hash per job, a list per owner, a key per minute of failures) is moved
//! into the current one, every job kept, in order and run once.

// Test helpers fail loudly: an unwrap here is an assertion.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use tasklane_shared::domain::jobs::JobState;
use tasklane_shared::jobs::{EmailMessage, Job, ProcessUpload, Queue, SendEmail};
use tasklane_shared::queue::{NewJob, Outcome, QueueStore};
use tasklane_shared::redis::Conn;
use tasklane_testkit::{TestApp, TestRedis, unique, wait_until};
use uuid::Uuid;

#[tokio::test]
async fn a_script_touching_a_key_not_in_its_keys_fails_in_a_test_build() {
    let redis = TestRedis::start().await;
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = redis::aio::ConnectionManager::new(client).await.unwrap();
    let declared = tasklane_shared::queue::script(
        "#!lua\nredis.call('SET', KEYS[1], ARGV[1])\nreturn redis.call('GET', KEYS[1])",
    );
    let value: String = declared.key("mine").arg("kept").invoke_async(&mut conn).await.unwrap();
    assert_eq!(value, "kept");
    let undeclared = tasklane_shared::queue::script(
        "#!lua\nredis.call('SET', KEYS[1], '1')\nreturn redis.call('GET', 'not-mine')",
    );
    let err = undeclared.key("mine").invoke_async::<Option<String>>(&mut conn).await.unwrap_err();
    assert!(err.to_string().contains("not in its KEYS: not-mine"), "{err}");
}

/// Writes a job's hash as the earlier layout did, under `job:<id>` in the queue's namespace.
async fn old_job(
    store: &QueueStore,
    queue: Queue,
    id: &str,
    kind: &str,
    payload: &str,
    state: &str,
) {
    let fields = [
        ("id", id),
        ("kind", kind),
        ("payload", payload),
        ("attempts", "0"),
        ("max_attempts", "3"),
        ("state", state),
        ("created_ms", "1700000000000"),
        ("request_id", ""),
        ("traceparent", ""),
        ("history", "[]"),
    ];
    let _: () = redis::cmd("HSET")
        .arg(store.key(queue, &format!("job:{id}")))
        .arg(&fields[..])
        .query_async(&mut store.connection())
        .await
        .unwrap();
}

async fn run(conn: &mut Conn, command: &mut redis::Cmd) {
    let _: () = command.query_async(conn).await.unwrap();
}

fn upload_of(owner: Uuid) -> String {
    let job = ProcessUpload { attachment_id: Uuid::now_v7(), owner_id: Some(owner) };
    serde_json::to_string(&job).unwrap()
}

#[tokio::test]
async fn a_queue_of_the_earlier_layout_is_moved_whole_with_its_turns_and_failures() {
    let app = TestApp::spawn().await;
    let store = app.spawn_store();
    let mut conn = store.connection();
    let kind = ProcessUpload::SPEC.kind;
    let key = |name: &str| store.key(Queue::Uploads, name);
    // Owner a has two uploads waiting their turn, owner b one; one more is dead.
    let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
    let ids: Vec<String> = (0..4).map(|_| Uuid::now_v7().to_string()).collect();
    for (id, owner) in ids.iter().zip([a, a, b]) {
        old_job(&store, Queue::Uploads, id, kind, &upload_of(owner), "pending").await;
        let list = key(&format!("owned:{kind}:{owner}"));
        run(&mut conn, redis::cmd("RPUSH").arg(list).arg(id)).await;
    }
    run(&mut conn, redis::cmd("RPUSH").arg(key(&format!("owners:{kind}"))).arg(a.to_string()))
        .await;
    run(&mut conn, redis::cmd("RPUSH").arg(key(&format!("owners:{kind}"))).arg(b.to_string()))
        .await;
    run(&mut conn, redis::cmd("SET").arg(key(&format!("owned:{kind}"))).arg(3)).await;
    let dead = &ids[3];
    old_job(&store, Queue::Uploads, dead, kind, &upload_of(a), "dead").await;
    run(
        &mut conn,
        redis::cmd("HSET").arg(key(&format!("job:{dead}"))).arg("last_error").arg("boom"),
    )
    .await;
    // It died now (an older death would end its retention at the next claim).
    let (seconds, _): (u64, u64) = redis::cmd("TIME").query_async(&mut conn).await.unwrap();
    run(&mut conn, redis::cmd("ZADD").arg(key("dead")).arg(seconds * 1000).arg(dead)).await;
    // Two failures counted in this minute's key.
    run(&mut conn, redis::cmd("SET").arg(key(&format!("failed:{}", seconds / 60))).arg(2)).await;

    store.migrate().await.unwrap();

    assert_eq!(store.depth(Queue::Uploads).await.unwrap().pending, 3);
    assert_eq!(store.depth(Queue::Uploads).await.unwrap().dead, 1);
    assert_eq!(store.failed_last_hour(Queue::Uploads).await.unwrap(), 2);
    let job = store.job(Queue::Uploads, dead).await.unwrap().unwrap();
    assert_eq!((job.state, job.last_error.as_deref()), (JobState::Dead, Some("boom")));
    let old: Vec<String> =
        redis::cmd("KEYS").arg(format!("{}*", key("job:"))).query_async(&mut conn).await.unwrap();
    assert!(old.is_empty(), "old records left: {old:?}");
    // Moving again changes nothing; the owners still take turns, each owner's in order.
    store.migrate().await.unwrap();
    let claims = store.claim(Queue::Uploads, kind, "migrated", 3).await.unwrap();
    let claimed: Vec<&str> = claims.iter().map(|claim| claim.id.as_str()).collect();
    assert_eq!(claimed, [&ids[0], &ids[2], &ids[1]]);
    // The dead job goes back with a retry.
    assert!(store.retry_dead(Queue::Uploads, dead).await.unwrap());
    assert_eq!(store.depth(Queue::Uploads).await.unwrap().pending, 1);
}

#[tokio::test]
async fn emails_waiting_in_the_earlier_layout_are_each_sent_once_by_a_new_worker() {
    let app = TestApp::spawn().await;
    let store = app.spawn_store();
    let mut conn = store.connection();
    let key = |name: &str| store.key(Queue::Emails, name);
    let tag = unique("old").to_lowercase();
    // Three waiting in the kind's list, one retry falling due in the schedule.
    for i in 0..4 {
        let email = SendEmail {
            idempotency_key: format!("{tag}-{i}"),
            to: format!("{tag}-{i}@example.test"),
            message: EmailMessage::PasswordChanged { display_name: None },
        };
        let id = Uuid::now_v7().to_string();
        let state = if i < 3 { "pending" } else { "scheduled" };
        old_job(
            &store,
            Queue::Emails,
            &id,
            "send_email",
            &serde_json::to_string(&email).unwrap(),
            state,
        )
        .await;
        if i < 3 {
            run(&mut conn, redis::cmd("RPUSH").arg(key("pending:send_email")).arg(&id)).await;
        } else {
            run(&mut conn, redis::cmd("ZADD").arg(key("scheduled")).arg(1).arg(&id)).await;
        }
    }

    let _worker = app.spawn_worker().await;
    wait_until(Duration::from_secs(20), "every old email done", || async {
        (store.depth(Queue::Emails).await.unwrap().done == 4).then_some(())
    })
    .await;
    for i in 0..4 {
        let sent = app.emails_to(&format!("{tag}-{i}@example.test")).await;
        assert_eq!(sent.len(), 1, "email {i}");
    }
}

#[tokio::test]
async fn a_claim_from_before_redis_lost_the_queue_cannot_settle_the_job_pushed_again() {
    let app = TestApp::spawn().await;
    let store = app.spawn_store();
    let job = NewJob::plain("send_email", "{}", 3);
    store.push(Queue::Emails, std::slice::from_ref(&job)).await.unwrap();
    let before = store.claim(Queue::Emails, "send_email", "w", 1).await.unwrap().remove(0);

    // Redis loses the queue (as a flush or a restart without data would); the reconciler
    // pushes the job again and the same worker claims it.
    let mut conn = store.connection();
    for shard in store.shards().all() {
        let pattern = format!("{}*", store.key_in(Queue::Emails, shard, ""));
        let keys: Vec<String> =
            redis::cmd("KEYS").arg(pattern).query_async(&mut conn).await.unwrap();
        if !keys.is_empty() {
            run(&mut conn, redis::cmd("DEL").arg(keys)).await;
        }
    }
    store.push(Queue::Emails, std::slice::from_ref(&job)).await.unwrap();
    // Claimed once the app has copied the controls back (within a second).
    let after = wait_until(Duration::from_secs(10), "the job claimed again", || async {
        store.claim(Queue::Emails, "send_email", "w", 1).await.unwrap().pop()
    })
    .await;
    assert_eq!((before.id.as_str(), after.attempt), (after.id.as_str(), 1));
    assert_ne!(before.token, after.token, "a token is never reused");
    let ok = Outcome::Succeeded;
    assert!(!store.finish(&before, &ok, Duration::ZERO).await.unwrap(), "the old claim is refused");
    assert!(store.finish(&after, &ok, Duration::ZERO).await.unwrap());
}
