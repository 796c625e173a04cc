//! The event hub of one API instance (SPEC section 8): one Redis subscription fanned out to
//! this instance's SSE and WebSocket connections, and the per-connection stream with
//! `Last-Event-ID` replay.
//!
//! - Each connection gets a bounded buffer ([`BUFFER`] events). A client that lets it fill is
//!   disconnected with the reason `slow_consumer`: its buffer never grows.
//! - A connection subscribes before it replays, and skips live events at or below the last id
//!   it sent, so nothing falls between replay and live.
//! - When the subscription drops (Redis restarted), it reconnects and tells every connection
//!   to replay from its last id: events published meanwhile are in the streams.
//! - The same subscription carries account announcements (see [`crate::auth::accounts`]).
//! - On shutdown every stream ends with a `closing` notice, so graceful shutdown is not held
//!   up by connections that never end on their own.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::{Stream, StreamExt};
use poem_openapi::{Enum, Object};
use redis::aio::ConnectionManager;
use secrecy::ExposeSecret;
use tasklane_shared::config::Settings;
use tasklane_shared::events::{self, EventId, Published, STREAM_CAP};
use tasklane_shared::redis::Keys;
use tokio::sync::{mpsc, watch};
use uuid::Uuid;

use crate::auth::accounts::{self, AccountCache};

/// Events a connection may have waiting before it is cut off as too slow.
pub const BUFFER: usize = 256;

/// Every type an event stream carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
pub enum EventType {
    #[oai(rename = "task.created")]
    TaskCreated,
    #[oai(rename = "task.updated")]
    TaskUpdated,
    #[oai(rename = "task.deleted")]
    TaskDeleted,
    #[oai(rename = "task.restored")]
    TaskRestored,
    #[oai(rename = "task.overdue")]
    TaskOverdue,
    #[oai(rename = "attachment.ready")]
    AttachmentReady,
    #[oai(rename = "attachment.rejected")]
    AttachmentRejected,
    /// Events were missed beyond what is kept (or while the server could not tell): reload
    /// what you show, then carry on from this event's id.
    #[oai(rename = "resync")]
    Resync,
    /// The server ends the stream; `data.reason` says why (`slow_consumer`, `closing`).
    #[oai(rename = "closing")]
    Closing,
}

impl EventType {
    fn parse(raw: &str) -> Option<Self> {
        Some(match raw {
            events::TASK_CREATED => Self::TaskCreated,
            events::TASK_UPDATED => Self::TaskUpdated,
            events::TASK_DELETED => Self::TaskDeleted,
            events::TASK_RESTORED => Self::TaskRestored,
            events::TASK_OVERDUE => Self::TaskOverdue,
            events::ATTACHMENT_READY => Self::AttachmentReady,
            events::ATTACHMENT_REJECTED => Self::AttachmentRejected,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::TaskCreated => events::TASK_CREATED,
            Self::TaskUpdated => events::TASK_UPDATED,
            Self::TaskDeleted => events::TASK_DELETED,
            Self::TaskRestored => events::TASK_RESTORED,
            Self::TaskOverdue => events::TASK_OVERDUE,
            Self::AttachmentReady => events::ATTACHMENT_READY,
            Self::AttachmentRejected => events::ATTACHMENT_REJECTED,
            Self::Resync => "resync",
            Self::Closing => "closing",
        }
    }
}

/// One event. `id` is also the SSE `id:`; send it back as `Last-Event-ID` to resume.
///
/// `data` by type:
/// - `task.created`, `task.updated`, `task.restored`, `task.overdue`: `{task}` (the task as
///   `GET /tasks/{id}` returns it); `task.updated` adds `changes` (`{field: {from, to}}`).
/// - `task.deleted`: `{task_id}`.
/// - `attachment.ready`, `attachment.rejected`: `{task_id, attachment_id, status,
///   reject_reason}`.
/// - `resync`: `{}`. `closing`: `{reason}`.
#[derive(Debug, Clone, Object)]
#[oai(rename = "StreamEvent")]
pub struct StreamEvent {
    pub id: String,
    #[oai(rename = "type")]
    pub event_type: EventType,
    pub at: DateTime<Utc>,
    pub data: serde_json::Value,
}

enum HubMessage {
    Event(StreamEvent),
    /// The subscription was re-established: replay from the last id sent.
    Resume,
}

struct Subscriber {
    id: u64,
    sender: mpsc::Sender<HubMessage>,
    /// Set when the hub dropped this subscriber because its buffer was full.
    overflowed: Arc<AtomicBool>,
}

#[derive(Default)]
struct Registry {
    by_user: HashMap<Uuid, Vec<Subscriber>>,
}

/// The hub; cheap to clone.
#[derive(Clone)]
pub struct Hub {
    registry: Arc<Mutex<Registry>>,
    next_id: Arc<AtomicU64>,
    redis: ConnectionManager,
    keys: Keys,
    closing: watch::Receiver<bool>,
    close: Arc<watch::Sender<bool>>,
    heartbeat: Duration,
    /// Flushed on account announcements, which come over the same subscription.
    accounts: Arc<AccountCache>,
}

impl Hub {
    pub fn new(
        settings: &Settings,
        redis: ConnectionManager,
        keys: Keys,
        accounts: Arc<AccountCache>,
    ) -> Self {
        let (close, closing) = watch::channel(false);
        Self {
            registry: Arc::default(),
            next_id: Arc::default(),
            redis,
            keys,
            closing,
            close: Arc::new(close),
            heartbeat: settings.events_heartbeat,
            accounts,
        }
    }

