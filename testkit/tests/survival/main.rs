//! SPEC section 9 for operations: Redis keeps what it accepted across a restart (production
//! persistence in dev and tests), a worker whose clock is ten minutes off changes nothing
//! (F8), and Postgres stopped under traffic costs 503s with `Retry-After`, never a 500, and
//! loses nothing (F4). Real processes throughout; only the fault is injected.

// Test helpers fail loudly: an unwrap here is an assertion.
#![allow(clippy::unwrap_used)]

mod clocks;
mod persistence;
mod postgres_down;

use std::time::Duration;

use tasklane_shared::domain::jobs::JobState;
use tasklane_shared::jobs::{EmailMessage, Queue, SendEmail};
use tasklane_shared::outbox;
use tasklane_shared::queue::QueueStore;
use tasklane_testkit::{TestApp, unique, wait_until};

fn email(to: &str) -> SendEmail {
    SendEmail {
        idempotency_key: unique("key"),
        to: to.to_owned(),
        message: EmailMessage::PasswordChanged { display_name: None },
    }
}

fn address() -> String {
    format!("{}@example.test", unique("to"))
}

/// Writes a `send_email` job to the outbox (as the API does) and returns its job id.
async fn enqueue(app: &TestApp, job: &SendEmail) -> String {
    let mut tx = app.db.begin().await.unwrap();
    let id = outbox::enqueue(&mut tx, job, None).await.unwrap();
    tx.commit().await.unwrap();
    id.to_string()
}

async fn wait_for_state(
    store: &QueueStore,
    queue: Queue,
    id: &str,
    state: JobState,
    deadline: Duration,
) {
    wait_until(deadline, &format!("job {id} {state}"), || async {
        let job = store.job(queue, id).await.unwrap()?;
        (job.state == state).then_some(())
    })
    .await;
}
