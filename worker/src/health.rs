//! The worker's own `/health/live`, `/health/ready` and `/metrics` (SPEC section 3), for
//! orchestrators and Prometheus. Queue gauges are read from Redis at scrape time.

use poem::http::StatusCode;
use poem::web::{Data, Json};
use poem::{IntoResponse, Response, Route, get, handler};
use tasklane_shared::domain::jobs::JobState;
use tasklane_shared::fleet::{self, WorkerInfo};
use tasklane_shared::jobs::{Priority, Queue};
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

/// Beats `worker_heartbeat_timestamp_seconds` every few seconds until `stopped`: a worker
/// whose runtime is wedged still answers nothing, but one that answers scrapes with an old
/// beat is stuck, and the `TasklaneWorkerStuck` alert says so.
pub async fn heartbeat(stopped: impl std::future::Future<Output = ()>) {
    tokio::pin!(stopped);
    let mut every = tokio::time::interval(std::time::Duration::from_secs(5));
    loop {
        tokio::select! {
            () = &mut stopped => return,
            _ = every.tick() => metrics::gauge!("worker_heartbeat_timestamp_seconds")
                .set(chrono::Utc::now().timestamp_millis() as f64 / 1000.0),
        }
    }
}

/// Says every [`fleet::BEAT`] that this worker is alive and what it runs (`GET
/// /admin/workers`) until `stopped` resolves; then leaves the fleet's list.
pub async fn announce(ctx: WorkerContext, stopped: impl std::future::Future<Output = ()>) {
    tokio::pin!(stopped);
    let mut info = WorkerInfo {
        id: ctx.name.clone(),
        host: std::env::var("HOSTNAME").unwrap_or_else(|_| "worker".into()),
        pid: std::process::id(),
        version: env!("CARGO_PKG_VERSION").into(),
        started_at: chrono::Utc::now(),
        concurrency: ctx.concurrency,
        running: Default::default(),
        last_seen: None,
    };
    let (mut conn, keys) = (ctx.store.connection(), ctx.store.keys().clone());
    let mut every = tokio::time::interval(fleet::BEAT);
    loop {
        tokio::select! {
            () = &mut stopped => break,
            _ = every.tick() => {
                info.running = ctx.held.by_kind();
                if let Err(err) = fleet::beat(&mut conn, &keys, &info).await {
                    tracing::debug!(error = %err, "cannot announce this worker");
                }
            }
        }
    }
    let _ = fleet::leave(&mut conn, &keys, &info.id).await;
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
                pending_by_priority(&ctx, queue).await;
            }
            Err(err) => {
                tracing::warn!(queue = queue.as_str(), error = %err, "cannot read queue depth")
            }
        }
    }
    match tasklane_shared::outbox::overview(&ctx.db).await {
        Ok(outbox) => {
            metrics::gauge!("outbox_backlog").set(outbox.waiting as f64);
            metrics::gauge!("outbox_oldest_age_seconds").set(outbox.oldest_waiting_age_seconds);
            metrics::gauge!("outbox_in_flight").set(outbox.in_flight as f64);
            metrics::gauge!("outbox_quarantined").set(outbox.quarantined as f64);
        }
        Err(err) => tracing::warn!(error = %err, "cannot read the outbox"),
    }
    match tasklane_shared::controls::all(&ctx.db).await {
        Ok(controls) => control_gauges(&controls),
        Err(err) => tracing::warn!(error = %err, "cannot read the queue controls"),
    }
    tasklane_shared::telemetry::metrics_handle().render()
}

/// `queue_pending{queue, priority}`: the jobs waiting in each priority of a queue.
async fn pending_by_priority(ctx: &WorkerContext, queue: Queue) {
    let Ok(pending) = ctx.store.pending_by_kind(queue).await else { return };
    for priority in [Priority::High, Priority::Normal, Priority::Low] {
        let waiting: u64 = tasklane_shared::jobs::ALL
            .iter()
            .filter(|spec| spec.queue == queue && spec.priority == priority)
            .filter_map(|spec| pending.get(spec.kind))
            .sum();
        metrics::gauge!("queue_pending", "queue" => queue.as_str(), "priority" => priority.as_str())
            .set(waiting as f64);
    }
}

/// The operators' pauses and limits (SPEC section 10) as gauges: `queue_paused{queue}` and
/// `kind_paused{kind}` (1 or 0), `kind_rate_limit_per_second{kind}` and
/// `kind_concurrency_limit{kind}` (0 when the kind has no such limit).
fn control_gauges(controls: &[tasklane_shared::controls::Control]) {
    let find = |scope: &str, name: &str| {
        controls.iter().find(|control| control.scope == scope && control.name == name)
    };
    let flag = |paused: bool| if paused { 1.0 } else { 0.0 };
    for queue in Queue::ALL {
        let paused = find("queue", queue.as_str()).is_some_and(|control| control.paused);
        metrics::gauge!("queue_paused", "queue" => queue.as_str()).set(flag(paused));
    }
    for spec in tasklane_shared::jobs::ALL {
        let control = find("kind", spec.kind);
        let limits = control.map(|control| control.limits).unwrap_or_default();
        metrics::gauge!("kind_paused", "kind" => spec.kind)
            .set(flag(control.is_some_and(|control| control.paused)));
        metrics::gauge!("kind_rate_limit_per_second", "kind" => spec.kind)
            .set(limits.rate_per_second.unwrap_or(0.0));
        metrics::gauge!("kind_concurrency_limit", "kind" => spec.kind)
            .set(f64::from(limits.concurrency.unwrap_or(0)));
    }
}
