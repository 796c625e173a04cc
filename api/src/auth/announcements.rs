//! Account-change announcements: the Redis channel every instance hears (through its event
//! hub's subscription, see [`crate::hub::Listener`]) and the publish that follows a
//! committed change (role, disabled), so every instance drops the accounts it cached
//! (see [`super::accounts`]).

use std::time::Duration;

use redis::aio::ConnectionManager;
use tasklane_shared::redis::Keys;
use uuid::Uuid;

/// The channel account changes are announced on.
pub fn channel(keys: &Keys) -> String {
    keys.global("accounts:changed")
}

/// Tells every instance that `user` changed.
///
/// Runs as a task of its own that the caller awaits, so it completes even if the client
/// goes away after the commit. Publishing is retried briefly; should it still fail, other
/// instances catch up within [`super::accounts::TTL`].
pub async fn publish(redis: &ConnectionManager, keys: &Keys, user: Uuid) {
    let (mut conn, channel) = (redis.clone(), channel(keys));
    let announce = tokio::spawn(async move {
        let mut delay = Duration::from_millis(50);
        for attempt in 1..=3 {
            let published: redis::RedisResult<i64> = redis::cmd("PUBLISH")
                .arg(&channel)
                .arg(user.to_string())
                .query_async(&mut conn)
                .await;
            match published {
                Ok(_) => return,
                Err(err) if attempt == 3 => {
                    tracing::error!(error = %err, %user, "cannot announce an account change; other instances may trust the old state for up to 30 s")
                }
                Err(err) => {
                    tracing::warn!(error = %err, %user, attempt, "cannot announce an account change; retrying")
                }
            }
            tokio::time::sleep(delay).await;
            delay *= 4;
        }
    });
    let _ = announce.await;
}
