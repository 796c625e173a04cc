//! Accounts as the routes share them: reading an account, login sessions (refresh
//! families), the configured-admin promotion, and the verification emails (their single-use
//! tokens are minted by the worker, see [`tasklane_shared::domain::email_tokens`]). Every function runs on the caller's connection or
//! transaction, so a handler composes them into one commit.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgExecutor};
use tasklane_shared::domain::email_tokens;
use tasklane_shared::domain::users::{EmailTokenPurpose, Role};
use tasklane_shared::jobs::{EmailMessage, SendEmail};
use tasklane_shared::outbox;
use uuid::Uuid;

use crate::auth::tokens::{hash_token, new_opaque_token};

/// How long an email verification link works.
const VERIFY_TTL: Duration = Duration::from_secs(24 * 3600);

/// A row of `users`, all columns but the password hash.
#[derive(Debug, Clone)]
pub struct UserRow {
    pub id: Uuid,
    pub email: String,
    pub display_name: Option<String>,
    pub role: Role,
    pub disabled: bool,
    pub email_verified_at: Option<DateTime<Utc>>,
    pub timezone: String,
    pub digest_enabled: bool,
    pub digest_hour: i16,
    pub created_at: DateTime<Utc>,
}

/// A new login session: its refresh family and the family's first refresh token.
#[derive(Debug, Clone)]
pub struct RefreshGrant {
    /// The login session; access tokens carry it as `sid`.
    pub family: Uuid,
    /// The opaque refresh token handed to the client (stored only as a hash).
    pub token: String,
}

pub async fn find(db: impl PgExecutor<'_>, id: Uuid) -> Result<Option<UserRow>, sqlx::Error> {
    sqlx::query_as!(
        UserRow,
        r#"select id, email, display_name, role as "role: Role", disabled, email_verified_at,
                  timezone, digest_enabled, digest_hour, created_at
           from users where id = $1"#,
        id
    )
    .fetch_optional(db)
    .await
}

/// Up to `limit` accounts in id order (creation order: ids are UUIDv7), from `offset`.
pub async fn page(
    db: impl PgExecutor<'_>,
    limit: i64,
    offset: i64,
) -> Result<Vec<UserRow>, sqlx::Error> {
    sqlx::query_as!(
        UserRow,
        r#"select id, email, display_name, role as "role: Role", disabled, email_verified_at,
                  timezone, digest_enabled, digest_hour, created_at
           from users order by id limit $1 offset $2"#,
        limit,
        offset
    )
    .fetch_all(db)
    .await
}

/// Up to `limit` accounts in id order after `after` (from the first when `None`).
pub async fn after(
    db: impl PgExecutor<'_>,
    limit: i64,
    after: Option<Uuid>,
) -> Result<Vec<UserRow>, sqlx::Error> {
    sqlx::query_as!(
        UserRow,
        r#"select id, email, display_name, role as "role: Role", disabled, email_verified_at,
                  timezone, digest_enabled, digest_hour, created_at
           from users where $2::uuid is null or id > $2 order by id limit $1"#,
        limit,
        after
    )
    .fetch_all(db)
    .await
}

/// How many accounts there are.
pub async fn count(db: impl PgExecutor<'_>) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar!(r#"select count(*) as "count!" from users"#).fetch_one(db).await
}

/// Revokes every live refresh token of a user, optionally sparing one session; returns the
/// sessions (refresh families) that ended, for [`crate::auth::accounts::AccountCache::sessions_ended`]
/// once committed.
pub async fn revoke_sessions(
    db: impl PgExecutor<'_>,
    user: Uuid,
    except: Option<Uuid>,
) -> Result<Vec<Uuid>, sqlx::Error> {
    let mut ended = sqlx::query_scalar!(
        "update refresh_tokens set revoked_at = now()
         where user_id = $1 and revoked_at is null and ($2::uuid is null or family_id <> $2)
         returning family_id",
        user,
        except
    )
    .fetch_all(db)
    .await?;
    ended.sort_unstable();
    ended.dedup();
    Ok(ended)
}

/// Makes a verified address from `TASKLANE_ADMIN_EMAILS` an admin (SPEC section 4: the first
/// admins come from configuration, never from the public API).
pub async fn promote_configured_admin(
    db: impl PgExecutor<'_>,
    id: Uuid,
    admin_emails: &[String],
) -> Result<bool, sqlx::Error> {
    if admin_emails.is_empty() {
        return Ok(false);
    }
    let promoted = sqlx::query!(
        "update users set role = 'admin', updated_at = now()
         where id = $1 and role <> 'admin' and email_verified_at is not null and email = any($2)",
        id,
        admin_emails
    )
    .execute(db)
    .await?
    .rows_affected();
    Ok(promoted == 1)
}

