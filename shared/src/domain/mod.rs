//! The domain: what a task, an attachment, an account and a job are, the states they move
//! through and the rules of those moves, written once for both binaries.
//!
//! States are enums that sqlx reads and writes (stored as text, or as a number where sorting
//! needs it) and that poem-openapi documents when the `openapi` feature is on (the API turns
//! it on; the worker does not pay for it).
//!
//! # Layout
//! - [`tasks`]: a task's fields, states and rules, and its JSON as clients see it.
//! - [`attachments`]: an attachment's states and the rule of rejecting one.
//! - [`users`]: roles and the account rules both binaries apply.
//! - [`email_tokens`]: the single-use tokens of verification and reset links, minted by the
//!   worker as it sends (no raw token at rest).
//! - [`jobs`]: the states of a job in the queue.

pub mod attachments;
pub mod email_tokens;
pub mod jobs;
pub mod tasks;
pub mod users;