    pub fn heartbeat(&self) -> Duration {
        self.heartbeat
    }

    /// Ends every open stream (graceful shutdown).
    pub fn close(&self) {
        self.close.send_replace(true);
    }

    /// Listens on the events and accounts channels until closed, reconnecting as needed.
    pub fn spawn_listener(&self, settings: &Settings) -> anyhow::Result<()> {
        let client = redis::Client::open(settings.redis_url.expose_secret())?;
        let hub = self.clone();
        tokio::spawn(async move {
            let mut first = true;
            let mut closing = hub.closing.clone();
            loop {
                let listened = tokio::select! {
                    result = hub.listen(&client, !first) => result,
                    _ = closing.wait_for(|closed| *closed) => return,
                };
                // Announcements may be missed until the subscription is back.
                hub.accounts.set_live(false);
                first = false;
                if let Err(err) = listened {
                    tracing::warn!(error = %err, "event subscription lost; reconnecting");
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        });
        Ok(())
    }

    async fn listen(&self, client: &redis::Client, resumed: bool) -> redis::RedisResult<()> {
        let mut pubsub = client.get_async_pubsub().await?;
        let (events_channel, accounts_channel) =
            (events::channel(&self.keys), accounts::channel(&self.keys));
        pubsub.subscribe(&[&events_channel, &accounts_channel]).await?;
        self.accounts.set_live(true);
        if resumed {
            self.broadcast_resume();
        }
        let mut messages = pubsub.into_on_message();
        while let Some(message) = messages.next().await {
            if message.get_channel_name() == accounts_channel {
                self.accounts.flush();
                continue;
            }
            let Ok(payload) = message.get_payload::<String>() else { continue };
            match serde_json::from_str::<Published>(&payload) {
                Ok(published) => self.dispatch(published),
                Err(err) => tracing::warn!(error = %err, "undecodable event on the channel"),
            }
        }
        Err(redis::RedisError::from((redis::ErrorKind::Io, "subscription closed")))
    }

    fn dispatch(&self, published: Published) {
        let Some(event_type) = EventType::parse(&published.event_type) else { return };
        let latency =
            (Utc::now().timestamp_millis() - published.published_ms).max(0) as f64 / 1000.0;
        metrics::histogram!("events_fanout_seconds").record(latency);
        let event =
            StreamEvent { id: published.id, event_type, at: published.at, data: published.data };
        let mut registry = self.registry.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let Some(subscribers) = registry.by_user.get_mut(&published.user_id) else { return };
        subscribers.retain(|subscriber| {
            match subscriber.sender.try_send(HubMessage::Event(event.clone())) {
                Ok(()) => true,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    subscriber.overflowed.store(true, Ordering::SeqCst);
                    metrics::counter!("events_slow_consumers_total").increment(1);
                    false
                }
                Err(mpsc::error::TrySendError::Closed(_)) => false,
            }
        });
    }

    fn broadcast_resume(&self) {
        let registry = self.registry.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        for subscriber in registry.by_user.values().flatten() {
            let _ = subscriber.sender.try_send(HubMessage::Resume);
        }
    }

    /// The stream of `user`'s events: first what they missed after `last_event_id` (or a
    /// `resync` when that is no longer kept), then live events, until the client goes, falls
    /// too far behind, or the server closes.
    pub async fn connect(
        &self,
        user: Uuid,
        last_event_id: Option<EventId>,
    ) -> redis::RedisResult<impl Stream<Item = StreamEvent> + Send + 'static> {
        let (sender, receiver) = mpsc::channel(BUFFER);
        let overflowed = Arc::new(AtomicBool::new(false));
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        {
            let mut registry =
                self.registry.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            registry.by_user.entry(user).or_default().push(Subscriber {
                id,
                sender,
                overflowed: overflowed.clone(),
            });
        }
        let guard = Registration { registry: self.registry.clone(), user, id };
        metrics::gauge!("events_connections").increment(1.0);
        let mut connection = Connection {
            hub: self.clone(),
            user,
            receiver,
            overflowed,
            pending: VecDeque::new(),
            last: last_event_id,
            done: false,
            closing: self.closing.clone(),
            _guard: guard,
        };
        if let Some(last) = last_event_id {
            connection.replay(last).await?;
        }
        Ok(futures::stream::unfold(connection, |mut connection| async move {
            let event = connection.next().await?;
            Some((event, connection))
        }))
    }

