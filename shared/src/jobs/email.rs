//! The emails Tasklane sends, as the payload of a `send_email` job carries them: which
//! template, and the data it needs (never a raw token: links are minted as they are sent).

use uuid::Uuid;

/// Every email Tasklane sends, with the data its templates need.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "template", rename_all = "snake_case")]
pub enum EmailMessage {
    /// Confirms the address after registration. `token_id` is the `email_tokens` row whose
    /// token the worker mints as it sends (SPEC section 14: no raw token in a job).
    VerifyEmail { display_name: Option<String>, token_id: Uuid },
    /// Carries a password reset link (30 minutes, single use), minted like the verification
    /// link.
    ResetPassword { display_name: Option<String>, token_id: Uuid },
    /// Tells the owner the password changed, so an unexpected change is noticed.
    PasswordChanged { display_name: Option<String> },
    /// A task's reminder, at the time its owner set (`remind_at`); the due time in the
    /// owner's zone.
    TaskReminder { display_name: Option<String>, task_id: Uuid, title: String, due: Option<String> },
    /// The daily digest: open, due-soon and overdue tasks, times in the user's zone.
    DailyDigest {
        display_name: Option<String>,
        /// The user's local date, e.g. `2026-11-21`.
        date: String,
        open: Vec<DigestItem>,
        due_soon: Vec<DigestItem>,
        overdue: Vec<DigestItem>,
    },
}

/// One task in a digest.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DigestItem {
    pub title: String,
    /// Local time, e.g. `2026-11-21 17:00`.
    pub due: Option<String>,
}

impl EmailMessage {
    /// The template folder of this email.
    pub fn template(&self) -> &'static str {
        match self {
            Self::VerifyEmail { .. } => "verify_email",
            Self::ResetPassword { .. } => "reset_password",
            Self::PasswordChanged { .. } => "password_changed",
            Self::DailyDigest { .. } => "daily_digest",
            Self::TaskReminder { .. } => "task_reminder",
        }
    }

    /// The `email_tokens` row whose link this email carries, if it carries one
    /// ([`crate::domain::email_tokens::mint`]).
    pub fn link_token(&self) -> Option<Uuid> {
        match self {
            Self::VerifyEmail { token_id, .. } | Self::ResetPassword { token_id, .. } => {
                Some(*token_id)
            }
            Self::PasswordChanged { .. } | Self::DailyDigest { .. } | Self::TaskReminder { .. } => {
                None
            }
        }
    }
}
