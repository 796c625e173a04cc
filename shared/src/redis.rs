//! Redis connections and key naming.
//!
//! Every key starts with the configured prefix so deployments and tests can share a Redis,
//! and the keys of one queue share a `{queue}` hash tag so a queue's multi-key scripts keep
//! working on Redis Cluster.

use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::{ClusterClientBuilder, ClusterConfig};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, Value};
use secrecy::{ExposeSecret, SecretString};

use crate::config::Settings;

/// A self-reconnecting connection to Tasklane's Redis: one server (`REDIS_URL`), or a Redis
/// Cluster (`TASKLANE_REDIS_CLUSTER_NODES`, SPEC section 12) whose client follows the slots
/// and their failovers. Commands are the same either way; on a cluster the keys of one
/// command, script or pipeline must share a slot, which the key names see to ([`Keys`]).
#[derive(Clone)]
pub enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(conn) => conn.req_packed_command(cmd),
            Conn::Cluster(conn) => conn.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(conn) => conn.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(conn) => conn.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(conn) => conn.get_db(),
            Conn::Cluster(conn) => conn.get_db(),
        }
    }
}

impl Conn {
    /// Whether this is a cluster connection.
    pub fn is_cluster(&self) -> bool {
        matches!(self, Conn::Cluster(_))
    }
}

/// The connection every component uses. It is created lazily so a process starts while
/// Redis is down, and short timeouts make a dead Redis an error within seconds instead of a
/// hang.
pub fn connect(settings: &Settings) -> anyhow::Result<Conn> {
    open(settings, Duration::from_secs(3))
}

/// A connection for blocking commands (`BLPOP`), whose replies take as long as the block:
/// its response timeout is longer than any block we issue.
pub fn connect_blocking(settings: &Settings) -> anyhow::Result<Conn> {
    open(settings, Duration::from_secs(10))
}

fn open(settings: &Settings, response_timeout: Duration) -> anyhow::Result<Conn> {
    let connection_timeout = Duration::from_secs(1);
    if let Some(nodes) = &settings.redis_cluster_nodes {
        let client = ClusterClientBuilder::new(cluster_nodes(nodes)).retries(3).build()?;
        let config = ClusterConfig::new()
            .set_connection_timeout(connection_timeout)
            .set_response_timeout(response_timeout);
        return Ok(Conn::Cluster(client.get_pending_async_connection_with_config(config)));
    }
    let client = redis::Client::open(settings.redis_url.expose_secret())?;
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(connection_timeout))
        .set_response_timeout(Some(response_timeout))
        .set_number_of_retries(1)
        .set_max_delay(Duration::from_millis(500));
    Ok(Conn::Single(ConnectionManager::new_lazy_with_config(client, config)?))
}

/// Where to subscribe to channels: `REDIS_URL`, or on a cluster any of its nodes (a
/// `PUBLISH` reaches every node of a cluster), tried in turn.
pub fn pubsub_clients(settings: &Settings) -> anyhow::Result<Vec<redis::Client>> {
    let urls = match &settings.redis_cluster_nodes {
        Some(nodes) => cluster_nodes(nodes),
        None => vec![settings.redis_url.expose_secret().to_owned()],
    };
    anyhow::ensure!(!urls.is_empty(), "TASKLANE_REDIS_CLUSTER_NODES names no node");
    Ok(urls.iter().map(|url| redis::Client::open(url.as_str())).collect::<Result<_, _>>()?)
}

/// The seed nodes of `TASKLANE_REDIS_CLUSTER_NODES`.
pub fn cluster_nodes(nodes: &SecretString) -> Vec<String> {
    let nodes = nodes.expose_secret().split(',').map(str::trim);
    nodes.filter(|node| !node.is_empty()).map(str::to_owned).collect()
}

/// Warns loudly unless Redis runs with `maxmemory-policy noeviction`: under any other policy
/// Redis may silently drop queued jobs when memory runs short. Returns whether the policy is
/// safe (unknown counts as unsafe).
pub async fn check_eviction_policy(conn: &mut Conn) -> bool {
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

    /// A key of one user's, hash-tagged by the user so that all of a user's keys live in
    /// one cluster slot and can be read together (a cached page and its generation).
    pub fn user(&self, user: uuid::Uuid, name: &str) -> String {
        format!("{}:{{user:{user}}}:{name}", self.prefix)
    }

    /// The generation of a user's cached task lists: every write of their tasks, by the API
    /// or a job, increments it, so cached pages of the old generation are never served.
    pub fn task_lists_generation(&self, user: uuid::Uuid) -> String {
        self.user(user, "tasks:generation")
    }
}

/// Makes every cached task list of these users stale (after a job changed their tasks).
pub async fn invalidate_task_lists(
    conn: &mut Conn,
    keys: &Keys,
    users: &[uuid::Uuid],
) -> redis::RedisResult<()> {
    if users.is_empty() {
        return Ok(());
    }
    if conn.is_cluster() {
        // Each user's keys live in their own slot: one command each.
        for user in users {
            redis::cmd("INCR").arg(keys.task_lists_generation(*user)).exec_async(conn).await?;
        }
        return Ok(());
    }
    let mut pipe = redis::pipe();
    for user in users {
        pipe.incr(keys.task_lists_generation(*user), 1).ignore();
    }
    pipe.query_async(conn).await
}

/// `PING` with the connection's timeouts; used by readiness checks.
pub async fn ping(conn: &mut Conn) -> redis::RedisResult<()> {
    redis::cmd("PING").query_async::<()>(conn).await
}
