//! Helpers for the queue's fault tests: an email job to send, writing a job to the outbox as
//! the API does, and waiting for a job's state in Redis.

use std::time::Duration;

use tasklane_shared::domain::jobs::JobState;
use tasklane_shared::jobs::{EmailMessage, Job, Queue, SendEmail};
use tasklane_shared::queue::QueueStore;

use crate::{TestApp, unique, wait_until};

/// A password-changed notice to `to` under a fresh idempotency key: the simplest email job.
pub fn notice_email(to: &str) -> SendEmail {
    SendEmail {
        idempotency_key: unique("key"),
        to: to.to_owned(),
        message: EmailMessage::PasswordChanged { display_name: None },
    }
}

/// Writes `job` to the outbox in a committed transaction (as the API does); its job id.
pub async fn enqueue_committed<J: Job>(app: &TestApp, job: &J) -> String {
    let mut tx = app.db.begin().await.expect("begin");
    let id = tasklane_shared::outbox::enqueue(&mut tx, job, None).await.expect("enqueue");
    tx.commit().await.expect("commit");
    id.to_string()
}

/// Waits until job `id` of `queue` is in `state`.
pub async fn wait_for_state(
    store: &QueueStore,
    queue: Queue,
    id: &str,
    state: JobState,
    deadline: Duration,
) {
    wait_until(deadline, &format!("job {id} {state}"), || async {
        let job = store.job(queue, id).await.expect("read the job")?;
        (job.state == state).then_some(())
    })
    .await;
}

impl crate::TestApp {
    /// A client of this test's job store (its Redis prefix).
    pub fn spawn_store(&self) -> tasklane_shared::queue::QueueStore {
        self.store_with(tasklane_shared::queue::QueueSettings::default())
    }

    /// A client of this test's queues with the given timing, on the app's shards.
    pub fn store_with(
        &self,
        mut settings: tasklane_shared::queue::QueueSettings,
    ) -> tasklane_shared::queue::QueueStore {
        settings.shards = self.settings.queue_shards;
        let conn = tasklane_shared::redis::connect(&self.settings).expect("valid REDIS_URL");
        tasklane_shared::queue::QueueStore::new(
            conn,
            tasklane_shared::redis::Keys::new(self.settings.redis_prefix.clone()),
            settings,
        )
    }
}

/// `n` jobs of the emails queue, dead with `error` as if each had used its last attempt, with
/// their records dead too (no worker may run meanwhile); their ids.
pub async fn dead_emails(app: &TestApp, store: &QueueStore, n: usize, error: &str) -> Vec<String> {
    let mut ids = Vec::new();
    for _ in 0..n {
        ids.push(enqueue_committed(app, &notice_email(&crate::email_address())).await);
    }
    let relay =
        tasklane_shared::outbox::Relay::new(app.db.clone(), store.clone(), Duration::from_secs(1));
    while relay.relay_batch().await.expect("relay") > 0 {}
    let mut left = n;
    while left > 0 {
        let claims = store.claim(Queue::Emails, "send_email", "seed", left).await.expect("claim");
        for claim in &claims {
            let dead = tasklane_shared::queue::Outcome::Dead { error: error.to_owned() };
            assert!(store.finish(claim, &dead, Duration::ZERO).await.expect("finish"));
        }
        left -= claims.len();
    }
    let uuids: Vec<uuid::Uuid> = ids.iter().map(|id| id.parse().expect("a uuid")).collect();
    sqlx::query("update outbox set finished_at = now(), outcome = 'dead' where id = any($1)")
        .bind(&uuids)
        .execute(&app.db)
        .await
        .expect("mark the records dead");
    ids
}
