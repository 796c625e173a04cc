//! The task cache in Redis: list responses and single tasks, kept 30 s.
//!
//! Entries live under the user's current generation; every write of that user's tasks (by
//! the API or a job) bumps the generation after its commit, so nothing stale is served and
//! old entries just expire. A reader notes the generation before it reads the database, so a
//! write racing the read leaves its result under a generation that is already gone. When
//! Redis is unavailable the database answers (a miss), never refused.

use std::time::Duration;

use redis::aio::ConnectionManager;
use sha2::{Digest, Sha256};
use tasklane_shared::domain::tasks::TaskView;
use tasklane_shared::redis::Keys;
use uuid::Uuid;

use crate::raw_json::RawJson;

pub const CACHE_TTL: Duration = Duration::from_secs(30);

/// The task cache, over the state's Redis connection; cheap to make per request.
#[derive(Clone, Copy)]
pub struct TaskCache<'a> {
    redis: &'a ConnectionManager,
    keys: &'a Keys,
}

/// A task's cache lookup: the task's response body on a hit, and on a miss the generation
/// to store the database's answer under (`None` when Redis cannot say: nothing is stored).
pub struct TaskLookup {
    pub hit: Option<CachedTask>,
    generation: Option<u64>,
}

/// A task as `GET /tasks/{id}` sends it: its version (the `ETag`) and its rendered body.
pub struct CachedTask {
    pub version: i32,
    pub body: RawJson<TaskView>,
}

impl CachedTask {
    pub fn render(task: &TaskView) -> Self {
        Self { version: task.version, body: RawJson::render(task) }
    }
}

impl<'a> TaskCache<'a> {
    pub fn new(redis: &'a ConnectionManager, keys: &'a Keys) -> Self {
        Self { redis, keys }
    }

    /// The key a list response is cached under, or `None` when Redis cannot say.
    pub async fn list_key(&self, user: Uuid, normalized_query: &str) -> Option<String> {
        let generation: Option<u64> = redis::cmd("GET")
            .arg(self.keys.task_lists_generation(user))
            .query_async(&mut self.redis.clone())
            .await
            .ok()?;
        let digest = Sha256::digest(normalized_query.as_bytes());
        let hash: String = digest.iter().take(16).map(|b| format!("{b:02x}")).collect();
        Some(self.keys.global(&format!("tasks:list:{user}:{}:{hash}", generation.unwrap_or(0))))
    }

    fn task_key(&self, user: Uuid, id: Uuid) -> String {
        self.keys.global(&format!("tasks:item:{user}:{id}"))
    }

    /// Task `id` of `user` from the cache, in one round trip: the generation and the entry
    /// (`<generation>:<version>:<body>`) together. An entry of another generation is a miss.
    pub async fn task(&self, user: Uuid, id: Uuid) -> TaskLookup {
        let found: redis::RedisResult<(Option<u64>, Option<String>)> = redis::cmd("MGET")
            .arg(self.keys.task_lists_generation(user))
            .arg(self.task_key(user, id))
            .query_async(&mut self.redis.clone())
            .await;
        let Ok((generation, entry)) = found else {
            return TaskLookup { hit: None, generation: None };
        };
        let generation = generation.unwrap_or(0);
        let hit = entry.and_then(|entry| {
            let mut parts = entry.splitn(3, ':');
            let stored: u64 = parts.next()?.parse().ok()?;
            let version: i32 = parts.next()?.parse().ok()?;
            let body = parts.next()?;
            (stored == generation)
                .then(|| CachedTask { version, body: RawJson::from_rendered(body.to_owned()) })
        });
        TaskLookup { hit, generation: Some(generation) }
    }

    /// Keeps what the database said after a miss, under the generation seen before the read.
    pub async fn store_task(&self, user: Uuid, id: Uuid, lookup: &TaskLookup, task: &CachedTask) {
        let Some(generation) = lookup.generation else { return };
        let entry = format!("{generation}:{}:{}", task.version, task.body.as_str());
        self.store(&self.task_key(user, id), &entry).await;
    }

    /// A cached list response.
    pub async fn get(&self, key: &str) -> Option<String> {
        redis::cmd("GET").arg(key).query_async(&mut self.redis.clone()).await.ok().flatten()
    }

    /// Keeps a response for [`CACHE_TTL`].
    pub async fn store(&self, key: &str, body: &str) {
        let result: redis::RedisResult<()> = redis::cmd("SET")
            .arg(key)
            .arg(body)
            .arg("EX")
            .arg(CACHE_TTL.as_secs())
            .query_async(&mut self.redis.clone())
            .await;
        if let Err(err) = result {
            tracing::warn!(error = %err, "cannot cache a task response");
        }
    }

    /// After any write of a user's tasks: their cached lists are stale from now on.
    ///
    /// Runs as a task of its own that the handler awaits: the response still waits for it (a
    /// list right after a write never hits the old cache), and it completes even if the
    /// client goes away after the commit and the handler is dropped.
    pub async fn invalidate(&self, user: Uuid) {
        let (mut conn, keys) = (self.redis.clone(), self.keys.clone());
        let bump = tokio::spawn(async move {
            if let Err(err) =
                tasklane_shared::redis::invalidate_task_lists(&mut conn, &keys, &[user]).await
            {
                // Cached pages live 30 s at most: the damage is bounded.
                tracing::warn!(error = %err, %user, "cannot invalidate cached task lists");
            }
        });
        let _ = bump.await;
    }
}
