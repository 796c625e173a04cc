//! What the Tasklane API and worker both need, and nothing HTTP- or worker-specific.
//!
//! # Layout
//! - [`config`]: the typed settings, read from the environment.
//! - [`db`]: the PostgreSQL pool and the embedded migrations.
//! - [`domain`]: tasks, attachments, accounts and job states, and the rules both binaries apply.
//! - [`redis`]: Redis connections and key naming (prefix, per-queue hash tags).
//! - [`events`]: real-time events, recorded in the outbox and published to Redis.
//! - [`jobs`]: the declaration of every job kind and its payload; [`schedules`]: the
//!   effective cron schedule of each scheduled kind; [`outage`]: a dependency down, told
//!   from a failure of the job.
//! - [`queue`]: the Redis job store, its admin inspection and its apalis backend;
//!   [`controls`]: the operators' pauses and limits, kept in Postgres, obeyed from Redis.
//! - [`fleet`]: the live worker processes, as each says every two seconds.
//! - [`readiness`]: the PostgreSQL and Redis checks behind both binaries' `/health/ready`.
//! - [`outbox`]: writing jobs in the caller's transaction, and the relay that moves them to
//!   Redis.
//! - [`storage`]: the S3 client and the object keys of attachments.
//! - [`tokens`]: opaque tokens (refresh tokens, tickets, email links) and their stored hash.
//! - [`telemetry`]: logs, the trace pipeline and the Prometheus recorder; [`trace`]: trace
//!   context across the outbox and the queue; [`shutdown`]: the signal to stop.

pub mod config;
pub mod controls;
pub mod db;
pub mod domain;
pub mod events;
pub mod fleet;
pub mod jobs;
pub mod outage;
pub mod outbox;
pub mod queue;
pub mod readiness;
pub mod redis;
pub mod schedules;
pub mod shutdown;
pub mod storage;
pub mod telemetry;
pub mod tokens;
pub mod trace;
