//! The task cache: list responses and single tasks, kept 30 s, in this instance's memory
//! and in Redis.
//!
//! Each entry names the user's generation it was read under; every write of that user's
//! tasks (by the API or a job) bumps the generation in Redis after its commit, so nothing
//! stale is served and old entries just go. A lookup asks Redis for the generation (many
//! reads share that round trip, see [`Generations`]) and serves this instance's entry when it
//! is of that generation, else the entry in Redis (one more round trip, and the entry is then
//! kept here too); a hit is the stored body, sent without parsing it. A reader notes the
//! generation before it reads the database, so a write racing the read leaves its result
//! under a generation that is already gone. When Redis is unavailable the database answers
//! (a miss), never refused.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use bytes::Bytes;
use sha2::{Digest, Sha256};
use tasklane_shared::domain::tasks::TaskView;
use tasklane_shared::redis::Conn;
use tasklane_shared::redis::Keys;
use uuid::Uuid;

use super::generations::Generations;
use crate::raw_json::RawJson;

pub const CACHE_TTL: Duration = Duration::from_secs(30);

/// What one instance keeps in memory at most, in bytes of entries.
const HELD_BYTES: u64 = 64 * 1024 * 1024;

/// The task cache, over the state's Redis connection and this instance's
/// [`InstanceCache`]; cheap to make per request.
#[derive(Clone, Copy)]
pub struct TaskCache<'a> {
    redis: &'a Conn,
    keys: &'a Keys,
    instance: &'a InstanceCache,
}

/// This instance's part of the task cache: the entries it read or stored, and the reader of
/// the generations they are checked against.
pub struct InstanceCache {
    /// By owner and response; bounded by the bytes held, least used first out.
    entries: quick_cache::sync::Cache<(Uuid, EntryName), Held, ByLength>,
    /// What every lookup asks first: whether an entry here is still current.
    generations: Generations,
}

impl InstanceCache {
    /// Starts the generation reader on the current runtime.
    pub fn spawn(redis: Conn, keys: Keys) -> Self {
        let entries = quick_cache::sync::Cache::with_weighter(16_384, HELD_BYTES, ByLength);
        Self { entries, generations: Generations::spawn(redis, keys) }
    }
}

/// Which of a user's responses an entry is.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
enum EntryName {
    Task(Uuid),
    /// The first half of the SHA-256 of the normalized query.
    List([u8; 16]),
}

/// An entry held in memory: what follows the generation in Redis' copy.
#[derive(Clone)]
struct Held {
    /// The owner's generation it was read under; served only while that is current.
    generation: u64,
    /// When it was kept, so it lives no longer than Redis' copy.
    stored: Instant,
    /// Shared with every response that sends it.
    entry: Bytes,
}

#[derive(Clone)]
struct ByLength;

impl quick_cache::Weighter<(Uuid, EntryName), Held> for ByLength {
    fn weight(&self, _name: &(Uuid, EntryName), held: &Held) -> u64 {
        // The bytes, and about what the key, the value and the map's slot take beside them.
        held.entry.len() as u64 + 96
    }
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
    pub fn new(redis: &'a Conn, keys: &'a Keys, instance: &'a InstanceCache) -> Self {
        Self { redis, keys, instance }
    }

    fn task_key(&self, user: Uuid, id: Uuid) -> String {
        self.keys.user(user, &format!("tasks:item:{id}"))
    }

    /// The key of a list response; its entry holds the generation it was read under.
    fn list_key(&self, user: Uuid, digest: &[u8; 16]) -> String {
        let mut hash = String::with_capacity(32);
        for byte in digest {
            let _ = write!(hash, "{byte:02x}");
        }
        self.keys.user(user, &format!("tasks:list:{hash}"))
    }

