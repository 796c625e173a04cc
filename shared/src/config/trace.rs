//! Trace export (SPEC section 13), configured by the standard OpenTelemetry variables so an
//! operator's usual collector settings apply unchanged.

use super::reader::Reader;

/// Where and how much to export. Export is off without an endpoint; trace context is still
/// continued and stored with jobs, and log lines still carry the trace id.
#[derive(Debug, Clone, PartialEq)]
pub struct TraceSettings {
    /// The OTLP/HTTP traces URL: `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` as given, or
    /// `OTEL_EXPORTER_OTLP_ENDPOINT` plus `/v1/traces`. `None` when neither is set or
    /// `OTEL_SDK_DISABLED=true`.
    pub endpoint: Option<String>,
    /// The share of new traces sampled (`OTEL_TRACES_SAMPLER_ARG`, 0..=1, default 1); a
    /// continued trace keeps its caller's decision (parent-based sampling).
    pub sample_ratio: f64,
    /// `OTEL_SERVICE_NAME`, overriding `tasklane-api` / `tasklane-worker`.
    pub service_name: Option<String>,
}

impl Default for TraceSettings {
    fn default() -> Self {
        Self { endpoint: None, sample_ratio: 1.0, service_name: None }
    }
}

impl TraceSettings {
    pub(super) fn read(r: &mut Reader) -> Self {
        let disabled = r.raw("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true"));
        let endpoint = r.raw("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").or_else(|| {
            r.raw("OTEL_EXPORTER_OTLP_ENDPOINT")
                .map(|base| format!("{}/v1/traces", base.trim_end_matches('/')))
        });
        let sample_ratio: f64 = r.parsed_any("OTEL_TRACES_SAMPLER_ARG", "1");
        if !(0.0..=1.0).contains(&sample_ratio) {
            r.problems
                .push(format!("OTEL_TRACES_SAMPLER_ARG must be in 0..=1 (got {sample_ratio})"));
        }
        Self {
            endpoint: endpoint.filter(|_| !disabled),
            sample_ratio: sample_ratio.clamp(0.0, 1.0),
            service_name: r.raw("OTEL_SERVICE_NAME"),
        }
    }
}
