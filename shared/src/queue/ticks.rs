//! Cron bookkeeping in Redis: when each schedule last enqueued a tick. The worker reads it
//! to catch up a tick missed while the fleet was down; `GET /admin/schedules` shows it.

use super::QueueStore;

/// The hash of last ticks, one field per scheduled kind (under the global prefix).
const LAST_TICK: &str = "schedules:last_tick";

impl QueueStore {
    /// Records that a schedule's tick at `at_ms` was enqueued.
    pub async fn record_tick(&self, kind: &str, at_ms: i64) -> redis::RedisResult<()> {
        redis::cmd("HSET")
            .arg(self.keys.global(LAST_TICK))
            .arg(kind)
            .arg(at_ms)
            .query_async(&mut self.conn.clone())
            .await
    }

    /// The last enqueued tick of a schedule, in Unix milliseconds.
    pub async fn last_tick(&self, kind: &str) -> redis::RedisResult<Option<i64>> {
        redis::cmd("HGET")
            .arg(self.keys.global(LAST_TICK))
            .arg(kind)
            .query_async(&mut self.conn.clone())
            .await
    }
}
