//! The login limit: after 5 failures for one email from one IP within 15 minutes, 429 with
//! `Retry-After` until the window ends. Counted in Redis so every API replica sees the same
//! count; keyed by a hash of the email so addresses never sit in Redis in clear. If Redis is
//! down, login answers 503 rather than run without a limit.
//!
//! Each attempt is counted atomically *before* its password is checked, and a success
//! clears the count: 500 parallel guesses get 5 tries, not 500 (a check-then-count would
//! let them all through while their hashes wait).

use std::net::IpAddr;
use std::time::Duration;

use sha2::{Digest, Sha256};
use tasklane_shared::redis::Conn;
use tasklane_shared::redis::Keys;

pub const MAX_FAILURES: u32 = 5;

/// Returns -1 when the attempt may proceed, else the seconds left in the window.
static ATTEMPT: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
    redis::Script::new(
        r"local n = redis.call('INCR', KEYS[1])
          if n == 1 then redis.call('EXPIRE', KEYS[1], ARGV[2]) end
          if n > tonumber(ARGV[1]) then return math.max(redis.call('TTL', KEYS[1]), 1) end
          return -1",
    )
});
pub const WINDOW: Duration = Duration::from_secs(15 * 60);

#[derive(Clone)]
pub struct LoginThrottle {
    redis: Conn,
    keys: Keys,
}

impl LoginThrottle {
    pub fn new(redis: Conn, keys: Keys) -> Self {
        Self { redis, keys }
    }

    fn key(&self, email: &str, ip: Option<IpAddr>) -> String {
        let digest = Sha256::digest(email.as_bytes());
        let email: String = digest.iter().take(12).map(|b| format!("{b:02x}")).collect();
        let ip = ip.map_or_else(|| "unknown".to_owned(), |ip| ip.to_string());
        self.keys.global(&format!("login_failures:{email}:{ip}"))
    }

    /// Counts an attempt; `Some(seconds to wait)` when it is over the limit (and may not
    /// proceed). The window starts with the first attempt.
    pub async fn attempt(
        &self,
        email: &str,
        ip: Option<IpAddr>,
    ) -> redis::RedisResult<Option<u64>> {
        let ttl: i64 = ATTEMPT
            .key(self.key(email, ip))
            .arg(MAX_FAILURES)
            .arg(WINDOW.as_secs())
            .invoke_async(&mut self.redis.clone())
            .await?;
        Ok((ttl >= 0).then(|| u64::try_from(ttl).unwrap_or(1).max(1)))
    }

    pub async fn clear(&self, email: &str, ip: Option<IpAddr>) -> redis::RedisResult<()> {
        redis::cmd("DEL").arg(self.key(email, ip)).query_async(&mut self.redis.clone()).await
    }
}
