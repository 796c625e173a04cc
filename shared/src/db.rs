//! The PostgreSQL pool and the migrations both binaries share.
//!
//! Migrations are embedded at compile time and applied by `tasklane-api migrate` (which
//! `scripts/dev`, compose and deploys run before starting the API), not at API start:
//! several API replicas starting together must not race to migrate.

use std::time::Duration;

use secrecy::ExposeSecret;
use sqlx::postgres::{PgPool, PgPoolOptions};

use crate::config::Settings;

/// Every migration under `migrations/`, embedded in the binary.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");

/// Opens the pool lazily so a process can start (and report not-ready) while Postgres is
/// still coming up; the acquire timeout keeps a dead database from hanging requests.
pub fn connect(settings: &Settings) -> anyhow::Result<PgPool> {
    connect_sized(settings, settings.database_max_connections)
}

/// Like [`connect`] with a pool of `max_connections`.
pub fn connect_sized(settings: &Settings, max_connections: u32) -> anyhow::Result<PgPool> {
    let pool = PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(3))
        .connect_lazy(settings.database_url.expose_secret())?;
    Ok(pool)
}

/// Applies pending migrations; safe to run repeatedly (sqlx takes an advisory lock).
pub async fn migrate(pool: &PgPool) -> anyhow::Result<()> {
    MIGRATOR.run(pool).await?;
    Ok(())
}
