//! The trace context without OpenTelemetry's span machinery, for a process that exports no
//! spans (no OTLP endpoint, the default).
//!
//! Exporting nothing, a process still owes SPEC section 13 the trace: a request continues
//! its caller's `traceparent` (or starts a trace), its log lines carry the trace id, and the
//! jobs it causes carry a `traceparent` the worker continues. `tracing-opentelemetry` did
//! that by building an OpenTelemetry span for every `tracing` span, with an attribute per
//! field, an event per log line and a timestamp on every poll, all then thrown away: about a
//! fifth of a cached read's CPU. Here the spans that start or continue a trace (a request, a
//! job attempt) get only its [`SpanContext`], chosen as the SDK would choose it (same ids,
//! same sampler, same flags), kept in the span's registry extensions; a span inside them
//! finds it by walking up, as OpenTelemetry's context would be inherited.

use std::sync::OnceLock;

use opentelemetry::Context;
use opentelemetry::trace::{SpanContext, SpanKind, TraceContextExt, TraceFlags};
use opentelemetry_sdk::trace::ShouldSample;
use opentelemetry_sdk::trace::{IdGenerator, RandomIdGenerator, Sampler, SamplingDecision};
use tracing::{Metadata, Span};
use tracing_subscriber::Registry;
use tracing_subscriber::filter::{FilterFn, LevelFilter};
use tracing_subscriber::registry::LookupSpan;

/// The sampler of a process that only carries trace context; unset when it exports (or has
/// no subscriber of ours).
static CARRYING: OnceLock<Sampler> = OnceLock::new();

/// Makes this process carry trace context itself, deciding sampling flags with `sampler`
/// (the one its tracer provider would use). Called once, by `init_tracing`.
pub(crate) fn install(sampler: Sampler) {
    let _ = CARRYING.set(sampler);
}

/// Whether this process carries trace context itself (and so exports nothing).
pub(crate) fn carrying() -> bool {
    CARRYING.get().is_some()
}

/// The layer that keeps spans in the registry so they can hold a context: spans at `info`
/// and above, as the OpenTelemetry layer took them, and no events (it has no use for them;
/// without this layer a span no log filter wants would not exist at all).
pub(crate) fn layer<S>() -> tracing_subscriber::filter::Filtered<Spans, FilterFn, S>
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
{
    let spans = |meta: &Metadata<'_>| meta.is_span() && *meta.level() <= tracing::Level::INFO;
    tracing_subscriber::Layer::with_filter(
        Spans,
        tracing_subscriber::filter::filter_fn(spans as fn(&Metadata<'_>) -> bool)
            .with_max_level_hint(LevelFilter::INFO),
    )
}

/// A layer that does nothing itself: its filter is what makes the registry keep spans.
pub(crate) struct Spans;

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Spans {}

/// The context a span carries, in its registry extensions.
struct Carried(SpanContext);

/// Starts `span`'s part of the trace of `parent` (a new trace when `parent` has no valid
/// span), keeps it on the span, and returns it; `None` when spans are not kept.
pub(crate) fn continue_trace(span: &Span, parent: &Context) -> Option<SpanContext> {
    let sampler = CARRYING.get()?;
    let name = span.metadata().map_or("span", Metadata::name);
    let context = start(sampler, parent, name);
    let kept = span.with_subscriber(|(id, dispatch)| {
        let data = dispatch.downcast_ref::<Registry>()?.span(id)?;
        data.extensions_mut().replace(Carried(context.clone()));
        Some(())
    });
    kept.flatten().map(|()| context)
}

/// What the SDK's tracer would give a new span of `parent`: the parent's trace id (or a new
/// one), a new span id, and the sampler's flags.
fn start(sampler: &Sampler, parent: &Context, name: &str) -> SpanContext {
    let ids = RandomIdGenerator::default();
    let parent_span = parent.span();
    let parent_context = parent_span.span_context();
    let trace_id =
        if parent_context.is_valid() { parent_context.trace_id() } else { ids.new_trace_id() };
    let result = sampler.should_sample(Some(parent), trace_id, name, &SpanKind::Server, &[], &[]);
    let flags = match result.decision {
        SamplingDecision::RecordAndSample => parent_context.trace_flags().with_sampled(true),
        SamplingDecision::RecordOnly => parent_context.trace_flags().with_sampled(false),
        SamplingDecision::Drop => TraceFlags::default(),
    };
    SpanContext::new(trace_id, ids.new_span_id(), flags, false, result.trace_state)
}

/// The context the current span carries, or the nearest span around it that carries one.
pub(crate) fn current() -> Option<SpanContext> {
    CARRYING.get()?;
    Span::current()
        .with_subscriber(|(id, dispatch)| {
            let data = dispatch.downcast_ref::<Registry>()?.span(id)?;
            data.scope().find_map(|span| span.extensions().get::<Carried>().map(|c| c.0.clone()))
        })
        .flatten()
}

#[cfg(test)]
mod tests {
    use opentelemetry::trace::{SpanId, TraceContextExt, TraceId};

    use super::*;

    fn parent(flags: TraceFlags) -> Context {
        let trace_id =
            TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap_or(TraceId::INVALID);
        let span_id = SpanId::from_hex("00f067aa0ba902b7").unwrap_or(SpanId::INVALID);
        let context = SpanContext::new(trace_id, span_id, flags, true, Default::default());
        Context::new().with_remote_span_context(context)
    }

    #[test]
    fn a_span_continues_its_parents_trace_with_its_parents_sampling_decision() {
        let sampler = Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(1.0)));
        for flags in [TraceFlags::SAMPLED, TraceFlags::default()] {
            let parent = parent(flags);
            let child = start(&sampler, &parent, "request");
            let parent_context = parent.span().span_context().clone();
            assert_eq!(child.trace_id(), parent_context.trace_id());
            assert_ne!(child.span_id(), parent_context.span_id());
            assert!(child.is_valid());
            assert_eq!(child.is_sampled(), flags.is_sampled());
        }
    }

    #[test]
    fn without_a_parent_a_span_starts_a_trace_sampled_at_the_ratio() {
        for (ratio, sampled) in [(1.0, true), (0.0, false)] {
            let sampler = Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(ratio)));
            let first = start(&sampler, &Context::new(), "request");
            let second = start(&sampler, &Context::new(), "request");
            assert!(first.is_valid());
            assert_ne!(first.trace_id(), second.trace_id());
            assert_eq!(first.is_sampled(), sampled);
        }
    }
}
