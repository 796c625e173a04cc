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
//! - The same subscription carries other channels for whoever asks ([`Listener`]): account
//!   announcements ([`crate::auth::announcements`]) ride on it, so one connection serves both.
//! - On shutdown every stream ends with a `closing` notice, so graceful shutdown is not held
//!   up by connections that never end on their own.
//!
//! # Layout
//! - [`event`]: the event types and one event's shape.
//! - [`connection`]: one client's stream (replay, then live).
//! - [`subscription`]: the Redis subscription and the other channels it carries.

mod connection;
pub mod event;
pub mod subscription;

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use futures::Stream;
use tasklane_shared::config::Settings;
use tasklane_shared::events::{EventId, Published};
use tasklane_shared::redis::Conn;
use tasklane_shared::redis::Keys;
use tokio::sync::{mpsc, watch};
use uuid::Uuid;

use self::connection::{Connection, Registration};
pub use self::event::{EventType, StreamEvent};
pub use self::subscription::Listener;

/// Events a connection may have waiting before it is cut off as too slow.
pub const BUFFER: usize = 256;

/// What the hub hands a connection.
enum HubMessage {
    Event(StreamEvent),
    /// The subscription was re-established: replay from the last id sent.
    Resume,
}

/// One connection, as the hub sees it.
struct Subscriber {
    id: u64,
    sender: mpsc::Sender<HubMessage>,
    /// Set when the hub dropped this subscriber because its buffer was full.
    overflowed: Arc<AtomicBool>,
}

/// The open connections, by user.
#[derive(Default)]
struct Registry {
    by_user: HashMap<Uuid, Vec<Subscriber>>,
}

/// The hub; cheap to clone.
#[derive(Clone)]
pub struct Hub {
    registry: Arc<Mutex<Registry>>,
    next_id: Arc<AtomicU64>,
    redis: Conn,
    keys: Keys,
    closing: watch::Receiver<bool>,
    close: Arc<watch::Sender<bool>>,
    heartbeat: Duration,
    /// The other channels the subscription carries.
    listeners: Arc<[Arc<dyn Listener>]>,
}

impl Hub {
    pub fn new(
        settings: &Settings,
        redis: Conn,
        keys: Keys,
        listeners: Vec<Arc<dyn Listener>>,
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
            listeners: listeners.into(),
        }
    }

    pub fn heartbeat(&self) -> Duration {
        self.heartbeat
    }

    /// Ends every open stream (graceful shutdown).
    pub fn close(&self) {
        self.close.send_replace(true);
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
}
