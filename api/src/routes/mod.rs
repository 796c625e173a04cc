//! One module per resource; [`crate::openapi`] merges them into the document.

pub mod admin_jobs;
pub mod admin_users;
pub mod attachments;
pub mod auth;
pub mod events;
pub mod flags;
pub mod me;
pub mod tasks;
pub mod users;
