//! OTLP/HTTP export of finished spans, built so that a collector that is slow, down or
//! unreachable never slows or fails a request or a job:
//! - a span that ends is handed to the SDK's batch processor through a bounded queue and
//!   dropped (counted by the SDK) when the queue is full, never waited on;
//! - batches are sent from the processor's own thread, through an HTTP client that runs on
//!   a small runtime of its own ([`ExportClient`]), so neither the export nor its retries
//!   touch the threads serving requests;
//! - every send has a timeout, after which the batch is dropped.

use std::future::Future;
use std::pin::Pin;
use std::sync::OnceLock;
use std::time::Duration;

use opentelemetry_http::{Bytes, HttpClient, HttpError, Request, Response};
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::trace::{BatchConfigBuilder, BatchSpanProcessor};

/// How long one batch may take to reach the collector before it is dropped.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);
/// Spans waiting for export; beyond it new spans are dropped rather than kept in memory.
const MAX_QUEUE: usize = 8192;
/// The pause between batches unless `OTEL_BSP_SCHEDULE_DELAY` says otherwise: short, so a
/// trace shows up in the collector about a second after its last span ends.
const SCHEDULE_DELAY: Duration = Duration::from_secs(1);

/// The batch processor exporting to `endpoint` (the full OTLP/HTTP traces URL).
pub(super) fn processor(endpoint: &str) -> anyhow::Result<BatchSpanProcessor> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(endpoint)
        .with_timeout(EXPORT_TIMEOUT)
        .with_http_client(ExportClient::new()?)
        .build()?;
    // The builder's default reads the standard `OTEL_BSP_*` variables.
    let mut config = BatchConfigBuilder::default().with_max_queue_size(MAX_QUEUE);
    if std::env::var_os("OTEL_BSP_SCHEDULE_DELAY").is_none() {
        config = config.with_scheduled_delay(SCHEDULE_DELAY);
    }
    Ok(BatchSpanProcessor::builder(exporter).with_batch_config(config.build()).build())
}

/// The runtime export requests run on: one thread, shared by every exporter of the
/// process, never dropped (dropping a runtime inside another one panics).
fn runtime() -> anyhow::Result<&'static tokio::runtime::Runtime> {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    if let Some(runtime) = RUNTIME.get() {
        return Ok(runtime);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("otlp-export")
        .enable_all()
        .build()?;
    Ok(RUNTIME.get_or_init(|| runtime))
}

/// Hyper's client, driven on [`runtime`]: the batch processor calls it from a plain thread
/// (it blocks on the export future), where a Tokio-based client could not run by itself.
#[derive(Debug, Clone)]
struct ExportClient {
    inner: opentelemetry_http::hyper::HyperClient,
    runtime: tokio::runtime::Handle,
}

impl ExportClient {
    fn new() -> anyhow::Result<Self> {
        let runtime = runtime()?.handle().clone();
        let _entered = runtime.enter();
        let inner =
            opentelemetry_http::hyper::HyperClient::with_default_connector(EXPORT_TIMEOUT, None);
        Ok(Self { inner, runtime })
    }
}

impl HttpClient for ExportClient {
    fn send_bytes<'life0, 'async_trait>(
        &'life0 self,
        request: Request<Bytes>,
    ) -> Pin<Box<dyn Future<Output = Result<Response<Bytes>, HttpError>> + Send + 'async_trait>>
    where
        'life0: 'async_trait,
        Self: 'async_trait,
    {
        let inner = self.inner.clone();
        let sent = self.runtime.spawn(async move { inner.send_bytes(request).await });
        Box::pin(async move { sent.await.map_err(|err| Box::new(err) as HttpError)? })
    }
}
