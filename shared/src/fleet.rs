//! The live worker fleet (SPEC section 10, `GET /admin/workers`): every worker process says
//! every [`BEAT`] who it is and what it runs, timed by Redis' clock; a process that stops
//! saying so (killed, partitioned) drops out of the list once a lease has passed without a
//! word, and out of Redis after [`FORGET_AFTER`].

use std::collections::BTreeMap;
use std::sync::LazyLock;
use std::time::Duration;

use crate::redis::Conn;
use chrono::{DateTime, Utc};
use redis::Script;
use serde::{Deserialize, Serialize};

use crate::redis::Keys;

/// How often a worker says it is alive.
pub const BEAT: Duration = Duration::from_secs(2);
/// When a silent worker's entry is removed for good.
const FORGET_AFTER: Duration = Duration::from_secs(600);

/// Records a worker's beat: its description in one hash, when it was seen (Redis ms) in a
/// sorted set, and drops entries silent for longer than ARGV[3] ms.
/// KEYS: the description hash, the last-seen sorted set (one hash tag). ARGV: id, JSON, ms.
static RECORD: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "local t = redis.call('TIME')
         local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
         for _, gone in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now - tonumber(ARGV[3]))) do
           redis.call('HDEL', KEYS[1], gone)
           redis.call('ZREM', KEYS[2], gone)
         end
         redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
         redis.call('ZADD', KEYS[2], now, ARGV[1])
         return now",
    )
});

/// One worker process, as it describes itself.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkerInfo {
    /// The name its claims carry (`<host>-<pid>-<suffix>`).
    pub id: String,
    pub host: String,
    pub pid: u32,
    /// The release it runs.
    pub version: String,
    pub started_at: DateTime<Utc>,
    /// Jobs it runs at once per kind.
    pub concurrency: usize,
    /// Jobs it holds now (claimed, outcome not yet recorded), by kind.
    pub running: BTreeMap<String, u64>,
    /// When it last said so (Redis' clock); filled in when read.
    #[serde(default, skip_serializing)]
    pub last_seen: Option<DateTime<Utc>>,
}

fn keys_of(keys: &Keys) -> (String, String) {
    (keys.global("{fleet}:workers"), keys.global("{fleet}:seen"))
}

/// Records one beat of `info`.
pub async fn beat(conn: &mut Conn, keys: &Keys, info: &WorkerInfo) -> anyhow::Result<()> {
    let (workers, seen) = keys_of(keys);
    let _: i64 = RECORD
        .key(workers)
        .key(seen)
        .arg(&info.id)
        .arg(serde_json::to_string(info)?)
        .arg(FORGET_AFTER.as_millis() as u64)
        .invoke_async(conn)
        .await?;
    Ok(())
}

/// Removes a worker that stops (a graceful shutdown), so it leaves the list at once.
pub async fn leave(conn: &mut Conn, keys: &Keys, id: &str) -> redis::RedisResult<()> {
    let (workers, seen) = keys_of(keys);
    redis::pipe().hdel(workers, id).zrem(seen, id).query_async(conn).await
}

/// The workers seen within `within` (a lease), most recently started first.
pub async fn live(
    conn: &mut Conn,
    keys: &Keys,
    within: Duration,
) -> anyhow::Result<Vec<WorkerInfo>> {
    let (workers, seen) = keys_of(keys);
    let (seconds, micros): (i64, i64) = redis::cmd("TIME").query_async(conn).await?;
    let now_ms = seconds * 1000 + micros / 1000;
    let since = now_ms - i64::try_from(within.as_millis()).unwrap_or(i64::MAX);
    let ids: Vec<(String, i64)> = redis::cmd("ZRANGEBYSCORE")
        .arg(&seen)
        .arg(since)
        .arg("+inf")
        .arg("WITHSCORES")
        .query_async(conn)
        .await?;
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let names: Vec<&str> = ids.iter().map(|(id, _)| id.as_str()).collect();
    let described: Vec<Option<String>> =
        redis::cmd("HMGET").arg(&workers).arg(&names).query_async(conn).await?;
    let mut live: Vec<WorkerInfo> = ids
        .iter()
        .zip(described)
        .filter_map(|((_, seen_ms), json)| {
            let mut info: WorkerInfo = serde_json::from_str(&json?).ok()?;
            info.last_seen = DateTime::from_timestamp_millis(*seen_ms);
            Some(info)
        })
        .collect();
    live.sort_by_key(|worker| std::cmp::Reverse(worker.started_at));
    Ok(live)
}
