//! The task cache in Redis: list responses and single tasks, kept 30 s.
//!
//! Each entry names the user's generation it was read under; every write of that user's
//! tasks (by the API or a job) bumps the generation after its commit, so nothing stale is
//! served and old entries just expire. A lookup reads the generation and the entry in one
//! `MGET`, and a hit is the stored body, sent without parsing it. A reader notes the
//! generation before it reads the database, so a write racing the read leaves its result
//! under a generation that is already gone. When Redis is unavailable the database answers
//! (a miss), never refused.

use std::fmt::Write as _;
use std::time::Duration;

use bytes::Bytes;
use sha2::{Digest, Sha256};
use tasklane_shared::domain::tasks::TaskView;
use tasklane_shared::redis::Conn;
use tasklane_shared::redis::Keys;
use uuid::Uuid;

use crate::raw_json::RawJson;

pub const CACHE_TTL: Duration = Duration::from_secs(30);

/// The task cache, over the state's Redis connection; cheap to make per request.
#[derive(Clone, Copy)]
pub struct TaskCache<'a> {
    redis: &'a Conn,
    keys: &'a Keys,
}

/// A cache lookup: the response body on a hit, and on a miss the generation to store the
/// database's answer under (`None` when Redis cannot say: nothing is stored).
pub struct Lookup<T> {
    pub hit: Option<T>,
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
    pub fn new(redis: &'a Conn, keys: &'a Keys) -> Self {
        Self { redis, keys }
    }

    fn task_key(&self, user: Uuid, id: Uuid) -> String {
        self.keys.user(user, &format!("tasks:item:{id}"))
    }

    /// The key of a list response; its entry holds the generation it was read under.
    fn list_key(&self, user: Uuid, normalized_query: &str) -> String {
        let digest = Sha256::digest(normalized_query.as_bytes());
        let mut hash = String::with_capacity(32);
        for byte in &digest[..16] {
            let _ = write!(hash, "{byte:02x}");
        }
        self.keys.user(user, &format!("tasks:list:{hash}"))
    }

    /// Task `id` of `user` from the cache, in one round trip: the generation and the entry
    /// (`<generation>:<version>:<body>`) together. An entry of another generation is a miss.
    pub async fn task(&self, user: Uuid, id: Uuid) -> Lookup<CachedTask> {
        self.lookup(user, self.task_key(user, id), |entry| {
            let (version, body) = split_field(entry)?;
            let version = std::str::from_utf8(&version).ok()?.parse().ok()?;
            Some(CachedTask { version, body: RawJson::from_rendered(body) })
        })
        .await
    }

    /// Keeps what the database said after a miss, under the generation seen before the read.
    pub async fn store_task(
        &self,
        user: Uuid,
        id: Uuid,
        lookup: &Lookup<CachedTask>,
        task: &CachedTask,
    ) {
        let Some(generation) = lookup.generation else { return };
        let mut entry = format!("{generation}:{}:", task.version).into_bytes();
        entry.extend_from_slice(task.body.as_bytes());
        self.store(&self.task_key(user, id), &entry).await;
    }

    /// A list response of `user` for `normalized_query` from the cache, in one round trip
    /// like [`Self::task`] (the entry is `<generation>:<body>`).
    pub async fn list<T>(&self, user: Uuid, normalized_query: &str) -> Lookup<RawJson<T>> {
        let key = self.list_key(user, normalized_query);
        self.lookup(user, key, |entry| Some(RawJson::from_rendered(entry))).await
    }

    /// Keeps a list response after a miss, under the generation seen before the read.
    pub async fn store_list<T>(
        &self,
        user: Uuid,
        normalized_query: &str,
        lookup: &Lookup<RawJson<T>>,
        body: &RawJson<T>,
    ) {
        let Some(generation) = lookup.generation else { return };
        let mut entry = format!("{generation}:").into_bytes();
        entry.extend_from_slice(body.as_bytes());
        self.store(&self.list_key(user, normalized_query), &entry).await;
    }

    /// `user`'s generation and the entry under `key`, read together: the entry is a hit
    /// (made by `hit` from what follows its generation) only under the current generation.
    /// The entry's bytes are handed on as they came, without a copy.
    async fn lookup<T>(
        &self,
        user: Uuid,
        key: String,
        hit: impl FnOnce(Bytes) -> Option<T>,
    ) -> Lookup<T> {
        let found: redis::RedisResult<(Option<u64>, Option<Vec<u8>>)> = redis::cmd("MGET")
            .arg(self.keys.task_lists_generation(user))
            .arg(key)
            .query_async(&mut self.redis.clone())
            .await;
        let Ok((generation, entry)) = found else {
            return Lookup { hit: None, generation: None };
        };
        let generation = generation.unwrap_or(0);
        let hit = entry.and_then(|entry| {
            let (stored, rest) = split_field(Bytes::from(entry))?;
            let stored: u64 = std::str::from_utf8(&stored).ok()?.parse().ok()?;
            (stored == generation).then(|| hit(rest)).flatten()
        });
        Lookup { hit, generation: Some(generation) }
    }

    /// Keeps a response for [`CACHE_TTL`].
    async fn store(&self, key: &str, entry: &[u8]) {
        let result: redis::RedisResult<()> = redis::cmd("SET")
            .arg(key)
            .arg(entry)
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

/// The field before the first `:` of an entry, and the rest (both sharing its buffer).
fn split_field(entry: Bytes) -> Option<(Bytes, Bytes)> {
    let colon = entry.iter().position(|&b| b == b':')?;
    Some((entry.slice(..colon), entry.slice(colon + 1..)))
}
