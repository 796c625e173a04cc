//! Readiness: whether a process can reach the two dependencies it cannot work without,
//! PostgreSQL and Redis. Both binaries serve `/health/ready` from this one check; each shapes
//! its own answer.

use std::collections::HashMap;
use std::time::Duration;

use crate::redis::Conn;
use sqlx::PgPool;

/// How long one dependency check may take before it counts as down.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// The result of one readiness check: per dependency, `Ok` or why it is down.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Readiness {
    pub postgres: Result<(), String>,
    pub redis: Result<(), String>,
}

impl Readiness {
    /// Checks both dependencies at once, each within [`CHECK_TIMEOUT`].
    pub async fn check(db: &PgPool, redis: &Conn) -> Self {
        let (postgres, redis) = tokio::join!(check_postgres(db), check_redis(redis));
        Self { postgres, redis }
    }

    /// Each dependency by name (`postgres`, `redis`) with its result.
    pub fn checks(&self) -> [(&'static str, &Result<(), String>); 2] {
        [("postgres", &self.postgres), ("redis", &self.redis)]
    }

    /// The dependencies that are down, by name, with why.
    pub fn down(&self) -> Vec<(&'static str, &str)> {
        self.checks()
            .into_iter()
            .filter_map(|(name, result)| result.as_ref().err().map(|why| (name, why.as_str())))
            .collect()
    }

    pub fn is_ready(&self) -> bool {
        self.postgres.is_ok() && self.redis.is_ok()
    }
}

async fn check_postgres(db: &PgPool) -> Result<(), String> {
    let query = sqlx::query_scalar!("select 1 as \"one!\"").fetch_one(db);
    match tokio::time::timeout(CHECK_TIMEOUT, query).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(err)) => Err(err.to_string()),
        Err(_) => Err("timed out".into()),
    }
}

/// Redis answers, and has room: over `maxmemory` (with `noeviction`) it refuses every new job,
/// so an instance that cannot enqueue or cache says so instead of failing request by request.
async fn check_redis(redis: &Conn) -> Result<(), String> {
    let mut conn = redis.clone();
    let mut command = redis::cmd("INFO");
    command.arg("memory");
    let info = command.query_async::<redis::Value>(&mut conn);
    match tokio::time::timeout(CHECK_TIMEOUT, info).await {
        // One server's report, or on a cluster one per node: every node needs room.
        Ok(Ok(info)) => match redis::from_redis_value_ref::<String>(&info) {
            Ok(info) => memory_verdict(&info),
            Err(_) => redis::from_redis_value::<HashMap<String, String>>(info)
                .map_err(|err| err.to_string())?
                .values()
                .try_for_each(|info| memory_verdict(info)),
        },
        Ok(Err(err)) => Err(err.to_string()),
        Err(_) => Err("timed out".into()),
    }
}

/// Whether `INFO memory` shows room below `maxmemory` (0: no limit).
fn memory_verdict(info: &str) -> Result<(), String> {
    let field = |name: &str| {
        info.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(':')?.trim().parse::<u64>().ok())
    };
    match (field("used_memory"), field("maxmemory")) {
        (Some(used), Some(max)) if max > 0 && used >= max => Err(format!(
            "out of memory: {used} bytes used of maxmemory {max}; new jobs wait in the outbox"
        )),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::memory_verdict;

    #[test]
    fn redis_over_maxmemory_is_not_ready_and_no_limit_is_fine() {
        let info = |used: u64, max: u64| {
            format!("# Memory\r\nused_memory:{used}\r\nused_memory_human:1M\r\nmaxmemory:{max}\r\n")
        };
        assert!(memory_verdict(&info(10, 0)).is_ok());
        assert!(memory_verdict(&info(10, 100)).is_ok());
        let full = memory_verdict(&info(100, 100)).unwrap_err();
        assert!(full.contains("out of memory"), "{full}");
    }
}
