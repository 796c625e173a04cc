//! Each test's own database, cloned from a template migrated once per set of migrations.

use anyhow::Context;
use secrecy::ExposeSecret;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, PgConnection};
use tasklane_shared::config::Settings;

use crate::unique;

/// Creates this test's database from the migrated template, creating the template first if
/// this is the first test to need it (an advisory lock makes concurrent test processes
/// build it once). Returns the database name, the admin options and its URL.
pub(crate) async fn create_database(
    settings: &Settings,
) -> anyhow::Result<(String, PgConnectOptions, String)> {
    let base: PgConnectOptions =
        settings.database_url.expose_secret().parse().context("DATABASE_URL")?;
    let admin = base.clone().database("postgres").disable_statement_logging();
    let mut conn = PgConnection::connect_with(&admin).await.context("connect to postgres")?;
    let template = template_name();
    sqlx::query("select pg_advisory_lock(727274)").execute(&mut conn).await?;
    let exists: bool =
        sqlx::query_scalar("select exists(select 1 from pg_database where datname = $1)")
            .bind(&template)
            .fetch_one(&mut conn)
            .await?;
    if !exists {
        let building = format!("{template}_building");
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(r#"drop database if exists "{building}""#)))
            .execute(&mut conn)
            .await?;
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(r#"create database "{building}""#)))
            .execute(&mut conn)
            .await?;
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .connect_with(base.clone().database(&building))
            .await?;
        tasklane_shared::db::migrate(&pool).await?;
        pool.close().await;
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            r#"alter database "{building}" rename to "{template}""#
        )))
        .execute(&mut conn)
        .await?;
    }
    sqlx::query("select pg_advisory_unlock(727274)").execute(&mut conn).await?;
    let name = unique("test");
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        r#"create database "{name}" template "{template}""#
    )))
    .execute(&mut conn)
    .await?;
    let mut url = url::Url::parse(settings.database_url.expose_secret())?;
    url.set_path(&name);
    Ok((name, admin, url.to_string()))
}

/// The template is named after the migrations' checksums, so a changed migration gets a
/// fresh template instead of a stale one.
fn template_name() -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for migration in tasklane_shared::db::MIGRATOR.iter() {
        for byte in migration.checksum.iter() {
            hash = (hash ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3);
        }
    }
    format!("tasklane_template_{hash:016x}")
}
