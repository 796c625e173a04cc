//! What the routes call beneath them: the rules and SQL of a resource that more than one
//! handler uses, with no HTTP in them (routes -> services -> db).
//!
//! # Layout
//! - [`flags`]: the flags the code knows, and whether one is on for a user.
//! - [`users`]: accounts, login sessions (refresh families) and the single-use email
//!   tokens behind verification and password resets.

pub mod flags;
pub mod users;
