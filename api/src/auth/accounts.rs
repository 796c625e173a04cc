//! The accounts and login sessions behind access tokens, cached in this process.
//!
//! Every authenticated request needs its caller's role, whether the account is disabled and
//! whether the token's session (`sid`, its refresh family) is still live, and a token alone
//! cannot say (demoting or disabling someone, or signing out, takes effect at once, not when
//! the token expires). Asking Postgres on every request would make that check the cost of
//! every read, so this instance keeps what it read, per account and per session, and drops
//! it as soon as any instance changes it. The account entry holds the whole profile, so
//! `GET /me`, the call every client makes most, is answered from here too.
//!
//! - A change is announced after its commit on a Redis channel ([`super::announcements`]):
//!   an account change (role, disabled, profile, verified address;
//!   [`AccountCache::changed`]) drops that account's entry, ended sessions (logout, password
//!   change or reset, refresh-token reuse; [`AccountCache::sessions_ended`]) drop theirs.
//!   Every instance's event hub listens on it; the instance that made the change drops its
//!   entries before it answers.
//! - Entries are trusted only while this instance's subscription is up: losing it (Redis
//!   restarted, network cut) flushes and stops caching until it is back, since announcements
//!   may have been missed meanwhile. Until then every request reads the database.
//! - Every announcement heard bumps a generation. A read that stored its entries while the
//!   generation moved drops them again, so a lookup racing a change can never put the old
//!   state back.
//! - Entries live [`TTL`] at most: that bounds the damage of an announcement that could not
//!   be published at all.
//!
//! Accounts and sessions are kept apart so that a sign-out drops only its sessions and a
//! profile edit only its account. A session entry counts only beside the account entry it
//! was read with (their `epoch`), so dropping an account also retires every session entry
//! of it without a scan: disabling an account, which ends its sessions, is then seen whole.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use chrono::{DateTime, Utc};
use sqlx::PgPool;
use tasklane_shared::redis::Conn;
use tasklane_shared::redis::Keys;
use uuid::Uuid;

use super::Role;
use super::announcements::{self, Announcement};
use crate::hub::Listener;

/// How long an entry is trusted, at most.
pub const TTL: Duration = Duration::from_secs(30);
/// Entries kept per map, at most (the least recently useful go first).
const CAPACITY: usize = 100_000;

/// An active account as this instance read it: what authentication needs and what its
/// owner sees of it. (An account that is disabled or gone has none.)
#[derive(Debug)]
pub struct Account {
    pub id: Uuid,
    pub email: String,
    pub display_name: Option<String>,
    pub role: Role,
    pub email_verified: bool,
    pub timezone: String,
    pub digest_enabled: bool,
    pub digest_hour: u8,
    pub created_at: DateTime<Utc>,
    /// The owner's view of the account as a response body, rendered by the first request
    /// that sends it and reused while the entry lives (see `GET /me`).
    pub rendered: OnceLock<Bytes>,
}

#[derive(Clone)]
struct AccountEntry {
    /// `None`: the account is gone or disabled.
    account: Option<Arc<Account>>,
    read_at: Instant,
    /// Names this entry among every account entry this cache made.
    epoch: u64,
}

#[derive(Clone, Copy)]
struct SessionEntry {
    live: bool,
    read_at: Instant,
    /// The account entry this was read with; beside any other it counts for nothing.
    epoch: u64,
}

pub struct AccountCache {
    accounts: quick_cache::sync::Cache<Uuid, AccountEntry>,
    /// Keyed by account and session.
    sessions: quick_cache::sync::Cache<(Uuid, Uuid), SessionEntry>,
    generation: AtomicU64,
    /// The last account entry's epoch.
    epochs: AtomicU64,
    live: AtomicBool,
    redis: Conn,
    keys: Keys,
}

