//! The PostgreSQL pool and the migrations both binaries share.
//!
//! Migrations are embedded at compile time and applied by `tasklane-api migrate` (which
//! `scripts/dev`, compose and deploys run before starting the API), not at API start:
//! several API replicas starting together must not race to migrate.

use std::time::Duration;

use secrecy::ExposeSecret;
use sqlx::PgConnection;
use sqlx::postgres::{PgPool, PgPoolOptions};
use tracing::Instrument;

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

/// A transaction traced as a `db.transaction` span of the current span (SPEC section 13:
/// a request's writes, and the outbox rows they cause, commit together), from its `BEGIN`
/// to its commit or rollback: a trace shows how long the request held it. It derefs to the
/// connection, as sqlx's own does.
pub struct Tx {
    inner: sqlx::Transaction<'static, sqlx::Postgres>,
    /// Open as long as the transaction: it ends, and is exported, when the `Tx` is dropped
    /// (a rollback) or once the commit returns.
    span: tracing::Span,
}

/// Begins a traced transaction; `operation` names what it writes (`register`).
pub async fn begin(pool: &PgPool, operation: &'static str) -> sqlx::Result<Tx> {
    let span = tracing::info_span!(
        "db.transaction",
        otel.kind = "client",
        db.system = "postgresql",
        db.operation = operation,
    );
    let inner = pool.begin().instrument(span.clone()).await?;
    Ok(Tx { inner, span })
}

impl Tx {
    pub async fn commit(self) -> sqlx::Result<()> {
        let Tx { inner, span } = self;
        inner.commit().instrument(span).await
    }
}

impl std::ops::Deref for Tx {
    type Target = PgConnection;

    fn deref(&self) -> &PgConnection {
        &self.inner
    }
}

impl std::ops::DerefMut for Tx {
    fn deref_mut(&mut self) -> &mut PgConnection {
        &mut self.inner
    }
}

/// Applies pending migrations; safe to run repeatedly (sqlx takes an advisory lock).
pub async fn migrate(pool: &PgPool) -> anyhow::Result<()> {
    MIGRATOR.run(pool).await?;
    Ok(())
}

/// True when `err` says the database is unreachable or going away rather than that the
/// statement was wrong: no connection within the acquire timeout, a refused or cut
/// connection, or the server shutting down, starting up or out of connections. Callers
/// answer these with "unavailable, retry" (the API's 503), never as a bug.
pub fn is_unavailable(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::BeginFailed => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| is_unavailable_sqlstate(&code)),
        _ => false,
    }
}

/// SQLSTATEs of a server that cannot serve now: class 08 (connection exception),
/// 57P01..57P03 (admin or crash shutdown, cannot connect now), 53300 (too many
/// connections).
fn is_unavailable_sqlstate(code: &str) -> bool {
    code.starts_with("08") || matches!(code, "57P01" | "57P02" | "57P03" | "53300")
}

/// Whether any error in `err`'s chain is a database outage ([`is_unavailable`]).
pub fn chain_is_unavailable(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| cause.downcast_ref::<sqlx::Error>().is_some_and(is_unavailable))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_failures_and_shutdowns_are_outages_and_bad_statements_are_not() {
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert!(is_unavailable(&sqlx::Error::Io(refused)));
        assert!(is_unavailable(&sqlx::Error::PoolTimedOut));
        assert!(!is_unavailable(&sqlx::Error::RowNotFound));
        for code in ["08006", "08001", "57P01", "57P03", "53300"] {
            assert!(is_unavailable_sqlstate(code), "{code}");
        }
        for code in ["23505", "42P01", "40001"] {
            assert!(!is_unavailable_sqlstate(code), "{code}");
        }
        let wrapped = anyhow::Error::new(sqlx::Error::PoolTimedOut).context("loading the task");
        assert!(chain_is_unavailable(&wrapped));
        assert!(!chain_is_unavailable(&anyhow::anyhow!("a bug")));
    }
}
