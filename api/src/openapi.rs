//! The OpenAPI document: every API struct of the service in one place.
//!
//! [`service`] needs no state, so `tasklane-api openapi` and the drift test build the same
//! document the server serves without a database.

use poem_openapi::{OpenApiService, Tags};

use crate::ops::OpsApi;

#[derive(Tags)]
pub enum ApiTags {
    /// Health and metrics for operators and orchestrators.
    Operations,
}

pub type Apis = OpsApi;

pub fn service() -> OpenApiService<Apis, ()> {
    OpenApiService::new(OpsApi, "Tasklane API", env!("CARGO_PKG_VERSION"))
        .description(
            "Task management over a durable job queue. Errors are `application/problem+json` \
             (RFC 9457). Every response carries `X-Request-Id`.",
        )
}

/// The document as committed in `openapi.json` (pretty JSON with a trailing newline).
pub fn spec_json() -> String {
    let mut spec = service().spec();
    spec.push('\n');
    spec
}
