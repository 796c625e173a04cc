//! The users' task-cache generations, read from Redis for many requests in one round trip.
//!
//! A cached task or list page may be served only under its user's current generation, which
//! lives in Redis: every write of the user's tasks bumps it after its commit, on whichever
//! instance or worker made it. So every cached read asks Redis. Concurrent reads share that
//! question: one reader task reads the generations of every user asked for since its last
//! round trip in one `MGET`, and answers them all. A read that arrives while a round trip is
//! in flight waits for the next one, so each answer was read after its read arrived: a write
//! whose response came before the read was sent is always seen.

use redis::RedisResult;
use tasklane_shared::redis::{Conn, Keys};
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

/// The most reads answered by one round trip; more wait for the next.
const MOST_PER_PIPELINE: usize = 256;

/// A read waiting for its user's generation (`None`: Redis could not say).
struct Question {
    user: Uuid,
    /// Dropped unanswered only if the reader task is gone, which reads as "cannot say".
    answer: oneshot::Sender<Option<u64>>,
}

/// Asks the reader task, which ends when this is dropped.
pub struct Generations {
    /// Unbounded: a read waits for its answer, so the queue holds at most one question per
    /// read in flight.
    questions: mpsc::UnboundedSender<Question>,
}

impl Generations {
    /// Starts the reader task on the current runtime.
    pub fn spawn(redis: Conn, keys: Keys) -> Self {
        let (questions, waiting) = mpsc::unbounded_channel();
        tokio::spawn(answer_in_batches(waiting, redis, keys));
        Self { questions }
    }

    /// `user`'s generation as Redis has it now (0 before any write), or `None` when Redis
    /// cannot say.
    pub async fn current(&self, user: Uuid) -> Option<u64> {
        let (answer, answered) = oneshot::channel();
        self.questions.send(Question { user, answer }).ok()?;
        answered.await.ok().flatten()
    }
}

async fn answer_in_batches(
    mut waiting: mpsc::UnboundedReceiver<Question>,
    mut redis: Conn,
    keys: Keys,
) {
    let mut batch = Vec::with_capacity(MOST_PER_PIPELINE);
    let mut users = Vec::with_capacity(MOST_PER_PIPELINE);
    while waiting.recv_many(&mut batch, MOST_PER_PIPELINE).await > 0 {
        users.clear();
        users.extend(batch.iter().map(|question| question.user));
        users.sort_unstable();
        users.dedup();
        // One `MGET`: on a cluster the client splits it by slot (each user's keys have a
        // slot of their own) and puts the answers back in order; a pipeline may not cross
        // slots.
        let mut mget = redis::cmd("MGET");
        for user in &users {
            mget.arg(keys.task_lists_generation(*user));
        }
        let found: RedisResult<Vec<Option<u64>>> = mget.query_async(&mut redis).await;
        if let Err(err) = &found {
            tracing::debug!(error = %err, "cannot read task-cache generations");
        }
        for question in batch.drain(..) {
            let generation = found.as_ref().ok().and_then(|generations| {
                let at = users.binary_search(&question.user).ok()?;
                Some(generations.get(at).copied().flatten().unwrap_or(0))
            });
            // The read may have gone (its client left); nothing to answer then.
            let _ = question.answer.send(generation);
        }
    }
}