    async fn range(&self, user: Uuid, after: EventId) -> redis::RedisResult<Vec<StreamEvent>> {
        let entries: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
            .arg(events::stream_key(&self.keys, user))
            .arg(format!("({after}"))
            .arg("+")
            .arg("COUNT")
            .arg(STREAM_CAP * 2)
            .query_async(&mut self.redis.clone())
            .await?;
        Ok(entries.into_iter().filter_map(|(id, fields)| entry(id, fields)).collect())
    }

    /// The oldest and newest ids kept for `user`.
    async fn bounds(&self, user: Uuid) -> redis::RedisResult<Option<(EventId, EventId)>> {
        let key = events::stream_key(&self.keys, user);
        let first: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
            .arg(&key)
            .arg("-")
            .arg("+")
            .arg("COUNT")
            .arg(1)
            .query_async(&mut self.redis.clone())
            .await?;
        let last: Vec<(String, Vec<(String, String)>)> = redis::cmd("XREVRANGE")
            .arg(&key)
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(1)
            .query_async(&mut self.redis.clone())
            .await?;
        let parse = |entries: &[(String, Vec<(String, String)>)]| {
            entries.first().and_then(|(id, _)| EventId::parse(id))
        };
        Ok(parse(&first).zip(parse(&last)))
    }
}

/// A stream entry as an event.
fn entry(id: String, fields: Vec<(String, String)>) -> Option<StreamEvent> {
    let field = |name: &str| fields.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
    Some(StreamEvent {
        id,
        event_type: EventType::parse(field("type")?)?,
        at: DateTime::parse_from_rfc3339(field("at")?).ok()?.with_timezone(&Utc),
        data: serde_json::from_str(field("data")?).ok()?,
    })
}

/// Removes a connection from the hub when its stream is dropped.
struct Registration {
    registry: Arc<Mutex<Registry>>,
    user: Uuid,
    id: u64,
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

struct Connection {
    hub: Hub,
    user: Uuid,
    receiver: mpsc::Receiver<HubMessage>,
    overflowed: Arc<AtomicBool>,
    pending: VecDeque<StreamEvent>,
    /// The last id sent (or the client's `Last-Event-ID`).
    last: Option<EventId>,
    done: bool,
    closing: watch::Receiver<bool>,
    _guard: Registration,
}

impl Connection {
    /// Queues what the client missed after `last`, or a `resync` when that was trimmed.
    async fn replay(&mut self, last: EventId) -> redis::RedisResult<()> {
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

    async fn next(&mut self) -> Option<StreamEvent> {
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

fn notice(event_type: EventType, id: String, data: serde_json::Value) -> StreamEvent {
    StreamEvent { id, event_type, at: Utc::now(), data }
}
