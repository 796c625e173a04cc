//! Logging, traces and metrics set-up shared by both binaries.
//!
//! Logs are `tracing` events: JSON lines in prod (for a log pipeline), readable lines in dev
//! and test. A request's W3C trace context is always continued, stored with the jobs it
//! causes and put in log lines as `trace_id` (SPEC section 13). When an OTLP endpoint is
//! configured ([`crate::config::TraceSettings`]) spans go to OpenTelemetry through
//! `tracing-opentelemetry` and are exported over OTLP/HTTP; otherwise the spans that start or
//! continue a trace only carry its context, without building OpenTelemetry spans nobody
//! reads (`crate::trace`'s `carried` module). [`export`] says why export never slows a
//! request; [`crate::trace`] carries the context across the outbox and the queue.
//!
//! Metrics go through the `metrics` facade into one Prometheus recorder per process,
//! rendered by each binary's `/metrics`.

mod export;

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use tracing_subscriber::{EnvFilter, Layer, fmt, prelude::*};

use crate::config::{Environment, Settings};

/// The service name of the API's spans.
pub const API_SERVICE: &str = "tasklane-api";
/// The service name of the worker's spans.
pub const WORKER_SERVICE: &str = "tasklane-worker";

/// The trace pipeline of the process; [`Tracing::shutdown`] flushes what is queued at exit.
#[must_use = "call shutdown() at exit so queued spans are exported"]
pub struct Tracing {
    provider: Option<SdkTracerProvider>,
}

impl Tracing {
    /// Exports the spans still queued (bounded by the exporter's timeout), then stops.
    pub fn shutdown(self) {
        if let Some(provider) = self.provider {
            // On a thread of its own: the SDK blocks while its export thread drains.
            let _ = std::thread::spawn(move || provider.shutdown()).join();
        }
    }
}

/// Installs the global subscriber and trace pipeline for `service`; a second call (tests
/// build many apps in one process) is a no-op.
pub fn init_tracing(settings: &Settings, service: &str) -> Tracing {
    static INSTALLED: OnceLock<()> = OnceLock::new();
    if INSTALLED.set(()).is_err() {
        return Tracing { provider: None };
    }
    let trace = &settings.trace;
    let sampler = Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(trace.sample_ratio)));
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(trace.service_name.clone().unwrap_or_else(|| service.to_owned()))
        .build();
    let mut builder =
        SdkTracerProvider::builder().with_sampler(sampler.clone()).with_resource(resource);
    let mut exporting = false;
    if let Some(endpoint) = &trace.endpoint {
        match export::processor(endpoint) {
            Ok(processor) => {
                builder = builder.with_span_processor(processor);
                exporting = true;
            }
            Err(err) => eprintln!("trace export to {endpoint} disabled: {err}"),
        }
    }
    let provider = builder.build();
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    opentelemetry::global::set_tracer_provider(provider.clone());
    // Exporting, every span becomes an OpenTelemetry span; otherwise the spans that start or
    // continue a trace only carry its context, the cheap way (see `crate::trace`).
    let otel = exporting.then(|| {
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("tasklane"))
            .with_location(false)
            .with_threads(false)
            .with_filter(EnvFilter::new("info"))
    });
    let carrying = (!exporting).then(|| {
        crate::trace::carry_context(sampler);
        crate::trace::carrying_layer()
    });

    let filter = || log_filter(settings);
    let registry = tracing_subscriber::registry().with(otel).with(carrying);
    let result = if settings.env == Environment::Prod {
        registry
            .with(
                fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(true)
                    .with_filter(filter()),
            )
            .try_init()
    } else {
        registry.with(fmt::layer().compact().with_test_writer().with_filter(filter())).try_init()
    };
    // Another subscriber was installed first (a test harness): spans still get trace ids
    // through the global provider only if that subscriber has our layer, which it lacks.
    drop(result);
    Tracing { provider: Some(provider) }
}

/// Whether `settings`' log filter may write `info` lines, or finer, anywhere (judged by its
/// most verbose directive, so a filter that might is taken to).
pub fn logs_info(settings: &Settings) -> bool {
    log_filter(settings)
        .max_level_hint()
        .is_none_or(|max| max >= tracing::level_filters::LevelFilter::INFO)
}

/// `settings`' log filter; `info` when it does not parse.
fn log_filter(settings: &Settings) -> EnvFilter {
    EnvFilter::try_new(&settings.log_filter).unwrap_or_else(|_| EnvFilter::new("info"))
}

/// The process-wide Prometheus recorder. The `metrics` facade allows one global recorder,
/// so the first caller installs it and everyone shares the handle.
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Suffix("_seconds".into()),
                    &[
                        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                        10.0, 30.0,
                    ],
                )
                .expect("static, non-empty buckets")
                .build_recorder();
            let handle = recorder.handle();
            // Fails only if another recorder was installed first, in which case our handle
            // renders nothing; nothing in this workspace installs another.
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!("a metrics recorder was already installed; /metrics will be empty");
            }
            handle
        })
        .clone()
}
