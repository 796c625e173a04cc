//! What handlers call below HTTP: the SQL, Redis and group-commit work of a resource, with
//! no request or response types. Routes depend on services, services on the domain
//! (`tasklane_shared::domain`) and the database, never the other way.
//!
//! # Layout
//! - [`tasks`]: task rows and their changes, the task list, creation (group commit), the
//!   daily quota and the task cache.
//! - [`attachments`]: attachment rows and their changes on the API's side.

pub mod attachments;
pub mod tasks;
