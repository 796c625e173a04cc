//! One module per resource; [`crate::openapi`] merges them into the document.
//!
//! Routes sit at the top of the import graph: they use the services, the state, the
//! [`crate::security`] schemes and the [`crate::tags`], and nothing below imports them.
//!
//! # Layout
//! - [`auth`]: register, sign in, refresh, sign out, verification, password reset.
//! - [`me`]: the caller's own account; [`flags`]: feature flags (the caller's and admins').
//! - [`admin_users`]: account administration; [`admin_jobs`]: queues and schedules;
//!   [`admin_ops`]: operating the queue (pauses, limits, cancel, bulk retry, the fleet, audit);
//!   [`admin_outbox`]: the outbox backlog, quarantined rows and job records;
//!   [`admin_live`]: the queues, fleet and backlog live, for the operator console.
//! - [`tasks`], [`attachments`]: tasks and their files (and the signed links files download by).
//! - [`events`]: the event streams (SSE, WebSocket) and their tickets; [`requests`]: the
//!   receipt of a caller's request (the jobs and events it caused).
//! - [`user_view`]: how an account is shown, shared by the account routes.

pub mod admin_jobs;
pub mod admin_live;
pub mod admin_ops;
pub mod admin_outbox;
pub mod admin_users;
pub mod attachments;
pub mod auth;
pub mod events;
pub mod flags;
pub mod job_view;
pub mod me;
pub mod requests;
pub mod tasks;
pub mod user_view;

/// Opaque cursors of lists paged by id (SPEC section 2): base64url of the last row's id.
pub(crate) mod id_cursor {
    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use uuid::Uuid;

    pub fn encode(last: Uuid) -> String {
        URL_SAFE_NO_PAD.encode(last.as_bytes())
    }

    /// `None` for anything `encode` did not make.
    pub fn decode(cursor: &str) -> Option<Uuid> {
        let bytes = URL_SAFE_NO_PAD.decode(cursor).ok()?;
        Uuid::from_slice(&bytes).ok()
    }
}
