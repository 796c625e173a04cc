//! The daily task-creation quota, kept in Redis.
//!
//! A counter per user and UTC day, expiring at the day's end. A request reserves its whole
//! count atomically (a bulk of 30 either fits or takes nothing) and gives it back unless its
//! tasks were committed, so a refused, failed or cancelled request uses no quota.

use std::sync::LazyLock;

use chrono::{Datelike, Utc};
use redis::Script;
use tasklane_shared::redis::Conn;
use tasklane_shared::redis::Keys;
use uuid::Uuid;

static RESERVE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"local v = redis.call('INCRBY', KEYS[1], ARGV[1])
          if v == tonumber(ARGV[1]) then redis.call('EXPIREAT', KEYS[1], ARGV[3]) end
          if v > tonumber(ARGV[2]) then redis.call('DECRBY', KEYS[1], ARGV[1]) return 0 end
          return 1",
    )
});

/// A user's creations per UTC day, at most `limit`.
pub struct CreationQuota<'a> {
    redis: &'a Conn,
    keys: &'a Keys,
    limit: u32,
}

impl<'a> CreationQuota<'a> {
    pub fn new(redis: &'a Conn, keys: &'a Keys, limit: u32) -> Self {
        Self { redis, keys, limit }
    }

    fn key(&self, user: Uuid) -> String {
        let today = Utc::now().date_naive();
        self.keys.global(&format!(
            "quota:task_create:{user}:{}{:02}{:02}",
            today.year(),
            today.month(),
            today.day()
        ))
    }

    /// Takes `n` creations from today's quota; `None` when they do not fit (nothing taken).
    pub async fn reserve(&self, user: Uuid, n: u32) -> redis::RedisResult<Option<Reservation>> {
        let reset_at = Utc::now().timestamp() + i64::try_from(seconds_to_reset()).unwrap_or(86_400);
        let key = self.key(user);
        let ok: i64 = RESERVE
            .key(&key)
            .arg(n)
            .arg(self.limit)
            .arg(reset_at)
            .invoke_async(&mut self.redis.clone())
            .await?;
        // Built only when granted: a refused reservation must not give anything back on drop.
        Ok((ok == 1).then(|| Reservation { key, n, conn: Some(self.redis.clone()) }))
    }
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
    conn: Option<Conn>,
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
