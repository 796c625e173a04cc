//! One client's stream: what it missed (replayed from the per-user Redis stream, or a
//! `resync` when that was trimmed), then live events from the hub, until the client goes,
//! falls too far behind, or the server closes.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tasklane_shared::events::{self, EventId, STREAM_CAP};
use tokio::sync::{mpsc, watch};
use uuid::Uuid;

use super::event::{EventType, StreamEntry, StreamEvent, entry, notice};
use super::{Hub, HubMessage, Registry};

/// Removes a connection from the hub when its stream is dropped.
pub(super) struct Registration {
    pub(super) registry: Arc<Mutex<Registry>>,
    pub(super) user: Uuid,
    pub(super) id: u64,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut registry = self.registry.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(subscribers) = registry.by_user.get_mut(&self.user) {
            subscribers.retain(|subscriber| subscriber.id != self.id);
            if subscribers.is_empty() {
                registry.by_user.remove(&self.user);
            }
        }
        metrics::gauge!("events_connections").decrement(1.0);
    }
}

pub(super) struct Connection {
    pub(super) hub: Hub,
    pub(super) user: Uuid,
    pub(super) receiver: mpsc::Receiver<HubMessage>,
    pub(super) overflowed: Arc<AtomicBool>,
    pub(super) pending: VecDeque<StreamEvent>,
    /// The last id sent (or the client's `Last-Event-ID`).
    pub(super) last: Option<EventId>,
    pub(super) done: bool,
    pub(super) closing: watch::Receiver<bool>,
    pub(super) _guard: Registration,
}

impl Connection {
    /// Queues what the client missed after `last`, or a `resync` when that was trimmed.
    pub(super) async fn replay(&mut self, last: EventId) -> redis::RedisResult<()> {
        let Some((oldest, newest)) = self.hub.bounds(self.user).await? else {
            return Ok(());
        };
        if last >= newest {
            return Ok(());
        }
        // Older than anything kept: what came between may have been trimmed.
        if last < oldest {
            self.pending.push_back(notice(
                EventType::Resync,
                newest.to_string(),
                serde_json::json!({}),
            ));
            return Ok(());
        }
        let missed = self.hub.range(self.user, last).await?;
        self.pending.extend(missed);
        Ok(())
    }

    pub(super) async fn next(&mut self) -> Option<StreamEvent> {
        loop {
            if let Some(event) = self.pending.pop_front() {
                let id = EventId::parse(&event.id);
                if let (Some(id), Some(last)) = (id, self.last)
                    && id <= last
                    && event.event_type != EventType::Resync
                {
                    continue;
                }
                if id.is_some() {
                    self.last = id;
                }
                return Some(event);
            }
            if self.done {
                return None;
            }
            let wake = {
                let (closing, receiver) = (&mut self.closing, &mut self.receiver);
                tokio::select! {
                    _ = closing.wait_for(|closed| *closed) => None,
                    message = receiver.recv() => Some(message),
                }
            };
            match wake {
                None => {
                    self.done = true;
                    return Some(notice(
                        EventType::Closing,
                        self.last_id(),
                        serde_json::json!({ "reason": "closing" }),
                    ));
                }
                Some(Some(HubMessage::Event(event))) => self.pending.push_back(event),
                Some(Some(HubMessage::Resume)) => {
                    if let Some(last) = self.last
                        && let Err(err) = self.replay(last).await
                    {
                        tracing::warn!(error = %err, "cannot replay events after a reconnect");
                    }
                }
                Some(None) => {
                    self.done = true;
                    if self.overflowed.load(Ordering::SeqCst) {
                        return Some(notice(
                            EventType::Closing,
                            self.last_id(),
                            serde_json::json!({ "reason": "slow_consumer" }),
                        ));
                    }
                    return None;
                }
            }
        }
    }

    fn last_id(&self) -> String {
        self.last.map(|id| id.to_string()).unwrap_or_default()
    }
}

/// Reads of the per-user stream, for replay.
impl Hub {
    async fn range(&self, user: Uuid, after: EventId) -> redis::RedisResult<Vec<StreamEvent>> {
        let entries: Vec<StreamEntry> = redis::cmd("XRANGE")
            .arg(events::stream_key(&self.keys, user))
            .arg(format!("({after}"))
            .arg("+")
            .arg("COUNT")
            .arg(STREAM_CAP * 2)
            .query_async(&mut self.redis.clone())
            .await?;
        Ok(entries.into_iter().filter_map(entry).collect())
    }

    /// The oldest and newest ids kept for `user`.
    async fn bounds(&self, user: Uuid) -> redis::RedisResult<Option<(EventId, EventId)>> {
        let key = events::stream_key(&self.keys, user);
        let first: Vec<StreamEntry> = redis::cmd("XRANGE")
            .arg(&key)
            .arg("-")
            .arg("+")
            .arg("COUNT")
            .arg(1)
            .query_async(&mut self.redis.clone())
            .await?;
        let last: Vec<StreamEntry> = redis::cmd("XREVRANGE")
            .arg(&key)
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(1)
            .query_async(&mut self.redis.clone())
            .await?;
        let parse =
            |entries: &[StreamEntry]| entries.first().and_then(|(id, _)| EventId::parse(id));
        Ok(parse(&first).zip(parse(&last)))
    }
}
