//! Real-time events (SPEC section 8): recorded in the outbox with the change that causes
//! them, published to Redis by the relay after commit.
//!
//! An event is an outbox row of the pseudo-queue [`crate::outbox::EVENTS`], written in the
//! change's own transaction by [`crate::outbox::record_event`] (a rolled-back change emits
//! nothing). The relay publishes each with one script: `XADD` to the user's capped stream (its entry id becomes the event id, and the
//! stream is what a reconnecting client replays from with `Last-Event-ID`), then `PUBLISH` on
//! one channel that every API instance subscribes to and fans out to its connections.
//! Delivery is at least once: a relay that dies between Redis and its commit publishes a
//! row again, under a new id.

use std::sync::LazyLock;

use chrono::{DateTime, Utc};
use redis::Script;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::redis::Keys;

/// Events kept per user for `Last-Event-ID` replay (approximately: Redis trims in blocks).
pub const STREAM_CAP: usize = 1_000;
/// A user's stream expires this long after their last event.
pub const STREAM_TTL_SECS: u64 = 7 * 24 * 3600;

pub const TASK_CREATED: &str = "task.created";
pub const TASK_UPDATED: &str = "task.updated";
pub const TASK_DELETED: &str = "task.deleted";
pub const TASK_RESTORED: &str = "task.restored";
pub const TASK_OVERDUE: &str = "task.overdue";
pub const ATTACHMENT_READY: &str = "attachment.ready";
pub const ATTACHMENT_REJECTED: &str = "attachment.rejected";

/// What the relay publishes on the channel: the event and whom it is for.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Published {
    pub user_id: Uuid,
    /// The stream entry id (`<ms>-<seq>`): the event's id.
    pub id: String,
    #[serde(rename = "type")]
    pub event_type: String,
    pub at: DateTime<Utc>,
    pub data: serde_json::Value,
    /// When the relay published it (Unix ms), for the fan-out latency metric.
    pub published_ms: i64,
}

/// The outbox payload of an event row.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Recorded {
    pub user_id: Uuid,
    pub at: DateTime<Utc>,
    pub data: serde_json::Value,
}

/// A user's event stream.
pub fn stream_key(keys: &Keys, user: Uuid) -> String {
    keys.global(&format!("events:stream:{user}"))
}

/// The channel every API instance listens on.
pub fn channel(keys: &Keys) -> String {
    keys.global("events:live")
}

/// A one-time ticket for browsers' EventSource (stored hashed).
pub fn ticket_key(keys: &Keys, ticket_hash: &str) -> String {
    keys.global(&format!("events:ticket:{ticket_hash}"))
}

/// KEYS[1] the stream; ARGV: cap, ttl, type, at, data, user, now ms, the channel. The
/// channel is no key (on a cluster a PUBLISH reaches every node), so the script's one key
/// decides its slot.
static PUBLISH: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 'type', ARGV[3], 'at', ARGV[4], 'data', ARGV[5])
           redis.call('EXPIRE', KEYS[1], ARGV[2])
           local message = cjson.encode({user_id = ARGV[6], id = id, type = ARGV[3], at = ARGV[4], published_ms = tonumber(ARGV[7])})
           -- data is already JSON: splice it in rather than encode it as a string.
           message = string.sub(message, 1, -2) .. ',"data":' .. ARGV[5] .. '}'
           redis.call('PUBLISH', ARGV[8], message)
           return id"#,
    )
});

/// Publishes one recorded event of `event_type`; returns its id.
pub async fn publish(
    conn: &mut crate::redis::Conn,
    keys: &Keys,
    event_type: &str,
    recorded: &Recorded,
) -> redis::RedisResult<String> {
    PUBLISH
        .key(stream_key(keys, recorded.user_id))
        .arg(STREAM_CAP)
        .arg(STREAM_TTL_SECS)
        .arg(event_type)
        .arg(recorded.at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .arg(recorded.data.to_string())
        .arg(recorded.user_id.to_string())
        .arg(Utc::now().timestamp_millis())
        .arg(channel(keys))
        .invoke_async(conn)
        .await
}

/// A stream entry id, ordered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct EventId(pub u64, pub u64);

impl EventId {
    pub fn parse(raw: &str) -> Option<Self> {
        let (ms, seq) = raw.trim().split_once('-')?;
        Some(Self(ms.parse().ok()?, seq.parse().ok()?))
    }
}

impl std::fmt::Display for EventId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.0, self.1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_ids_parse_and_order_numerically() {
        let a = EventId::parse("1700000000000-2").unwrap();
        let b = EventId::parse("1700000000000-10").unwrap();
        assert!(a < b);
        assert_eq!(b.to_string(), "1700000000000-10");
        assert!(EventId::parse("nope").is_none());
        assert!(EventId::parse("1-x").is_none());
    }
}
