//! The worker's own `/health/live`, `/health/ready` and `/metrics` (SPEC section 3), for
//! orchestrators and Prometheus. Queue gauges are read from Redis at scrape time.

use poem::http::StatusCode;
use poem::web::{Data, Json};
use poem::{IntoResponse, Response, Route, get, handler};
use tasklane_shared::domain::jobs::JobState;
use tasklane_shared::jobs::Queue;
use tasklane_shared::readiness::Readiness;

use crate::context::WorkerContext;

pub fn routes() -> Route {
    Route::new()
        .at("/health/live", get(live))
        .at("/health/ready", get(ready))
        .at("/metrics", get(render_metrics))
}

#[handler]
fn live(ctx: Data<&WorkerContext>) -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok", "worker": ctx.name }))
}

#[handler]
async fn ready(ctx: Data<&WorkerContext>) -> Response {
    let readiness = Readiness::check(&ctx.db, &ctx.store.connection()).await;
    // Only the names: the worker's port is not meant for clients, and errors go to the logs.
    let down: Vec<&str> = readiness.down().into_iter().map(|(name, _)| name).collect();
    if down.is_empty() {
        return Json(serde_json::json!({ "status": "ok", "worker": ctx.name })).into_response();
    }
    let body = serde_json::json!({
        "type": "urn:tasklane:problem:dependency_unavailable",
        "title": "Service Unavailable",
        "status": 503,
        "detail": format!("unavailable: {}", down.join(", ")),
    });
    Response::builder()
        .status(StatusCode::SERVICE_UNAVAILABLE)
        .content_type("application/problem+json")
        .header("Retry-After", "5")
        .body(body.to_string())
}

#[handler]
async fn render_metrics(ctx: Data<&WorkerContext>) -> String {
    for queue in Queue::ALL {
        match ctx.store.depth(queue).await {
            Ok(depth) => {
                let q = queue.as_str();
                // Done jobs are a retention window, not a backlog: no gauge.
                for state in JobState::ALL.into_iter().filter(|s| *s != JobState::Done) {
                    metrics::gauge!("queue_jobs", "queue" => q, "state" => state.as_str())
                        .set(depth.of(state) as f64);
                }
                metrics::gauge!("queue_oldest_pending_age_seconds", "queue" => q)
                    .set(depth.oldest_pending_age.as_secs_f64());
            }
            Err(err) => {
                tracing::warn!(queue = queue.as_str(), error = %err, "cannot read queue depth")
            }
        }
    }
    match tasklane_shared::outbox::backlog(&ctx.db).await {
        Ok(backlog) => metrics::gauge!("outbox_backlog").set(backlog as f64),
        Err(err) => tracing::warn!(error = %err, "cannot read the outbox backlog"),
    }
    tasklane_shared::telemetry::metrics_handle().render()
}