/// Starts a login session: a new refresh family with its first token.
pub async fn start_session(
    db: impl PgExecutor<'_>,
    user: Uuid,
    ttl: Duration,
) -> Result<RefreshGrant, sqlx::Error> {
    let family = Uuid::now_v7();
    let token = issue_refresh(db, user, family, ttl).await?;
    Ok(RefreshGrant { family, token })
}

/// Stores a new refresh token of a family and returns it.
pub async fn issue_refresh(
    db: impl PgExecutor<'_>,
    user: Uuid,
    family: Uuid,
    ttl: Duration,
) -> Result<String, sqlx::Error> {
    let token = new_opaque_token();
    sqlx::query!(
        "insert into refresh_tokens (id, user_id, family_id, token_hash, expires_at)
         values ($1, $2, $3, $4, now() + make_interval(secs => $5))",
        Uuid::now_v7(),
        user,
        family,
        hash_token(&token),
        ttl.as_secs_f64()
    )
    .execute(db)
    .await?;
    Ok(token)
}

/// Sets a new password hash, revokes sessions (all, or all but `keep`) and queues the
/// "password changed" email, on the caller's transaction. Returns the sessions that ended:
/// announce them once committed, so their access tokens stop working.
pub async fn change_password(
    tx: &mut PgConnection,
    user: Uuid,
    email: &str,
    display_name: Option<String>,
    hash: &str,
    keep: Option<Uuid>,
    request_id: &str,
) -> Result<Vec<Uuid>, sqlx::Error> {
    sqlx::query!(
        "update users set password_hash = $2, updated_at = now() where id = $1",
        user,
        hash
    )
    .execute(&mut *tx)
    .await?;
    let ended = revoke_sessions(&mut *tx, user, keep).await?;
    let job = SendEmail {
        idempotency_key: format!("password_changed:{}", Uuid::now_v7()),
        to: email.to_owned(),
        message: EmailMessage::PasswordChanged { display_name },
    };
    outbox::enqueue(tx, &job, Some(request_id)).await?;
    Ok(ended)
}

/// Voids earlier verification links and sends a new one, on the caller's transaction.
pub async fn send_verification(
    tx: &mut PgConnection,
    user: Uuid,
    email: &str,
    display_name: Option<String>,
    request_id: &str,
) -> Result<(), sqlx::Error> {
    send_link(
        tx,
        user,
        email.to_owned(),
        EmailTokenPurpose::VerifyEmail,
        VERIFY_TTL,
        request_id,
        |token_id| EmailMessage::VerifyEmail { display_name, token_id },
    )
    .await
}

/// Voids earlier reset links and queues a new one, on the caller's transaction (the caller
/// holds the hourly limit).
pub async fn send_reset(
    tx: &mut PgConnection,
    user_id: Uuid,
    email: String,
    display_name: Option<String>,
    ttl: Duration,
    request_id: &str,
) -> Result<(), sqlx::Error> {
    send_link(tx, user_id, email, EmailTokenPurpose::ResetPassword, ttl, request_id, |token_id| {
        EmailMessage::ResetPassword { display_name, token_id }
    })
    .await
}

/// Voids the user's earlier links of `purpose`, creates a new token row (the worker mints the
/// token itself as it sends, so no raw token sits in the outbox or Redis) and queues its
/// email, on the caller's transaction.
async fn send_link(
    tx: &mut PgConnection,
    user: Uuid,
    to: String,
    purpose: EmailTokenPurpose,
    ttl: Duration,
    request_id: &str,
    message: impl FnOnce(Uuid) -> EmailMessage,
) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "update email_tokens set used_at = now()
         where user_id = $1 and purpose = $2 and used_at is null",
        user,
        purpose.as_str()
    )
    .execute(&mut *tx)
    .await?;
    let token_id = email_tokens::create(tx, user, purpose, ttl).await?;
    let job = SendEmail {
        idempotency_key: format!("{}:{token_id}", purpose.as_str()),
        to,
        message: message(token_id),
    };
    outbox::enqueue(tx, &job, Some(request_id)).await?;
    Ok(())
}

/// How many email tokens of `purpose` `user` got in the last hour (the hourly email limits).
pub async fn email_tokens_last_hour(
    db: impl PgExecutor<'_>,
    user: Uuid,
    purpose: EmailTokenPurpose,
) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar!(
        r#"select count(*) as "count!" from email_tokens
           where user_id = $1 and purpose = $2 and created_at > now() - interval '1 hour'"#,
        user,
        purpose.as_str()
    )
    .fetch_one(db)
    .await
}
