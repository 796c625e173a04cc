//! Tasks below the HTTP layer (SPEC section 5): what `routes::tasks` calls.
//!
//! # Layout
//! - [`records`]: reads and changes of one task, each with its audit entry and event.
//! - [`list`]: the filtered, sorted, paged list (keyset cursors or pages).
//! - [`writer`]: creation, many requests per statement under load ([`TaskWriter`]).
//! - [`quota`]: the daily creation quota in Redis.
//! - [`cache`]: cached lists and tasks, in memory and in Redis, and their invalidation.
//! - [`generations`]: the users' cache generations, read for many requests at once.

pub mod cache;
pub mod generations;
pub mod list;
pub mod quota;
pub mod records;
pub mod writer;

pub use self::writer::TaskWriter;
