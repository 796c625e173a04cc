//! Operational endpoints: liveness, readiness and Prometheus metrics (SPEC section 3).
//!
//! They live in the OpenAPI document too, so operators find them in Swagger UI.

use poem::http::StatusCode;
use poem::web::Data;
use poem_openapi::payload::{Json, PlainText};
use poem_openapi::{ApiResponse, Object, OpenApi};
use tasklane_shared::readiness::Readiness;

use crate::http::RequestId;
use crate::problem::Problem;
use crate::state::AppState;
use crate::tags::ApiTags;

/// What a 503 asks clients to wait before retrying.
const RETRY_AFTER_SECS: u32 = 5;

pub struct OpsApi;

/// The state of the process and of each dependency.
#[derive(Debug, Object)]
pub struct HealthReport {
    /// `ok`, or `unavailable` when a dependency is down.
    pub status: String,
    /// Per dependency: `ok` or why it is down.
    pub checks: Vec<HealthCheck>,
}

#[derive(Debug, Object)]
pub struct HealthCheck {
    /// `postgres` or `redis`.
    pub name: String,
    /// `ok`, or the error seen.
    pub status: String,
}

#[derive(ApiResponse)]
pub enum ReadyResponse {
    /// Postgres and Redis answer.
    #[oai(status = 200)]
    Ready(Json<HealthReport>),
    /// At least one dependency is down; `detail` names it.
    #[oai(status = 503, content_type = "application/problem+json")]
    Unavailable(Json<Problem>, #[oai(header = "Retry-After")] u32),
}

#[OpenApi(tag = "ApiTags::Operations")]
impl OpsApi {
    /// Liveness: the process is up and serving requests.
    #[oai(path = "/health/live", method = "get")]
    async fn live(&self) -> Json<HealthReport> {
        Json(HealthReport { status: "ok".into(), checks: Vec::new() })
    }

    /// Readiness: the API can reach PostgreSQL and Redis. A 503 names what is down.
    #[oai(path = "/health/ready", method = "get")]
    async fn ready(&self, state: Data<&AppState>, request_id: Data<&RequestId>) -> ReadyResponse {
        let readiness = Readiness::check(&state.db, &state.redis).await;
        let checks = readiness
            .checks()
            .into_iter()
            .map(|(name, result)| HealthCheck {
                name: name.into(),
                status: result.clone().err().unwrap_or_else(|| "ok".into()),
            })
            .collect();
        let down: Vec<String> =
            readiness.down().into_iter().map(|(name, why)| format!("{name} ({why})")).collect();
        if down.is_empty() {
            return ReadyResponse::Ready(Json(HealthReport { status: "ok".into(), checks }));
        }
        let detail = format!("unavailable: {}", down.join(", "));
        tracing::warn!(%detail, "not ready");
        let problem =
            Problem::new(StatusCode::SERVICE_UNAVAILABLE, "dependency_unavailable", detail)
                .with_request_id(&request_id.0.0);
        ReadyResponse::Unavailable(Json(problem), RETRY_AFTER_SECS)
    }

    /// Prometheus metrics: request counts and latency histograms by route and status.
    #[oai(path = "/metrics", method = "get")]
    async fn metrics(&self, state: Data<&AppState>) -> PlainText<String> {
        PlainText(state.metrics.render())
    }
}
