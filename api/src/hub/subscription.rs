//! The hub's one Redis subscription: the events channel, fanned out to connections, and the
//! other channels that ride on the same connection ([`Listener`]), so an instance holds one
//! subscription however many uses it has.

use std::time::Duration;

use futures::StreamExt;
use tasklane_shared::config::Settings;
use tasklane_shared::events::{self, Published};
use tasklane_shared::redis::Keys;

use super::Hub;

/// Another channel on the hub's subscription, and what to do on a message there.
pub trait Listener: Send + Sync + 'static {
    /// The channel to subscribe to.
    fn channel(&self, keys: &Keys) -> String;

    /// `message` arrived on [`Listener::channel`].
    fn heard(&self, message: &str);

    /// Whether messages are being heard: `false` when the subscription dropped (messages may
    /// be missed until it is back), `true` once it is up again.
    fn set_live(&self, live: bool);
}

impl Hub {
    /// Listens on the events channel and every listener's channel until closed,
    /// reconnecting as needed.
    pub fn spawn_listener(&self, settings: &Settings) -> anyhow::Result<()> {
        let clients = tasklane_shared::redis::pubsub_clients(settings)?;
        let hub = self.clone();
        tokio::spawn(async move {
            let mut first = true;
            let mut closing = hub.closing.clone();
            // On a cluster, each attempt tries the next node: one that failed may be gone.
            for client in clients.iter().cycle() {
                let listened = tokio::select! {
                    result = hub.listen(client, !first) => result,
                    _ = closing.wait_for(|closed| *closed) => return,
                };
                // Messages may be missed until the subscription is back.
                for listener in hub.listeners.iter() {
                    listener.set_live(false);
                }
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
        let events_channel = events::channel(&self.keys);
        let channels: Vec<String> =
            self.listeners.iter().map(|listener| listener.channel(&self.keys)).collect();
        let mut subscribed = vec![&events_channel];
        subscribed.extend(&channels);
        pubsub.subscribe(&subscribed).await?;
        for listener in self.listeners.iter() {
            listener.set_live(true);
        }
        if resumed {
            self.broadcast_resume();
        }
        let mut messages = pubsub.into_on_message();
        while let Some(message) = messages.next().await {
            let channel = message.get_channel_name();
            if channel != events_channel {
                if let Some(at) = channels.iter().position(|c| c == channel) {
                    self.listeners[at].heard(&message.get_payload::<String>().unwrap_or_default());
                }
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
}
