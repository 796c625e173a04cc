//! The server span of each HTTP request (SPEC section 13): it continues the caller's W3C
//! `traceparent` (or starts a trace), carries the trace id into every log line of the
//! request, and is named by the matched route once known, so traces group by operation
//! rather than by task id.

use opentelemetry::trace::TraceContextExt;
use poem::Request;
use poem::http::{Method, StatusCode};
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The span a request runs in, parented on the request's `traceparent` when it has one.
pub fn request_span(req: &Request, request_id: &str) -> Span {
    let method = req.method();
    let path = req.uri().path();
    let span = tracing::info_span!(
        "request",
        otel.name = %method,
        otel.kind = "server",
        otel.status_code = tracing::field::Empty,
        %request_id,
        %method,
        %path,
        http.response.status_code = tracing::field::Empty,
        trace_id = tracing::field::Empty,
    );
    let header = |name: &str| req.headers().get(name).and_then(|value| value.to_str().ok());
    let parent = tasklane_shared::trace::context_from(header("traceparent"), header("tracestate"));
    tasklane_shared::trace::continue_trace(&span, parent);
    span
}

/// Names the current request span by its route and records its status (a 5xx is an error).
pub fn record_outcome(method: &Method, route: &str, status: StatusCode) {
    let span = Span::current();
    // The OpenTelemetry span already exists (its trace id went into the logs), so it is
    // renamed directly rather than through the `otel.name` field; a name only an exporter
    // reads is not made when nothing is exported.
    if tasklane_shared::trace::spans_exported() {
        span.context().span().update_name(format!("{method} {route}"));
    }
    span.record("http.response.status_code", status.as_u16());
    if status.is_server_error() {
        span.record("otel.status_code", "error");
    }
}
