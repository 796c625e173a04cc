//! `tasklane-worker`: one worker process of the fleet. Run as many as the load needs.

use anyhow::Context;
use tasklane_shared::config::Settings;
use tasklane_shared::{shutdown, telemetry};
use tasklane_worker::app::WorkerApp;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let settings = Settings::from_env()?;
    let tracing = telemetry::init_tracing(&settings, telemetry::WORKER_SERVICE);
    let app = WorkerApp::build(settings).await.context("starting the worker")?;
    let result = app.run_until_stopped(shutdown::signal()).await;
    tracing.shutdown();
    result
}
