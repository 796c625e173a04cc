//! The accounts and login sessions behind access tokens, cached in this process.
//!
//! Every authenticated request needs its caller's role, whether the account is disabled and
//! whether the token's session (`sid`, its refresh family) is still live, and a token alone
//! cannot say (demoting or disabling someone, or signing out, takes effect at once, not when
//! the token expires). Asking Postgres on every request would make that check the cost of
//! every read, so this instance keeps what it read, per account and session, and drops it
//! as soon as any instance changes it:
//!
//! - A change is announced after its commit on a Redis channel ([`super::announcements`]):
//!   an account change (role, disabled; [`AccountCache::changed`]) drops every entry, ended
//!   sessions (logout, password change or reset, refresh-token reuse;
//!   [`AccountCache::sessions_ended`]) drop theirs. Every instance's event hub listens on it;
//!   the instance that made the change drops its entries before it answers.
//! - Entries are trusted only while this instance's subscription is up: losing it (Redis
//!   restarted, network cut) flushes and stops caching until it is back, since announcements
//!   may have been missed meanwhile. Until then every request reads the database.
//! - Every announcement heard bumps a generation. A read that stored its entry while the
//!   generation moved drops it again, so a lookup racing a change can never put the old state
//!   back.
//! - Entries live [`TTL`] at most: that bounds the damage of an announcement that could not
//!   be published at all.
//!
//! Account changes are rare (an admin's action, a verified admin address), so one drops
//! every entry; sign-outs are common, so one drops only its sessions' entries.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use redis::aio::ConnectionManager;
use sqlx::PgPool;
use tasklane_shared::redis::Keys;
use uuid::Uuid;

use super::Role;
use super::announcements::{self, Announcement};
use crate::hub::Listener;

/// How long an entry is trusted, at most.
pub const TTL: Duration = Duration::from_secs(30);
/// Entries kept, at most (the least recently useful go first).
const CAPACITY: usize = 100_000;

/// What authentication needs of an active account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub email: String,
    pub role: Role,
}

#[derive(Clone)]
struct Entry {
    /// `None`: the account is gone or disabled, or the session ended.
    account: Option<Account>,
    read_at: Instant,
}

pub struct AccountCache {
    /// Keyed by account and session.
    entries: quick_cache::sync::Cache<(Uuid, Uuid), Entry>,
    generation: AtomicU64,
    live: AtomicBool,
    redis: ConnectionManager,
    keys: Keys,
}

impl AccountCache {
    pub fn new(redis: ConnectionManager, keys: Keys) -> Self {
        Self {
            entries: quick_cache::sync::Cache::new(CAPACITY),
            generation: AtomicU64::new(0),
            live: AtomicBool::new(false),
            redis,
            keys,
        }
    }

    /// The active account `user` while its login session `session` is live, or `None`
    /// when the account is gone or disabled or the session ended.
    pub async fn get(
        &self,
        db: &PgPool,
        user: Uuid,
        session: Uuid,
    ) -> Result<Option<Account>, sqlx::Error> {
        let key = (user, session);
        let generation = self.generation.load(Ordering::SeqCst);
        let live = self.live.load(Ordering::SeqCst);
        if live
            && let Some(entry) = self.entries.get(&key)
            && entry.read_at.elapsed() < TTL
        {
            return Ok(entry.account);
        }
        let read_at = Instant::now();
        // A session is live while its refresh family has a token that is not revoked (each
        // rotation leaves exactly one); every way a session ends revokes them all.
        let row = sqlx::query!(
            r#"select u.email, u.role as "role: Role", u.disabled,
                      exists(select 1 from refresh_tokens t
                             where t.family_id = $2 and t.user_id = u.id
                               and t.revoked_at is null) as "session_live!"
               from users u where u.id = $1"#,
            user,
            session
        )
        .fetch_optional(db)
        .await?;
        let account = row
            .filter(|row| !row.disabled && row.session_live)
            .map(|row| Account { email: row.email, role: row.role });
        if live {
            self.entries.insert(key, Entry { account: account.clone(), read_at });
            // Something was announced since the read began: what was read may be old.
            if self.generation.load(Ordering::SeqCst) != generation {
                self.entries.remove(&key);
            }
        }
        Ok(account)
    }

    /// Forgets every entry, and every read still under way.
    pub fn flush(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.entries.clear();
    }

    /// Forgets the entries of these sessions of `user`, and every read still under way.
    fn forget(&self, user: Uuid, sessions: &[Uuid]) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        for session in sessions {
            self.entries.remove(&(user, *session));
        }
    }

    /// Whether this instance hears announcements; caching only while it does.
    pub fn set_live(&self, live: bool) {
        self.live.store(live, Ordering::SeqCst);
        self.flush();
    }

    /// What an announcement heard on the channel means here.
    pub fn hear(&self, message: &str) {
        match Announcement::decode(message) {
            Some(Announcement::SessionsEnded { user, sessions }) => self.forget(user, &sessions),
            Some(Announcement::Account(_)) | None => self.flush(),
        }
    }

    /// After an account change has committed: flushes here and tells every instance.
    pub async fn changed(&self, user: Uuid) {
        self.flush();
        announcements::publish(&self.redis, &self.keys, &Announcement::Account(user)).await;
    }

    /// After sessions of `user` ended (their refresh tokens revoked, committed): their
    /// access tokens stop working here at once, and on every instance once announced.
    pub async fn sessions_ended(&self, user: Uuid, sessions: Vec<Uuid>) {
        if sessions.is_empty() {
            return;
        }
        self.forget(user, &sessions);
        let announcement = Announcement::SessionsEnded { user, sessions };
        announcements::publish(&self.redis, &self.keys, &announcement).await;
    }
}

/// The cache hears announcements on the event hub's subscription.
impl Listener for AccountCache {
    fn channel(&self, keys: &Keys) -> String {
        announcements::channel(keys)
    }

    fn heard(&self, message: &str) {
        self.hear(message);
    }

    fn set_live(&self, live: bool) {
        AccountCache::set_live(self, live);
    }
}
