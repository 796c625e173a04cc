//! The worker's own `/health/live`, `/health/ready` and `/metrics` (SPEC section 3), for
//! orchestrators and Prometheus. Queue gauges are read from Redis at scrape time.

use std::time::Duration;

use poem::http::StatusCode;
use poem::web::{Data, Json};
use poem::{IntoResponse, Response, Route, get, handler};
use tasklane_shared::jobs::Queue;

use crate::app::WorkerContext;

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
    let timeout = Duration::from_secs(2);
    let postgres = tokio::time::timeout(timeout, sqlx::query("select 1").execute(&ctx.db)).await;
    let mut redis = ctx.store.connection();
    let redis = tokio::time::timeout(timeout, tasklane_shared::redis::ping(&mut redis)).await;
    let mut down = Vec::new();
    if !matches!(postgres, Ok(Ok(_))) {
        down.push("postgres");
    }
    if !matches!(redis, Ok(Ok(()))) {
        down.push("redis");
    }
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
                metrics::gauge!("queue_jobs", "queue" => q, "state" => "pending")
                    .set(depth.pending as f64);
                metrics::gauge!("queue_jobs", "queue" => q, "state" => "running")
                    .set(depth.running as f64);
                metrics::gauge!("queue_jobs", "queue" => q, "state" => "scheduled")
                    .set(depth.scheduled as f64);
                metrics::gauge!("queue_jobs", "queue" => q, "state" => "dead")
                    .set(depth.dead as f64);
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