impl AccountCache {
    pub fn new(redis: Conn, keys: Keys) -> Self {
        Self {
            accounts: quick_cache::sync::Cache::new(CAPACITY),
            sessions: quick_cache::sync::Cache::new(CAPACITY),
            generation: AtomicU64::new(0),
            epochs: AtomicU64::new(0),
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
    ) -> Result<Option<Arc<Account>>, sqlx::Error> {
        let generation = self.generation.load(Ordering::SeqCst);
        let live = self.live.load(Ordering::SeqCst);
        if live && let Some(known) = self.cached(user, session) {
            return Ok(known);
        }
        let read_at = Instant::now();
        // A session is live while its refresh family has a token that is not revoked (each
        // rotation leaves exactly one); every way a session ends revokes them all.
        let row = sqlx::query!(
            r#"select u.email, u.display_name, u.role as "role: Role", u.disabled,
                      u.email_verified_at is not null as "email_verified!", u.timezone,
                      u.digest_enabled, u.digest_hour, u.created_at,
                      exists(select 1 from refresh_tokens t
                             where t.family_id = $2 and t.user_id = u.id
                               and t.revoked_at is null) as "session_live!"
               from users u where u.id = $1"#,
            user,
            session
        )
        .fetch_optional(db)
        .await?;
        let session_live = row.as_ref().is_some_and(|row| row.session_live);
        let account = row.filter(|row| !row.disabled).map(|row| {
            Arc::new(Account {
                id: user,
                email: row.email,
                display_name: row.display_name,
                role: row.role,
                email_verified: row.email_verified,
                timezone: row.timezone,
                digest_enabled: row.digest_enabled,
                digest_hour: u8::try_from(row.digest_hour).unwrap_or(0),
                created_at: row.created_at,
                rendered: OnceLock::new(),
            })
        });
        if live {
            self.keep((user, session), &account, session_live, read_at);
            // Something was announced since the read began: what was read may be old.
            if self.generation.load(Ordering::SeqCst) != generation {
                self.accounts.remove(&user);
                self.sessions.remove(&(user, session));
            }
        }
        Ok(account.filter(|_| session_live))
    }

    /// What this instance holds of `user` and `session`, like [`Self::get`] but without
    /// reading the database: `None` when it would have to (not held, or not trusted now).
    pub fn held(&self, user: Uuid, session: Uuid) -> Option<Option<Arc<Account>>> {
        if !self.live.load(Ordering::SeqCst) {
            return None;
        }
        self.cached(user, session)
    }

    /// What the entries say, when both are there, fresh and read together.
    fn cached(&self, user: Uuid, session: Uuid) -> Option<Option<Arc<Account>>> {
        let now = Instant::now();
        let fresh = |read_at: Instant| now.saturating_duration_since(read_at) < TTL;
        let account = self.accounts.get(&user).filter(|e| fresh(e.read_at))?;
        let session = self
            .sessions
            .get(&(user, session))
            .filter(|e| fresh(e.read_at) && e.epoch == account.epoch)?;
        Some(account.account.filter(|_| session.live))
    }

    /// Keeps what a read found. A fresh account entry stays as it is (replacing it would
    /// retire the entries of the account's other sessions); the session joins it.
    fn keep(
        &self,
        (user, session): (Uuid, Uuid),
        account: &Option<Arc<Account>>,
        live: bool,
        read_at: Instant,
    ) {
        let epoch = match self.accounts.get(&user).filter(|e| e.read_at.elapsed() < TTL) {
            Some(known) => known.epoch,
            None => {
                let epoch = self.epochs.fetch_add(1, Ordering::SeqCst) + 1;
                let entry = AccountEntry { account: account.clone(), read_at, epoch };
                self.accounts.insert(user, entry);
                epoch
            }
        };
        self.sessions.insert((user, session), SessionEntry { live, read_at, epoch });
    }

    /// Forgets every entry, and every read still under way.
    pub fn flush(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.accounts.clear();
        self.sessions.clear();
    }

    /// Forgets account `user` (not its sessions), and every read still under way.
    fn forget_account(&self, user: Uuid) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.accounts.remove(&user);
    }

    /// Forgets the entries of these sessions of `user`, and every read still under way.
    fn forget_sessions(&self, user: Uuid, sessions: &[Uuid]) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        for session in sessions {
            self.sessions.remove(&(user, *session));
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
            Some(Announcement::SessionsEnded { user, sessions }) => {
                self.forget_sessions(user, &sessions)
            }
            Some(Announcement::Account(user)) => self.forget_account(user),
            None => self.flush(),
        }
    }

    /// After a change of account `user` has committed (role, disabled, profile, verified
    /// address): forgets it here and tells every instance.
    pub async fn changed(&self, user: Uuid) {
        self.forget_account(user);
        announcements::publish(&self.redis, &self.keys, &Announcement::Account(user)).await;
    }

    /// After sessions of `user` ended (their refresh tokens revoked, committed): their
    /// access tokens stop working here at once, and on every instance once announced.
    pub async fn sessions_ended(&self, user: Uuid, sessions: Vec<Uuid>) {
        if sessions.is_empty() {
            return;
        }
        self.forget_sessions(user, &sessions);
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
