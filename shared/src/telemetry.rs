//! Logging and metrics set-up shared by both binaries.
//!
//! Logs are `tracing` events: JSON lines in prod (for a log pipeline), readable lines in dev
//! and test. Metrics go through the `metrics` facade into one Prometheus recorder per
//! process, rendered by each binary's `/metrics`.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::{EnvFilter, fmt, prelude::*};

use crate::config::{Environment, Settings};

/// Installs the global subscriber; a second call (tests build many apps) is a no-op.
pub fn init_tracing(settings: &Settings) {
    let filter =
        EnvFilter::try_new(&settings.log_filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let registry = tracing_subscriber::registry().with(filter);
    let result = if settings.env == Environment::Prod {
        registry.with(fmt::layer().json().flatten_event(true).with_current_span(true)).try_init()
    } else {
        registry.with(fmt::layer().compact().with_test_writer()).try_init()
    };
    // Already installed by an earlier call in this process.
    drop(result);
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
