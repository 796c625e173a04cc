//! Account and session announcements: the Redis channel every instance hears (through its
//! event hub's subscription, see [`crate::hub::Listener`]) and the publish that follows a
//! committed change, so every instance drops what it cached (see [`super::accounts`]).
//!
//! Two things are announced: an account changed (role, disabled, profile, verified address),
//! and sessions of an account ended (logout, a password change or reset, refresh-token
//! reuse), whose access tokens must stop working at once.

use std::time::Duration;

use tasklane_shared::redis::Conn;
use tasklane_shared::redis::Keys;
use uuid::Uuid;

/// What changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Announcement {
    /// An account changed (role, disabled, profile, verified address): written as the bare
    /// account id.
    Account(Uuid),
    /// Sessions (refresh families) of an account ended: `sessions <user> <session>...`.
    SessionsEnded { user: Uuid, sessions: Vec<Uuid> },
}

impl Announcement {
    pub fn encode(&self) -> String {
        match self {
            Self::Account(user) => user.to_string(),
            Self::SessionsEnded { user, sessions } => {
                let mut message = format!("sessions {user}");
                for session in sessions {
                    message.push(' ');
                    message.push_str(&session.to_string());
                }
                message
            }
        }
    }

    /// The announcement in `message`, or `None` for a message this version does not know
    /// (a listener then drops everything, which is always safe).
    pub fn decode(message: &str) -> Option<Self> {
        let mut words = message.split(' ');
        match words.next()? {
            "sessions" => {
                let user = words.next()?.parse().ok()?;
                let sessions = words.map(str::parse).collect::<Result<_, _>>().ok()?;
                Some(Self::SessionsEnded { user, sessions })
            }
            user => user.parse().ok().map(Self::Account),
        }
    }

    fn user(&self) -> Uuid {
        match self {
            Self::Account(user) | Self::SessionsEnded { user, .. } => *user,
        }
    }
}

/// The channel account changes are announced on.
pub fn channel(keys: &Keys) -> String {
    keys.global("accounts:changed")
}

/// Tells every instance what changed.
///
/// Runs as a task of its own that the caller awaits, so it completes even if the client
/// goes away after the commit. Publishing is retried briefly; should it still fail, other
/// instances catch up within [`super::accounts::TTL`].
pub async fn publish(redis: &Conn, keys: &Keys, announcement: &Announcement) {
    let (mut conn, channel) = (redis.clone(), channel(keys));
    let (message, user) = (announcement.encode(), announcement.user());
    let announce = tokio::spawn(async move {
        let mut delay = Duration::from_millis(50);
        for attempt in 1..=3 {
            let published: redis::RedisResult<i64> =
                redis::cmd("PUBLISH").arg(&channel).arg(&message).query_async(&mut conn).await;
            match published {
                Ok(_) => return,
                Err(err) if attempt == 3 => {
                    tracing::error!(error = %err, %user, "cannot announce an account or session change; other instances may trust the old state for up to 30 s")
                }
                Err(err) => {
                    tracing::warn!(error = %err, %user, attempt, "cannot announce an account or session change; retrying")
                }
            }
            tokio::time::sleep(delay).await;
            delay *= 4;
        }
    });
    let _ = announce.await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn announcements_round_trip() {
        let user = Uuid::now_v7();
        for announcement in [
            Announcement::Account(user),
            Announcement::SessionsEnded { user, sessions: vec![Uuid::now_v7(), Uuid::now_v7()] },
        ] {
            assert_eq!(Announcement::decode(&announcement.encode()), Some(announcement));
        }
        assert_eq!(Announcement::decode("sessions nope"), None);
        assert_eq!(Announcement::decode(""), None);
    }
}
