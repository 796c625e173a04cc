//! Redis connections and key naming.
//!
//! Every key starts with the configured prefix so deployments and tests can share a Redis,
//! and the keys of one queue share a `{queue}` hash tag so a queue's multi-key scripts keep
//! working on Redis Cluster.

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use secrecy::ExposeSecret;

use crate::config::Settings;

/// A self-reconnecting connection. It is created lazily so a process starts while Redis is
/// down, and short timeouts make a dead Redis an error within seconds instead of a hang.
pub fn connect(settings: &Settings) -> anyhow::Result<ConnectionManager> {
    let client = redis::Client::open(settings.redis_url.expose_secret())?;
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(1)))
        .set_response_timeout(Some(Duration::from_secs(3)))
        .set_number_of_retries(1)
        .set_max_delay(Duration::from_millis(500));
    Ok(ConnectionManager::new_lazy_with_config(client, config)?)
}

/// A connection for blocking commands (`BLPOP`), whose replies take as long as the block:
/// its response timeout is longer than any block we issue.
pub fn connect_blocking(settings: &Settings) -> anyhow::Result<ConnectionManager> {
    let client = redis::Client::open(settings.redis_url.expose_secret())?;
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(1)))
        .set_response_timeout(Some(Duration::from_secs(10)))
        .set_number_of_retries(1)
        .set_max_delay(Duration::from_millis(500));
    Ok(ConnectionManager::new_lazy_with_config(client, config)?)
}

/// Warns loudly unless Redis runs with `maxmemory-policy noeviction`: under any other policy
/// Redis may silently drop queued jobs when memory runs short. Returns whether the policy is
/// safe (unknown counts as unsafe).
pub async fn check_eviction_policy(conn: &mut ConnectionManager) -> bool {
    let reply: redis::RedisResult<Vec<String>> =
        redis::cmd("CONFIG").arg("GET").arg("maxmemory-policy").query_async(conn).await;
    match reply.as_deref() {
        Ok([_, policy]) if policy == "noeviction" => return true,
        Ok([_, policy]) => tracing::error!(
            %policy,
            "REDIS maxmemory-policy IS NOT noeviction: Redis may evict queued jobs under memory \
             pressure and they would be LOST. Set `maxmemory-policy noeviction`."
        ),
        Ok(_) => tracing::warn!("could not read Redis maxmemory-policy"),
        Err(err) => {
            tracing::warn!(error = %err, "could not read Redis maxmemory-policy (CONFIG may be disabled); make sure it is noeviction")
        }
    }
    false
}

/// Builds key names under one prefix.
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    pub fn new(prefix: impl Into<String>) -> Self {
        Self { prefix: prefix.into() }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The namespace of a queue, hash-tagged so all its keys live in one cluster slot.
    pub fn queue(&self, queue: &str) -> String {
        format!("{}:{{{queue}}}", self.prefix)
    }

    /// A key outside any queue.
    pub fn global(&self, name: &str) -> String {
        format!("{}:{name}", self.prefix)
    }

    /// The generation of a user's cached task lists: every write of their tasks, by the API
    /// or a job, increments it, so cached pages of the old generation are never served.
    pub fn task_lists_generation(&self, user: uuid::Uuid) -> String {
        self.global(&format!("tasks:generation:{user}"))
    }
}

/// Makes every cached task list of these users stale (after a job changed their tasks).
pub async fn invalidate_task_lists(
    conn: &mut ConnectionManager,
    keys: &Keys,
    users: &[uuid::Uuid],
) -> redis::RedisResult<()> {
    if users.is_empty() {
        return Ok(());
    }
    let mut pipe = redis::pipe();
    for user in users {
        pipe.incr(keys.task_lists_generation(*user), 1).ignore();
    }
    pipe.query_async(conn).await
}

/// `PING` with the connection's timeouts; used by readiness checks.
pub async fn ping(conn: &mut ConnectionManager) -> redis::RedisResult<()> {
    redis::cmd("PING").query_async::<()>(conn).await
}
