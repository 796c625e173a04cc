//! `tasklane-api`: serves the API (`serve`, the default), applies migrations (`migrate`) or
//! prints the OpenAPI document (`openapi`).

use anyhow::Context;
use tasklane_api::app::Application;
use tasklane_shared::config::Settings;
use tasklane_shared::{shutdown, telemetry};

/// mimalloc: the request path allocates a lot on many threads, where glibc's malloc
/// contends on its arena locks.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let command = std::env::args().nth(1).unwrap_or_else(|| "serve".into());
    if command == "openapi" {
        print!("{}", tasklane_api::openapi::spec_json());
        return Ok(());
    }
    let settings = Settings::from_env()?;
    let tracing = telemetry::init_tracing(&settings, telemetry::API_SERVICE);
    match command.as_str() {
        "serve" => {
            let app = Application::build(settings).await.context("starting the API")?;
            let result = app.run_until_stopped(shutdown::signal()).await;
            tracing.shutdown();
            result
        }
        "migrate" => {
            tracing.shutdown();
            let pool = tasklane_shared::db::connect(&settings)?;
            tasklane_shared::db::migrate(&pool).await.context("applying migrations")?;
            tracing::info!("migrations applied");
            Ok(())
        }
        other => anyhow::bail!("unknown command {other:?}; expected serve, migrate or openapi"),
    }
}
