//! The Redis side of tasks: the daily creation quota and the list cache.
//!
//! Quota: a counter per user and UTC day, expiring at the day's end. A request reserves its
//! whole count atomically (a bulk of 30 either fits or takes nothing) and gives it back unless
//! its tasks were committed, so a refused, failed or cancelled request uses no quota.
//!
//! Cache: list responses and single tasks are kept 30 s under the user's current generation;
//! every write of that user's tasks (by the API or a job) bumps the generation after its
//! commit, so nothing stale is served and old entries just expire. A reader notes the
//! generation before it reads the database, so a write racing the read leaves its result
//! under a generation that is already gone. When Redis is unavailable the database answers
//! (a miss), never refused.

use std::sync::LazyLock;
use std::time::Duration;

use chrono::{Datelike, Utc};
use redis::Script;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::model::TaskView;
use crate::raw_json::RawJson;
use crate::state::AppState;

pub const CACHE_TTL: Duration = Duration::from_secs(30);

static RESERVE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"local v = redis.call('INCRBY', KEYS[1], ARGV[1])
          if v == tonumber(ARGV[1]) then redis.call('EXPIREAT', KEYS[1], ARGV[3]) end
          if v > tonumber(ARGV[2]) then redis.call('DECRBY', KEYS[1], ARGV[1]) return 0 end
          return 1",
    )
});

fn quota_key(state: &AppState, user: Uuid) -> String {
    let today = Utc::now().date_naive();
    state.keys.global(&format!(
        "quota:task_create:{user}:{}{:02}{:02}",
        today.year(),
        today.month(),
        today.day()
    ))
}

/// Seconds until the quota resets (the next UTC midnight).
pub fn seconds_to_reset() -> u64 {
    let now = Utc::now();
    let midnight =
        (now.date_naive() + chrono::Days::new(1)).and_hms_opt(0, 0, 0).map(|t| t.and_utc());
    midnight.map_or(1, |m| u64::try_from((m - now).num_seconds()).unwrap_or(0).max(1))
}

/// Creations taken from one day's quota. Unless [`Reservation::keep`] is called once the
/// tasks are committed, dropping it gives them back to that same day (also when the request
/// is cancelled mid-way, or crosses midnight).
pub struct Reservation {
    key: String,
    n: u32,
    conn: Option<redis::aio::ConnectionManager>,
}

impl Reservation {
    /// The creations happened: the quota stays used.
    pub fn keep(mut self) {
        self.conn = None;
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        let Some(mut conn) = self.conn.take() else {
            return;
        };
        let (key, n) = (std::mem::take(&mut self.key), self.n);
        tokio::spawn(async move {
            let result: redis::RedisResult<i64> =
                redis::cmd("DECRBY").arg(&key).arg(n).query_async(&mut conn).await;
            if let Err(err) = result {
                tracing::warn!(error = %err, %key, "cannot give back quota");
            }
        });
    }
}

/// Takes `n` creations from today's quota; `None` when they do not fit (nothing taken).
pub async fn reserve(
    state: &AppState,
    user: Uuid,
    n: u32,
) -> redis::RedisResult<Option<Reservation>> {
    let reset_at = Utc::now().timestamp() + i64::try_from(seconds_to_reset()).unwrap_or(86_400);
    let key = quota_key(state, user);
    let ok: i64 = RESERVE
        .key(&key)
        .arg(n)
        .arg(state.settings.tasks_daily_quota)
        .arg(reset_at)
        .invoke_async(&mut state.redis.clone())
        .await?;
    // Built only when granted: a refused reservation must not give anything back on drop.
    Ok((ok == 1).then(|| Reservation { key, n, conn: Some(state.redis.clone()) }))
}

/// The key a list response is cached under, or `None` when Redis cannot say.
pub async fn cache_key(state: &AppState, user: Uuid, normalized_query: &str) -> Option<String> {
    let generation: Option<u64> = redis::cmd("GET")
        .arg(state.keys.task_lists_generation(user))
        .query_async(&mut state.redis.clone())
        .await
        .ok()?;
    let digest = Sha256::digest(normalized_query.as_bytes());
    let hash: String = digest.iter().take(16).map(|b| format!("{b:02x}")).collect();
    Some(state.keys.global(&format!("tasks:list:{user}:{}:{hash}", generation.unwrap_or(0))))
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

fn task_key(state: &AppState, user: Uuid, id: Uuid) -> String {
    state.keys.global(&format!("tasks:item:{user}:{id}"))
}

/// Task `id` of `user` from the cache, in one round trip: the generation and the entry
/// (`<generation>:<version>:<body>`) together. An entry of another generation is a miss.
pub async fn cached_task(state: &AppState, user: Uuid, id: Uuid) -> TaskLookup {
    let found: redis::RedisResult<(Option<u64>, Option<String>)> = redis::cmd("MGET")
        .arg(state.keys.task_lists_generation(user))
        .arg(task_key(state, user, id))
        .query_async(&mut state.redis.clone())
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
pub async fn store_task(
    state: &AppState,
    user: Uuid,
    id: Uuid,
    lookup: &TaskLookup,
    task: &CachedTask,
) {
    let Some(generation) = lookup.generation else { return };
    let entry = format!("{generation}:{}:{}", task.version, task.body.as_str());
    store(state, &task_key(state, user, id), &entry).await;
}

pub async fn cached(state: &AppState, key: &str) -> Option<String> {
    redis::cmd("GET").arg(key).query_async(&mut state.redis.clone()).await.ok().flatten()
}

pub async fn store(state: &AppState, key: &str, body: &str) {
    let result: redis::RedisResult<()> = redis::cmd("SET")
        .arg(key)
        .arg(body)
        .arg("EX")
        .arg(CACHE_TTL.as_secs())
        .query_async(&mut state.redis.clone())
        .await;
    if let Err(err) = result {
        tracing::warn!(error = %err, "cannot cache a task response");
    }
}

/// After any write of a user's tasks: their cached lists are stale from now on.
///
/// Runs as a task of its own that the handler awaits: the response still waits for it (a
/// list right after a write never hits the old cache), and it completes even if the client
/// goes away after the commit and the handler is dropped.
pub async fn invalidate(state: &AppState, user: Uuid) {
    let (mut conn, keys) = (state.redis.clone(), state.keys.clone());
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