    /// Task `id` of `user` from the cache (an entry is `<version>:<body>` after its
    /// generation). An entry of another generation is a miss.
    pub async fn task(&self, user: Uuid, id: Uuid) -> Lookup<CachedTask> {
        let key = || self.task_key(user, id);
        self.lookup(user, EntryName::Task(id), key, |entry| {
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
        let mut entry = format!("{}:", task.version).into_bytes();
        entry.extend_from_slice(task.body.as_bytes());
        self.store(user, EntryName::Task(id), &self.task_key(user, id), lookup.generation, entry)
            .await;
    }

    /// A list response of `user` for `normalized_query` from the cache, like
    /// [`Self::task`] (the entry is the body after its generation).
    pub async fn list<T>(&self, user: Uuid, normalized_query: &str) -> Lookup<RawJson<T>> {
        let digest = list_digest(normalized_query);
        let key = || self.list_key(user, &digest);
        self.lookup(user, EntryName::List(digest), key, |entry| Some(RawJson::from_rendered(entry)))
            .await
    }

    /// Keeps a list response after a miss, under the generation seen before the read.
    pub async fn store_list<T>(
        &self,
        user: Uuid,
        normalized_query: &str,
        lookup: &Lookup<RawJson<T>>,
        body: &RawJson<T>,
    ) {
        let digest = list_digest(normalized_query);
        let key = self.list_key(user, &digest);
        let entry = body.as_bytes().to_vec();
        self.store(user, EntryName::List(digest), &key, lookup.generation, entry).await;
    }

    /// `user`'s current generation, then the entry `name` of that generation: this
    /// instance's, else Redis' (under `key()`), which is then kept here too. `hit` makes the
    /// response from the entry's bytes, which are handed on without a copy.
    async fn lookup<T>(
        &self,
        user: Uuid,
        name: EntryName,
        key: impl FnOnce() -> String,
        hit: impl Fn(Bytes) -> Option<T>,
    ) -> Lookup<T> {
        let Some(generation) = self.instance.generations.current(user).await else {
            return Lookup { hit: None, generation: None };
        };
        let held = self.instance.entries.get(&(user, name));
        if let Some(held) = held.filter(|held| held.is_current(generation)) {
            return Lookup { hit: hit(held.entry), generation: Some(generation) };
        }
        let found: redis::RedisResult<Option<Vec<u8>>> =
            redis::cmd("GET").arg(key()).query_async(&mut self.redis.clone()).await;
        let entry = found.ok().flatten().and_then(|entry| {
            let (stored, rest) = split_field(Bytes::from(entry))?;
            let stored: u64 = std::str::from_utf8(&stored).ok()?.parse().ok()?;
            (stored == generation).then_some(rest)
        });
        let Some(entry) = entry else {
            return Lookup { hit: None, generation: Some(generation) };
        };
        self.hold(user, name, generation, entry.clone());
        Lookup { hit: hit(entry), generation: Some(generation) }
    }

    fn hold(&self, user: Uuid, name: EntryName, generation: u64, entry: Bytes) {
        let held = Held { generation, stored: Instant::now(), entry };
        self.instance.entries.insert((user, name), held);
    }

    /// Keeps an entry here and in Redis under `generation` (`None`: Redis could not say
    /// which is current, so nothing is kept).
    async fn store(
        &self,
        user: Uuid,
        name: EntryName,
        key: &str,
        generation: Option<u64>,
        entry: Vec<u8>,
    ) {
        let Some(generation) = generation else { return };
        let mut stored = format!("{generation}:").into_bytes();
        stored.extend_from_slice(&entry);
        self.hold(user, name, generation, Bytes::from(entry));
        self.store_in_redis(key, &stored).await;
    }

    /// Keeps a response in Redis for [`CACHE_TTL`].
    async fn store_in_redis(&self, key: &str, entry: &[u8]) {
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

impl Held {
    /// Of `generation`, and not older than [`CACHE_TTL`] (like Redis' copy).
    fn is_current(&self, generation: u64) -> bool {
        self.generation == generation && self.stored.elapsed() < CACHE_TTL
    }
}

fn list_digest(normalized_query: &str) -> [u8; 16] {
    let digest = Sha256::digest(normalized_query.as_bytes());
    let mut half = [0; 16];
    half.copy_from_slice(&digest[..16]);
    half
}

/// The field before the first `:` of an entry, and the rest (both sharing its buffer).
fn split_field(entry: Bytes) -> Option<(Bytes, Bytes)> {
    let colon = entry.iter().position(|&b| b == b':')?;
    Some((entry.slice(..colon), entry.slice(colon + 1..)))
}
