//! How an account is shown, and the queries the account routes share.

use chrono::{DateTime, Utc};
use poem_openapi::Object;
use sqlx::PgExecutor;
use uuid::Uuid;

use crate::auth::Role;

/// An account, as its owner (or an admin) sees it.
#[derive(Debug, Clone, Object)]
pub struct UserView {
    pub id: Uuid,
    /// Normalised: trimmed and lowercased.
    pub email: String,
    pub display_name: Option<String>,
    pub role: Role,
    pub email_verified: bool,
    /// IANA time zone, e.g. `Europe/Paris`; used by the daily digest.
    pub timezone: String,
    /// Whether the daily digest email is wanted.
    pub digest_enabled: bool,
    /// Local hour (0-23) at which the digest is sent.
    pub digest_hour: u8,
    /// Whether an admin disabled the account.
    pub disabled: bool,
    pub created_at: DateTime<Utc>,
}

/// A row of `users`, all columns but the password hash.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct UserRow {
    pub id: Uuid,
    pub email: String,
    pub display_name: Option<String>,
    pub role: String,
    pub disabled: bool,
    pub email_verified_at: Option<DateTime<Utc>>,
    pub timezone: String,
    pub digest_enabled: bool,
    pub digest_hour: i16,
    pub created_at: DateTime<Utc>,
}

pub const USER_COLUMNS: &str = "id, email, display_name, role, disabled, email_verified_at, timezone, digest_enabled, digest_hour, created_at";

impl From<UserRow> for UserView {
    fn from(row: UserRow) -> Self {
        Self {
            id: row.id,
            email: row.email,
            display_name: row.display_name,
            role: Role::parse(&row.role).unwrap_or(Role::User),
            email_verified: row.email_verified_at.is_some(),
            timezone: row.timezone,
            digest_enabled: row.digest_enabled,
            digest_hour: u8::try_from(row.digest_hour).unwrap_or(0),
            disabled: row.disabled,
            created_at: row.created_at,
        }
    }
}

pub async fn find(db: impl PgExecutor<'_>, id: Uuid) -> Result<Option<UserRow>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!("select {USER_COLUMNS} from users where id = $1")))
        .bind(id)
        .fetch_optional(db)
        .await
}

/// Revokes every live refresh token of a user, optionally sparing one session.
pub async fn revoke_sessions(
    db: impl PgExecutor<'_>,
    user: Uuid,
    except: Option<Uuid>,
) -> Result<u64, sqlx::Error> {
    Ok(sqlx::query(
        "update refresh_tokens set revoked_at = now()
         where user_id = $1 and revoked_at is null and ($2::uuid is null or family_id <> $2)",
    )
    .bind(user)
    .bind(except)
    .execute(db)
    .await?
    .rows_affected())
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
    let promoted = sqlx::query(
        "update users set role = 'admin', updated_at = now()
         where id = $1 and role <> 'admin' and email_verified_at is not null and email = any($2)",
    )
    .bind(id)
    .bind(admin_emails)
    .execute(db)
    .await?
    .rows_affected();
    Ok(promoted == 1)
}

/// Starts a login session: a new refresh family with its first token. Returns
/// `(family, token)`.
pub async fn start_session(
    db: impl PgExecutor<'_>,
    user: Uuid,
    ttl: std::time::Duration,
) -> Result<(Uuid, String), sqlx::Error> {
    let family = Uuid::now_v7();
    let token = issue_refresh(db, user, family, ttl).await?;
    Ok((family, token))
}

/// Stores a new refresh token of a family and returns it.
pub async fn issue_refresh(
    db: impl PgExecutor<'_>,
    user: Uuid,
    family: Uuid,
    ttl: std::time::Duration,
) -> Result<String, sqlx::Error> {
    let token = crate::auth::tokens::new_opaque_token();
    sqlx::query(
        "insert into refresh_tokens (id, user_id, family_id, token_hash, expires_at)
         values ($1, $2, $3, $4, now() + make_interval(secs => $5))",
    )
    .bind(Uuid::now_v7())
    .bind(user)
    .bind(family)
    .bind(crate::auth::tokens::hash_token(&token))
    .bind(ttl.as_secs_f64())
    .execute(db)
    .await?;
    Ok(token)
}
