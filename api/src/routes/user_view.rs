//! How an account is shown, to its owner (`/auth`, `/me`) and to admins (`/admin/users`).

use chrono::{DateTime, Utc};
use poem_openapi::Object;
use uuid::Uuid;

use crate::auth::Role;
use crate::auth::accounts::Account;
use crate::services::users::UserRow;

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

impl From<UserRow> for UserView {
    fn from(row: UserRow) -> Self {
        Self {
            id: row.id,
            email: row.email,
            display_name: row.display_name,
            role: row.role,
            email_verified: row.email_verified_at.is_some(),
            timezone: row.timezone,
            digest_enabled: row.digest_enabled,
            digest_hour: u8::try_from(row.digest_hour).unwrap_or(0),
            disabled: row.disabled,
            created_at: row.created_at,
        }
    }
}

/// An active account as the account cache holds it (so never disabled).
impl From<&Account> for UserView {
    fn from(account: &Account) -> Self {
        Self {
            id: account.id,
            email: account.email.clone(),
            display_name: account.display_name.clone(),
            role: account.role,
            email_verified: account.email_verified,
            timezone: account.timezone.clone(),
            digest_enabled: account.digest_enabled,
            digest_hour: account.digest_hour,
            disabled: false,
            created_at: account.created_at,
        }
    }
}
