//! The single-use tokens behind verification and password-reset links, and how they stay
//! out of every store but the user's inbox (SPEC section 14).
//!
//! The API only [`create`]s a row: who, what for, until when, and no hash, so no token
//! exists yet. The `send_email` job carries the row's id, never a token. The worker
//! [`mint`]s the token as it sends: a fresh 256-bit token whose SHA-256 it stores on the
//! row, rendered into the link and then forgotten. So the outbox, the Redis job records
//! (pending, done or dead), the admin API and the logs only ever see a row id.
//!
//! The rules that count rows keep working as before: the hourly limits count rows, a new
//! link voids the earlier ones by marking their rows used, and a row without a hash matches
//! no token. Minting again (a retried send) replaces the hash, so only the link of the email
//! that went out last works; a row already used, voided or expired gets no hash at all.

use std::time::Duration;

use sqlx::{PgConnection, PgExecutor};
use uuid::Uuid;

use super::users::EmailTokenPurpose;
use crate::tokens::{hash_token, new_opaque_token};

/// Records a new single-use token of `purpose` for `user`, valid for `ttl`, without a
/// token yet (the worker mints it when it sends the email); returns the row id the email
/// job carries.
pub async fn create(
    tx: &mut PgConnection,
    user: Uuid,
    purpose: EmailTokenPurpose,
    ttl: Duration,
) -> Result<Uuid, sqlx::Error> {
    let id = Uuid::now_v7();
    sqlx::query!(
        "insert into email_tokens (id, user_id, purpose, expires_at)
         values ($1, $2, $3, now() + make_interval(secs => $4))",
        id,
        user,
        purpose.as_str(),
        ttl.as_secs_f64()
    )
    .execute(tx)
    .await?;
    Ok(id)
}

/// The token minted for a link about to be sent.
#[derive(Debug)]
pub struct Minted {
    /// Goes in the link, and nowhere else.
    pub token: String,
    /// Whether its hash was stored: `false` when the row was used, voided by a newer link,
    /// expired or gone before its email went out. The email still goes (the request that
    /// queued it was answered, and the hourly limit counted it), with a link as dead as its
    /// row, just as when the API minted tokens.
    pub live: bool,
}

/// Mints the token of row `id` for the link about to be sent, storing its hash while the
/// row is unused and unexpired. Commits on its own: the link must work the moment the email
/// arrives, before the sender records it as sent.
pub async fn mint(db: impl PgExecutor<'_>, id: Uuid) -> Result<Minted, sqlx::Error> {
    let token = new_opaque_token();
    let stored = sqlx::query!(
        "update email_tokens set token_hash = $2
         where id = $1 and used_at is null and expires_at > now()",
        id,
        hash_token(&token)
    )
    .execute(db)
    .await?
    .rows_affected();
    Ok(Minted { token, live: stored == 1 })
}
