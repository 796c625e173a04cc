//! [`WorkerContext`]: what every job handler, backend and the health server of one worker
//! process share. It sits below `jobs`, `health` and `app`, which all use it, so the process
//! is built in `app` without anything below importing back up.

use std::sync::Arc;

use sqlx::PgPool;
use tasklane_shared::config::{AttachmentSettings, Settings};
use tasklane_shared::jobs::Job;
use tasklane_shared::queue::{HeldClaims, QueueStore, RedisBackend};
use tasklane_shared::redis::Keys;
use tasklane_shared::storage::Bucket;

use crate::mailer::Mailer;
use crate::templates::Templates;

/// Invalidates users' cached task lists after a job changed their tasks.
#[derive(Clone)]
pub struct TaskLists {
    conn: tasklane_shared::redis::Conn,
    keys: Keys,
}

impl TaskLists {
    pub fn new(conn: tasklane_shared::redis::Conn, keys: Keys) -> Self {
        Self { conn, keys }
    }

    pub async fn invalidate(&self, users: &[uuid::Uuid]) {
        if let Err(err) =
            tasklane_shared::redis::invalidate_task_lists(&mut self.conn.clone(), &self.keys, users)
                .await
        {
            // Cached pages live 30 s at most: the damage is bounded.
            tracing::warn!(error = %err, "cannot invalidate cached task lists");
        }
    }
}

/// What every job handler and backend of this process shares; cheap to clone.
#[derive(Clone)]
pub struct WorkerContext {
    pub db: PgPool,
    pub store: QueueStore,
    pub mailer: Mailer,
    pub templates: Templates,
    pub task_lists: TaskLists,
    /// The object store (`S3_ENDPOINT`), for attachments.
    pub bucket: Bucket,
    /// Upload limits, for `process_upload`.
    pub attachments: AttachmentSettings,
    /// Claims this process holds, handed back if a graceful shutdown runs out of time.
    pub held: HeldClaims,
    /// Unique per process start, so a restarted worker never inherits a dead one's claims.
    pub name: String,
    pub concurrency: usize,
    /// The settings the process started with (schedules, Redis URL for blocking clients).
    pub(crate) settings: Arc<Settings>,
}

impl WorkerContext {
    pub fn worker_name(&self, kind: &str) -> String {
        format!("{}/{kind}", self.name)
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// A backend for kind `J` with a blocking connection of its own, claiming up to
    /// `concurrency` jobs at a time (the concurrency of the worker it serves).
    pub fn backend<J: Job>(&self, concurrency: usize) -> RedisBackend<J> {
        let blocking = tasklane_shared::redis::connect_blocking(&self.settings)
            .expect("REDIS_URL was validated when the worker started");
        RedisBackend::new(
            self.store.clone(),
            blocking,
            self.worker_name(J::SPEC.kind),
            self.held.clone(),
        )
        .with_prefetch(concurrency)
    }
}
