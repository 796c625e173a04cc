//! The login limit: after 5 failures for one email from one IP within 15 minutes, 429 with
//! `Retry-After` until the window ends. Counted in Redis so every API replica sees the same
//! count; keyed by a hash of the email so addresses never sit in Redis in clear. If Redis is
//! down, login answers 503 rather than run without a limit.

use std::net::IpAddr;
use std::time::Duration;

use redis::aio::ConnectionManager;
use sha2::{Digest, Sha256};
use tasklane_shared::redis::Keys;

pub const MAX_FAILURES: u32 = 5;
pub const WINDOW: Duration = Duration::from_secs(15 * 60);

#[derive(Clone)]
pub struct LoginThrottle {
    redis: ConnectionManager,
    keys: Keys,
}

impl LoginThrottle {
    pub fn new(redis: ConnectionManager, keys: Keys) -> Self {
        Self { redis, keys }
    }

    fn key(&self, email: &str, ip: Option<IpAddr>) -> String {
        let digest = Sha256::digest(email.as_bytes());
        let email: String = digest.iter().take(12).map(|b| format!("{b:02x}")).collect();
        let ip = ip.map_or_else(|| "unknown".to_owned(), |ip| ip.to_string());
        self.keys.global(&format!("login_failures:{email}:{ip}"))
    }

    /// `Some(seconds to wait)` when the limit is reached.
    pub async fn blocked(&self, email: &str, ip: Option<IpAddr>) -> redis::RedisResult<Option<u64>> {
        let key = self.key(email, ip);
        let (count, ttl): (Option<u32>, i64) =
            redis::pipe().get(&key).ttl(&key).query_async(&mut self.redis.clone()).await?;
        Ok((count.unwrap_or(0) >= MAX_FAILURES).then(|| u64::try_from(ttl).unwrap_or(1).max(1)))
    }

    /// Counts a failure; the window starts with the first one.
    pub async fn record_failure(&self, email: &str, ip: Option<IpAddr>) -> redis::RedisResult<()> {
        let key = self.key(email, ip);
        redis::pipe()
            .incr(&key, 1)
            .ignore()
            .cmd("EXPIRE")
            .arg(&key)
            .arg(WINDOW.as_secs())
            .arg("NX")
            .ignore()
            .query_async::<()>(&mut self.redis.clone())
            .await
    }

    pub async fn clear(&self, email: &str, ip: Option<IpAddr>) -> redis::RedisResult<()> {
        redis::cmd("DEL").arg(self.key(email, ip)).query_async(&mut self.redis.clone()).await
    }
}
