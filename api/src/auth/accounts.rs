//! The accounts behind access tokens, cached in this process.
//!
//! Every authenticated request needs its caller's role and whether the account is disabled,
//! and a token alone cannot say (demoting or disabling someone takes effect at once, not when
//! their token expires). Asking Postgres on every request would make that check the cost of
//! every read, so this instance keeps what it read, and drops it as soon as any instance
//! changes an account:
//!
//! - A change (role, disabled) is announced after its commit on a Redis channel
//!   ([`AccountCache::changed`], [`super::announcements`]); every instance's event hub
//!   listens on it and calls [`AccountCache::flush`]. The instance that made the change flushes before it answers.
//! - Entries are trusted only while this instance's subscription is up: losing it (Redis
//!   restarted, network cut) flushes and stops caching until it is back, since announcements
//!   may have been missed meanwhile. Until then every request reads the database.
//! - Each flush starts a new epoch. A read that began in an earlier epoch is not stored, so a
//!   lookup racing a change can never put the old state back.
//! - Entries live [`TTL`] at most: that bounds the damage of an announcement that could not
//!   be published at all.
//!
//! Account changes are rare (an admin's action, a verified admin address), so a flush drops
//! every entry rather than tracking them one by one.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use redis::aio::ConnectionManager;
use sqlx::PgPool;
use tasklane_shared::redis::Keys;
use uuid::Uuid;

use super::Role;
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
    /// `None`: the account is gone or disabled.
    account: Option<Account>,
    epoch: u64,
    read_at: Instant,
}

pub struct AccountCache {
    entries: quick_cache::sync::Cache<Uuid, Entry>,
    epoch: AtomicU64,
    live: AtomicBool,
    redis: ConnectionManager,
    keys: Keys,
}

impl AccountCache {
    pub fn new(redis: ConnectionManager, keys: Keys) -> Self {
        Self {
            entries: quick_cache::sync::Cache::new(CAPACITY),
            epoch: AtomicU64::new(0),
            live: AtomicBool::new(false),
            redis,
            keys,
        }
    }

    /// The active account `user`, or `None` when it is gone or disabled.
    pub async fn get(&self, db: &PgPool, user: Uuid) -> Result<Option<Account>, sqlx::Error> {
        let epoch = self.epoch.load(Ordering::SeqCst);
        let live = self.live.load(Ordering::SeqCst);
        if live
            && let Some(entry) = self.entries.get(&user)
            && entry.epoch == epoch
            && entry.read_at.elapsed() < TTL
        {
            return Ok(entry.account);
        }
        let read_at = Instant::now();
        let row = sqlx::query!(
            r#"select email, role as "role: Role", disabled from users where id = $1"#,
            user
        )
        .fetch_optional(db)
        .await?;
        let account =
            row.filter(|row| !row.disabled).map(|row| Account { email: row.email, role: row.role });
        // Nothing changed since the read began, and announcements are being heard.
        if live && self.epoch.load(Ordering::SeqCst) == epoch {
            self.entries.insert(user, Entry { account: account.clone(), epoch, read_at });
        }
        Ok(account)
    }

    /// Forgets every entry, and every read still under way.
    pub fn flush(&self) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
        self.entries.clear();
    }

    /// Whether this instance hears announcements; caching only while it does.
    pub fn set_live(&self, live: bool) {
        self.live.store(live, Ordering::SeqCst);
        self.flush();
    }

    /// After an account change has committed: flushes here and tells every instance
    /// ([`super::announcements::publish`]).
    pub async fn changed(&self, user: Uuid) {
        self.flush();
        super::announcements::publish(&self.redis, &self.keys, user).await;
    }
}

/// The cache hears announcements on the event hub's subscription.
impl Listener for AccountCache {
    fn channel(&self, keys: &Keys) -> String {
        super::announcements::channel(keys)
    }

    fn heard(&self) {
        self.flush();
    }

    fn set_live(&self, live: bool) {
        AccountCache::set_live(self, live);
    }
}
