//! Readiness: whether a process can reach the two dependencies it cannot work without,
//! PostgreSQL and Redis. Both binaries serve `/health/ready` from this one check; each shapes
//! its own answer.

use std::time::Duration;

use redis::aio::ConnectionManager;
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
    pub async fn check(db: &PgPool, redis: &ConnectionManager) -> Self {
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

async fn check_redis(redis: &ConnectionManager) -> Result<(), String> {
    let mut conn = redis.clone();
    match tokio::time::timeout(CHECK_TIMEOUT, crate::redis::ping(&mut conn)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(err)) => Err(err.to_string()),
        Err(_) => Err("timed out".into()),
    }
}
