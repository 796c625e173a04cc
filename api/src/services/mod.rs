//! What the routes call beneath them: the rules, SQL and Redis work of a resource, with no
//! HTTP in them. Routes depend on services, services on the domain
//! (`tasklane_shared::domain`) and the database, never the other way.
//!
//! # Layout
//! - [`attachments`]: attachment rows and their changes on the API's side.
//! - [`audit`]: the admin audit log.
//! - [`download_links`]: the signed, short-lived links a ready attachment downloads by.
//! - [`flags`]: the flags the code knows, and whether one is on for a user.
//! - [`live`]: the console's live picture of the queues, sampled once per instance.
//! - [`tasks`]: task rows and their changes, the task list, creation (group commit), the
//!   daily quota and the task cache.
//! - [`users`]: accounts, login sessions (refresh families) and the single-use email
//!   tokens behind verification and password resets.

pub mod attachments;
pub mod audit;
pub mod download_links;
pub mod flags;
pub mod live;
pub mod tasks;
pub mod users;
