//! The Tasklane worker: runs the jobs the API writes to the outbox.
//!
//! # Layout
//! - [`app`]: builds the process ([`app::WorkerApp`]): relay, apalis monitor, health server.
//! - [`context`]: [`context::WorkerContext`], what handlers, backends and the health server
//!   share; below `jobs`, `health` and `app`.
//! - [`jobs`]: the handlers and the one table that registers them.
//! - [`cron`]: schedules, run once per tick across the fleet, ticks timed by Redis' clock
//!   (`cron/ticks.rs`).
//! - [`mailer`]: SMTP with lettre; [`templates`]: the emails, one folder each.
//! - [`health`]: `/health/*` and `/metrics`.

pub mod app;
pub mod context;
pub mod cron;
pub mod health;
pub mod jobs;
pub mod mailer;
pub mod templates;
