//! Failover on a Redis Cluster (SPEC section 12): the master holding the emails queue is
//! failed over while its jobs drain, without waiting for its replica to catch up (what a
//! crashed master costs), and still every accepted job ends and no email goes out twice.
//! And a queue spread over as many shards as the cluster has masters has one on each.
//! Runs in `scripts/test`'s cluster pass, on its own: it fails a master of the shared cluster
//! over.

// Test helpers fail loudly: an unwrap here is an assertion.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::time::Duration;

use tasklane_shared::jobs::{EmailMessage, SendEmail};
use tasklane_testkit::jobs::enqueue_committed;
use tasklane_testkit::{TestApp, unique, wait_until};

const JOBS: usize = 120;

/// The lines of `CLUSTER NODES`, split into fields.
fn lines(nodes: &str) -> Vec<Vec<&str>> {
    nodes.lines().map(|line| line.split(' ').collect()).collect()
}

fn address(fields: &[&str]) -> String {
    fields[1].split('@').next().unwrap().to_owned()
}

/// The id and `host:port` of the master serving `slot`.
fn master_of(nodes: &str, slot: u16) -> (String, String) {
    let serves = |fields: &[&str]| {
        fields[8..].iter().any(|range| match range.split_once('-') {
            Some((from, to)) => (from.parse().unwrap()..=to.parse().unwrap()).contains(&slot),
            None => range.parse::<u16>().is_ok_and(|single| single == slot),
        })
    };
    let master = lines(nodes)
        .into_iter()
        .find(|fields| fields[2].contains("master") && fields.len() > 8 && serves(fields))
        .unwrap_or_else(|| panic!("no master serves slot {slot} in:\n{nodes}"));
    (master[0].to_owned(), address(&master))
}

/// A healthy replica of master `id`.
fn replica_of(nodes: &str, id: &str) -> Option<String> {
    let lines = lines(nodes);
    let replica = lines.iter().find(|fields| {
        fields[2].contains("slave") && !fields[2].contains("fail") && fields[3] == id
    })?;
    Some(address(replica))
}

async fn node(address: &str) -> redis::aio::MultiplexedConnection {
    let client = redis::Client::open(format!("redis://{address}")).unwrap();
    client.get_multiplexed_async_connection().await.unwrap()
}

/// How many emails the mail capture holds for each address containing `tag`.
async fn sent_per_address(app: &TestApp, tag: &str) -> HashMap<String, usize> {
    let base = std::env::var("MAIL_API_URL").unwrap();
    let all: Vec<serde_json::Value> =
        app.client.get(format!("{base}/email")).send().await.unwrap().json().await.unwrap();
    let mut sent = HashMap::new();
    for mail in all {
        for to in mail["to"].as_array().into_iter().flatten() {
            let address = to["address"].as_str().unwrap_or_default().to_lowercase();
            if address.contains(tag) {
                *sent.entry(address).or_insert(0) += 1;
            }
        }
    }
    sent
}

#[tokio::test]
async fn a_master_failed_over_mid_drain_loses_no_job_and_sends_no_email_twice() {
    let app = TestApp::spawn_with(|s| s.reconcile_interval = Duration::from_millis(500)).await;
    let Some(nodes) = app.settings.redis_cluster_nodes.clone() else {
        panic!("needs a Redis Cluster: run through scripts/test (its cluster pass)");
    };
    let seed = tasklane_shared::redis::cluster_nodes(&nodes)[0].clone();
    let mut any = node(seed.trim_start_matches("redis://")).await;
    let workers = [app.spawn_worker().await, app.spawn_worker().await];

    let tag = unique("fo").to_lowercase();
    for i in 0..JOBS {
        let job = SendEmail {
            idempotency_key: format!("{tag}-{i}"),
            to: format!("{tag}-{i}@example.test"),
            message: EmailMessage::PasswordChanged { display_name: None },
        };
        enqueue_committed(&app, &job).await;
    }

    // Mid-drain: some sent, most not.
    wait_until(Duration::from_secs(30), "the first emails of the drain", || async {
        (sent_per_address(&app, &tag).await.len() >= 5).then_some(())
    })
    .await;
    let queue_key = format!("{}:{{emails}}:running", app.settings.redis_prefix);
    let slot: u16 =
        redis::cmd("CLUSTER").arg("KEYSLOT").arg(&queue_key).query_async(&mut any).await.unwrap();
    let layout: String = redis::cmd("CLUSTER").arg("NODES").query_async(&mut any).await.unwrap();
    let (master, _) = master_of(&layout, slot);
    let replica = replica_of(&layout, &master).expect("the master has a replica");
    // FORCE: the replica takes over without waiting for the master's last writes.
    let mut promoted = node(&replica).await;
    let _: () = redis::cmd("CLUSTER")
        .arg("FAILOVER")
        .arg("FORCE")
        .query_async(&mut promoted)
        .await
        .unwrap();
    wait_until(Duration::from_secs(30), "the replica to serve the emails queue", || async {
        let layout: String =
            redis::cmd("CLUSTER").arg("NODES").query_async(&mut node(&replica).await).await.ok()?;
        (master_of(&layout, slot).1 == replica).then_some(())
    })
    .await;
    assert!(
        sent_per_address(&app, &tag).await.len() < JOBS,
        "the failover came after the drain; make it larger"
    );

    let sent = wait_until(Duration::from_secs(90), "every email of the drain", || async {
        let sent = sent_per_address(&app, &tag).await;
        (sent.len() == JOBS).then_some(sent)
    })
    .await;
    let twice: Vec<_> = sent.iter().filter(|(_, count)| **count > 1).collect();
    assert!(twice.is_empty(), "sent twice: {twice:?}");
    wait_until(Duration::from_secs(30), "every job's end to be recorded", || async {
        let succeeded: i64 = sqlx::query_scalar(
            "select count(*) from outbox where kind = 'send_email' and outcome = 'succeeded'",
        )
        .fetch_one(&app.db)
        .await
        .unwrap();
        (succeeded == JOBS as i64).then_some(())
    })
    .await;
    drop(workers);
}

#[tokio::test]
async fn a_queue_spread_over_three_shards_has_one_on_each_master() {
    let app = TestApp::spawn_with(|s| s.queue_shards = 3).await;
    let Some(nodes) = app.settings.redis_cluster_nodes.clone() else {
        panic!("needs a Redis Cluster: run through scripts/test (its cluster pass)");
    };
    let seed = tasklane_shared::redis::cluster_nodes(&nodes)[0].clone();
    let mut any = node(seed.trim_start_matches("redis://")).await;
    let layout: String = redis::cmd("CLUSTER").arg("NODES").query_async(&mut any).await.unwrap();
    let store = app.spawn_store();
    let mut masters = std::collections::HashSet::new();
    for queue in tasklane_shared::jobs::Queue::ALL {
        masters.clear();
        for shard in store.shards().all() {
            let key = store.key_in(queue, shard, "running");
            let slot: u16 =
                redis::cmd("CLUSTER").arg("KEYSLOT").arg(&key).query_async(&mut any).await.unwrap();
            masters.insert(master_of(&layout, slot).0);
        }
        assert_eq!(masters.len(), 3, "the shards of {} share masters", queue.as_str());
    }
}
