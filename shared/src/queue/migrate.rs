//! Moving a queue written by an earlier release into the layout of `ready.lua`. Before it,
//! each job was a hash of its own (`job:<id>`), each owner of a kind fair by owner had a
//! list (`owned:<kind>:<owner>`, with a count in `owned:<kind>`), and failures were counted
//! in a key per minute (`failed:<minute>`): keys a script found by itself, which a Redis
//! Cluster does not allow for.
//!
//! Every worker runs [`QueueStore::migrate`] when it starts (the API only pushes, which the
//! new layout takes as it is). It finds the old records through the indexes that both
//! layouts share (the pending lists of the registry's kinds, `running`, `scheduled`,
//! `done`, `dead`, `cancelled`), moves them in batches, each batch one script given every
//! key it touches, and marks the shard done in `layout`. Moving a record twice is
//! harmless: the second finds nothing. A process of the earlier release still running
//! writes the old layout, so upgrade with a rollout that stops every old worker and API
//! instance before the new ones start (the README says how); a job an old process pushed
//! late is pushed again from Postgres by the reconciler (SPEC section 9).

use std::sync::LazyLock;

use redis::{AsyncCommands, Script};

use super::{QueueStore, kinds_of};
use crate::jobs::Queue;

/// The layout this release writes, kept in each shard's `layout` key.
const LAYOUT: &str = "2";
/// Old records one script moves.
const BATCH: usize = 200;

/// KEYS: `jobs`, `kinds`, then each old `job:<id>` hash; ARGV: the ids, in that order.
/// Writes each hash as the record `ready.lua` keeps, and deletes it.
static MOVE_JOBS: LazyLock<Script> = LazyLock::new(|| {
    super::script(
        "#!lua flags=allow-oom
local K = {jobs = KEYS[1]}
local moved = 0
for i = 3, #KEYS do
  local id, flat = ARGV[i - 2], redis.call('HGETALL', KEYS[i])
  if #flat > 0 then
    local f = {}
    for j = 1, #flat, 2 do f[flat[j]] = flat[j + 1] end
    put_job(K, id, {kind = f.kind, max_attempts = f.max_attempts or '1',
      created_ms = f.created_ms or '0', request_id = f.request_id,
      traceparent = f.traceparent, owner = f.owner, payload = f.payload or '{}'})
    local run = {state = f.state or 'pending', kind = f.kind, worker = f.worker}
    for _, name in ipairs({'attempts', 'claims', 'started_ms', 'due_ms', 'finished_ms',
        'duration_ms'}) do
      run[name] = tonumber(f[name]) or 0
    end
    put_run(K, id, run)
    if f.history and f.history ~= '[]' then job_set(K, id, 'history', f.history) end
    if f.last_error and f.last_error ~= '' then job_set(K, id, 'last_error', f.last_error) end
    if f.kind then redis.call('SADD', KEYS[2], f.kind) end
    redis.call('DEL', KEYS[i])
    moved = moved + 1
  end
end
return moved",
    )
});

/// KEYS: `jobs`, `fair:<kind>`, the owner's old list; ARGV: the owner. The owner's jobs
/// become its turns, in their order.
static MOVE_OWNER: LazyLock<Script> = LazyLock::new(|| {
    super::script(
        "#!lua flags=allow-oom
local owner = ARGV[1]
for _, id in ipairs(redis.call('LRANGE', KEYS[3], 0, -1)) do
  local seq = redis.call('HINCRBY', KEYS[1], 'seq', 1)
  local turn = owner .. '\\0' .. string.format('%016d', seq) .. '\\0' .. id
  redis.call('ZADD', KEYS[2], 0, turn)
  job_set({jobs = KEYS[1]}, id, 'turn', turn)
end
redis.call('DEL', KEYS[3])
return 1",
    )
});

/// KEYS: `failed`, then the old `failed:<minute>` keys; ARGV: their minutes.
static MOVE_FAILED: LazyLock<Script> = LazyLock::new(|| {
    super::script(
        "#!lua flags=allow-oom
for i = 2, #KEYS do
  local count = tonumber(redis.call('GET', KEYS[i]) or '0')
  if count > 0 then redis.call('HINCRBY', KEYS[1], ARGV[i - 1], count) end
  redis.call('DEL', KEYS[i])
end
return 1",
    )
});

impl QueueStore {
    /// Moves every queue's shards written by an earlier release into this layout (see the
    /// module doc); a shard already moved costs one `GET`.
    pub async fn migrate(&self) -> redis::RedisResult<()> {
        for queue in Queue::ALL {
            for shard in self.shards.all() {
                self.migrate_shard(queue, shard).await?;
            }
        }
        Ok(())
    }

    async fn migrate_shard(&self, queue: Queue, shard: u16) -> redis::RedisResult<()> {
        let mut conn = self.connection();
        let marker = self.key_in(queue, shard, "layout");
        let done: Option<String> = conn.get(&marker).await?;
        if done.as_deref() == Some(LAYOUT) {
            return Ok(());
        }
        let key = |name: &str| self.key_in(queue, shard, name);
        let mut ids: Vec<String> = Vec::new();
        for index in ["running", "scheduled", "done", "dead", "cancelled"] {
            let more: Vec<String> = conn.zrange(key(index), 0, -1).await?;
            ids.extend(more);
        }
        for kind in kinds_of(queue) {
            let more: Vec<String> = conn.lrange(key(&format!("pending:{kind}")), 0, -1).await?;
            ids.extend(more);
            let owners: Vec<String> = conn.lrange(key(&format!("owners:{kind}")), 0, -1).await?;
            for owner in owners {
                let list = key(&format!("owned:{kind}:{owner}"));
                let more: Vec<String> = conn.lrange(&list, 0, -1).await?;
                ids.extend(more);
                let _: i64 = MOVE_OWNER
                    .key(key("jobs"))
                    .key(key(&format!("fair:{kind}")))
                    .key(list)
                    .arg(&owner)
                    .invoke_async(&mut conn)
                    .await?;
            }
            let _: i64 = conn.del(key(&format!("owned:{kind}"))).await?;
        }
        for batch in ids.chunks(BATCH) {
            let mut invocation = MOVE_JOBS.key(key("jobs"));
            invocation.key(key("kinds"));
            for id in batch {
                invocation.key(key(&format!("job:{id}")));
            }
            let _: i64 = invocation.arg(batch).invoke_async(&mut conn).await?;
        }
        let (seconds, _): (u64, u64) = redis::cmd("TIME").query_async(&mut conn).await?;
        let minutes: Vec<u64> = (0..61).map(|ago| seconds / 60 - ago).collect();
        let mut invocation = MOVE_FAILED.key(key("failed"));
        for minute in &minutes {
            invocation.key(key(&format!("failed:{minute}")));
        }
        let _: i64 = invocation.arg(&minutes).invoke_async(&mut conn).await?;
        if !ids.is_empty() {
            tracing::info!(
                queue = queue.as_str(),
                shard,
                jobs = ids.len(),
                "moved the queue's jobs to this release's layout"
            );
        }
        conn.set(&marker, LAYOUT).await
    }
}
