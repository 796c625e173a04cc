//! W3C trace context across the hops of a job (SPEC section 13): one trace from the HTTP
//! request through the outbox and the queue to the job's SMTP or S3 calls.
//!
//! The span that writes an outbox row gives the row its `traceparent`
//! ([`current_traceparent`]); the relay records the row's wait in the outbox as a span of
//! that trace and hands the same `traceparent` to Redis with the job; the worker records the
//! job's wait in the queue and runs each attempt in a span whose parent it is ([`job_span`]).
//! The waits are spans with the times the rows and the job hash recorded, written after the
//! fact ([`record_wait`]): no process sits in a wait, so no live span could measure it.
//!
//! Without a tracing subscriber (unit tests) every function here is a cheap no-op. A
//! process that exports no spans carries the context without OpenTelemetry's span
//! machinery ([`carried`]); the functions here answer the same either way.

mod carried;

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{Span as _, SpanKind, TraceContextExt, Tracer};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::queue::Claim;

pub(crate) use carried::{install as carry_context, layer as carrying_layer};

/// Whether this process's spans go to OpenTelemetry (to be exported), rather than only
/// carrying their trace context: naming a span for export is wasted work otherwise.
pub fn spans_exported() -> bool {
    !carried::carrying()
}

/// The `traceparent` of the current span, when it belongs to a valid trace.
pub fn current_traceparent() -> Option<String> {
    if carried::carrying() {
        let context = carried::current()?;
        return traceparent_of(&Context::new().with_remote_span_context(context));
    }
    traceparent_of(&Span::current().context())
}

/// The `traceparent` header value of a context.
pub fn traceparent_of(cx: &Context) -> Option<String> {
    if !cx.span().span_context().is_valid() {
        return None;
    }
    let mut carrier = HashMap::new();
    TraceContextPropagator::new().inject_context(cx, &mut carrier);
    carrier.remove("traceparent")
}

/// The context a `traceparent` (and `tracestate`) names; an empty context when absent or
/// malformed, so a bad header starts a new trace instead of failing anything.
pub fn context_from(traceparent: Option<&str>, tracestate: Option<&str>) -> Context {
    let mut carrier = HashMap::new();
    if let Some(value) = traceparent {
        carrier.insert("traceparent".to_owned(), value.to_owned());
    }
    if let Some(value) = tracestate {
        carrier.insert("tracestate".to_owned(), value.to_owned());
    }
    TraceContextPropagator::new().extract(&carrier)
}

/// Makes `span` continue the trace of `parent` (when valid) and records its trace id in the
/// span's `trace_id` field, which every log line inside it then carries.
pub fn continue_trace(span: &Span, parent: Context) {
    if carried::carrying() {
        if let Some(context) = carried::continue_trace(span, &parent) {
            span.record("trace_id", tracing::field::display(context.trace_id()));
        }
        return;
    }
    if parent.span().span_context().is_valid() {
        let _ = span.set_parent(parent);
    }
    let trace_id = span.context().span().span_context().trace_id();
    if trace_id != opentelemetry::trace::TraceId::INVALID {
        span.record("trace_id", tracing::field::display(trace_id));
    }
}

/// The trace id of the current span, for responses and admin views.
pub fn current_trace_id() -> Option<String> {
    if carried::carrying() {
        return carried::current().map(|context| context.trace_id().to_string());
    }
    let cx = Span::current().context();
    let span_context = cx.span().span_context().clone();
    span_context.is_valid().then(|| span_context.trace_id().to_string())
}

/// The trace id inside a `traceparent` (`00-<trace id>-<span id>-<flags>`).
pub fn trace_id_of(traceparent: &str) -> Option<&str> {
    traceparent.split('-').nth(1).filter(|id| id.len() == 32)
}

/// Records a span of `parent`'s trace that started and ended at the given times: a wait in
/// the outbox or the queue, known only once it is over.
pub fn record_wait(
    name: &'static str,
    parent: &Context,
    start: SystemTime,
    end: SystemTime,
    attributes: Vec<KeyValue>,
) {
    // Nothing would export it.
    if !parent.span().span_context().is_valid() || !spans_exported() {
        return;
    }
    let tracer = opentelemetry::global::tracer("tasklane");
    let mut span = tracer
        .span_builder(name)
        .with_kind(SpanKind::Internal)
        .with_start_time(start)
        .with_attributes(attributes)
        .start_with_context(&tracer, parent);
    span.end_with_timestamp(end.max(start));
}

/// A time in milliseconds since the epoch (Redis' clock) as a `SystemTime`.
pub fn from_millis(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

/// The span of one attempt of a job, continuing the trace of the request that caused it.
/// It also records the attempt's wait in the queue, from when the job became claimable (its
/// push, or for a later attempt its retry falling due) to its claim, both by Redis' clock.
pub fn job_span(claim: &Claim) -> Span {
    let span = tracing::info_span!(
        "job",
        otel.name = %format!("job {}", claim.kind),
        otel.kind = "consumer",
        queue = claim.queue.as_str(),
        kind = %claim.kind,
        id = %claim.id,
        attempt = claim.attempt,
        request_id = claim.request_id.as_deref().unwrap_or("-"),
        trace_id = tracing::field::Empty,
    );
    let parent = context_from(claim.traceparent.as_deref(), None);
    if claim.ready_ms > 0 {
        record_wait(
            "queue.wait",
            &parent,
            from_millis(claim.ready_ms),
            from_millis(claim.claimed_ms),
            vec![
                KeyValue::new("job.id", claim.id.clone()),
                KeyValue::new("job.kind", claim.kind.clone()),
                KeyValue::new("job.attempt", i64::from(claim.attempt)),
                KeyValue::new("queue", claim.queue.as_str()),
            ],
        );
    }
    continue_trace(&span, parent);
    span
}

/// The API request a task serves: its id, and the account its receipt belongs to.
struct RequestScope {
    id: String,
    owner: std::sync::OnceLock<uuid::Uuid>,
}

tokio::task_local! {
    /// Set by the API's HTTP middleware around every request, so rows the request writes
    /// name it and its caller (request receipts, SPEC section 13).
    static REQUEST: RequestScope;
}

/// Runs `work` as part of request `id` (the API's HTTP middleware wraps every request).
pub async fn in_request<F: std::future::Future>(id: String, work: F) -> F::Output {
    REQUEST.scope(RequestScope { id, owner: std::sync::OnceLock::new() }, work).await
}

/// The id of the request this task serves, if any.
pub fn current_request_id() -> Option<String> {
    REQUEST.try_with(|scope| scope.id.clone()).ok()
}

/// Makes `user` the owner of the receipt of the request this task serves: its
/// authenticated caller (the bearer check), or for an anonymous request the account it acts
/// on once known (a registration's new account, the account a password reset is for). That
/// account sees the request's jobs once signed in; an anonymous caller learns nothing (a
/// receipt needs the owner's bearer token). The first owner set stays.
pub fn own_receipt(user: uuid::Uuid) {
    let _ = REQUEST.try_with(|scope| scope.owner.set(user));
}

/// The owner of the receipt of the request this task serves: its authenticated caller, or
/// the account an anonymous request acts on ([`own_receipt`]). `None` outside requests and
/// before an anonymous request knows its account.
pub fn current_caller() -> Option<uuid::Uuid> {
    REQUEST.try_with(|scope| scope.owner.get().copied()).ok().flatten()
}
