//! OpenTelemetry traces, exported over OTLP/gRPC (tonic) when an endpoint is configured. Each request becomes a
//! server span (`request`, or the gRPC method), continued from the client's W3C `traceparent` when it sent one;
//! a request a model answered gets two children, its wait in the queue (`queue`) and the batch it ran in
//! (`inference`, with the batch's size and id), whose times the engine measured. The spans are made once the
//! answer is known, from those times, so an unsampled request costs one sampling decision.
//!
//! Spans go to the SDK's batch processor: a bounded queue (spans past it are dropped) drained by a thread of its
//! own, which exports every half second or 512 spans. A collector that is down, slow or refusing makes exports
//! fail there, never in a request. What is lost is counted ([`ExportFailures`]): failed exports in
//! `ferroserve_otlp_export_failures_total`, and their spans, and those dropped with the queue full, in
//! `ferroserve_otlp_spans_dropped_total{reason="export_failed"|"queue_full"}`.

use std::{
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::{Duration, SystemTime},
};

use opentelemetry::{
    propagation::{Extractor, TextMapPropagator as _},
    trace::{Span as _, SpanKind, TraceContextExt as _, Tracer as _},
    Context, KeyValue,
};
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::{
    error::OTelSdkResult,
    propagation::TraceContextPropagator,
    trace::{
        BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracer, SdkTracerProvider, SpanData, SpanExporter,
        SpanProcessor,
    },
    Resource,
};
use prometheus::IntCounter;

use crate::exchange::{Exchange, Outcome, Served};

/// Spans waiting for export at most; past this they are dropped.
const QUEUE: usize = 8192;
/// How long an export may take before it is abandoned.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);

/// Why tracing could not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot export traces to {endpoint} (otlp_endpoint): {source}")]
pub struct TraceError {
    endpoint: String,
    source: opentelemetry_otlp::ExporterBuildError,
}

/// The exporter of the server's traces.
#[derive(Debug)]
pub struct Traces {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
    propagator: TraceContextPropagator,
}

impl Traces {
    /// Starts exporting to `endpoint` (OTLP/gRPC), recording `ratio` of the traces that start here; a client's
    /// `traceparent` decides for its own trace. Must run inside a tokio runtime: the exporter's connection lives
    /// on it.
    ///
    /// What is lost is counted in `failures`.
    ///
    /// # Errors
    /// When `endpoint` is not a URL the exporter takes.
    pub fn start(endpoint: &str, ratio: f64, failures: ExportFailures) -> Result<Self, TraceError> {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint)
            .with_timeout(EXPORT_TIMEOUT)
            .build()
            .map_err(|source| TraceError { endpoint: endpoint.to_string(), source })?;
        let pending = Pending::default();
        let exporter = Counted { inner: exporter, pending: Arc::clone(&pending), failures: failures.clone() };
        let batching = BatchConfigBuilder::default()
            .with_max_queue_size(QUEUE)
            .with_scheduled_delay(Duration::from_millis(500))
            .build();
        let batches = BatchSpanProcessor::builder(exporter).with_batch_config(batching).build();
        let provider = SdkTracerProvider::builder()
            .with_span_processor(Bounded { inner: batches, pending, failures })
            .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(ratio))))
            .with_resource(Resource::builder().with_service_name("ferroserve").build())
            .build();
        let tracer = opentelemetry::trace::TracerProvider::tracer(&provider, "ferroserve");
        Ok(Self { provider, tracer, propagator: TraceContextPropagator::new() })
    }

    /// Records the spans of one request (nothing when its trace is not sampled).
    pub fn record(&self, exchange: &Exchange, outcome: &Outcome) {
        let parent = match &exchange.trace_headers {
            Some(headers) => self.propagator.extract(&TraceHeaders(headers)),
            None => Context::new(),
        };
        let name = if exchange.protocol == "gRPC" { exchange.path.as_str() } else { "request" };
        let mut attributes = vec![
            KeyValue::new("http.request.method", exchange.method.clone()),
            KeyValue::new("url.path", exchange.path.clone()),
            KeyValue::new("http.response.status_code", i64::from(outcome.status)),
            KeyValue::new("ferroserve.request_id", exchange.request_id.clone()),
        ];
        if let Some(code) = outcome.grpc_status {
            attributes.push(KeyValue::new("rpc.grpc.status_code", i64::from(code)));
        }
        if let Some(served) = &outcome.served {
            attributes.extend(model_attributes(served));
        }
        let span = self
            .tracer
            .span_builder(name.to_string())
            .with_kind(SpanKind::Server)
            .with_start_time(exchange.started)
            .with_attributes(attributes)
            .start_with_context(&self.tracer, &parent);
        if !span.span_context().is_sampled() {
            return;
        }
        let context = parent.with_span(span);
        if let Some(served) = &outcome.served {
            self.children(&context, exchange, served);
        }
        context.span().end_with_timestamp(exchange.started + outcome.latency);
    }

    /// The `queue` and `inference` spans of a request `served` answered, under `context`'s span.
    fn children(&self, context: &Context, exchange: &Exchange, served: &Served) {
        let answered = exchange.started + served.answered.saturating_duration_since(exchange.start);
        let dispatched = answered.checked_sub(served.timing.inference).unwrap_or(exchange.started);
        let queued = dispatched.checked_sub(served.timing.queue).unwrap_or(exchange.started);
        let child = |name: &'static str, start: SystemTime, end: SystemTime, attributes: Vec<KeyValue>| {
            let mut span = self
                .tracer
                .span_builder(name)
                .with_kind(SpanKind::Internal)
                .with_start_time(start)
                .with_attributes(attributes)
                .start_with_context(&self.tracer, context);
            span.end_with_timestamp(end);
        };
        child("queue", queued, dispatched, model_attributes(served));
        let mut batch = model_attributes(served);
        batch.push(KeyValue::new("ferroserve.worker", i64::try_from(served.timing.worker).unwrap_or(i64::MAX)));
        child("inference", dispatched, answered, batch);
    }

    /// Exports what is queued, waiting for the collector (for tests and the end of a benchmark).
    ///
    /// # Errors
    /// When the export fails.
    pub fn flush(&self) -> Result<(), String> {
        self.provider.force_flush().map_err(|e| e.to_string())
    }

    /// Exports what is queued and stops the exporter; spans recorded later are dropped.
    pub fn shutdown(&self) {
        if let Err(error) = self.provider.shutdown() {
            tracing::warn!(%error, "the last traces could not be exported");
        }
    }
}

/// What the exporter lost, as the metrics count it.
#[derive(Debug, Clone)]
pub struct ExportFailures {
    /// Exports that failed (`ferroserve_otlp_export_failures_total`).
    pub exports: IntCounter,
    /// Spans lost in those exports (`ferroserve_otlp_spans_dropped_total{reason="export_failed"}`).
    pub failed: IntCounter,
    /// Spans dropped because the export queue was full (`ferroserve_otlp_spans_dropped_total{reason="queue_full"}`).
    pub queue_full: IntCounter,
}

impl ExportFailures {
    /// New counters, registered in `registry`.
    ///
    /// # Errors
    /// When a counter of the same name is registered already.
    pub fn register(registry: &prometheus::Registry) -> prometheus::Result<Self> {
        let exports = IntCounter::new(
            "ferroserve_otlp_export_failures_total",
            "OTLP trace exports that failed (collector down, slow or refusing); requests never wait for them.",
        )?;
        let dropped = prometheus::IntCounterVec::new(
            prometheus::Opts::new("ferroserve_otlp_spans_dropped_total", "Spans never exported, by reason."),
            &["reason"],
        )?;
        registry.register(Box::new(exports.clone()))?;
        registry.register(Box::new(dropped.clone()))?;
        let (failed, queue_full) =
            (dropped.with_label_values(&["export_failed"]), dropped.with_label_values(&["queue_full"]));
        Ok(Self { exports, failed, queue_full })
    }
}

/// The spans handed to the batch processor and not yet through an export: at most [`QUEUE`], so that the
/// processor's own queue (of that size) never overflows uncounted.
type Pending = Arc<AtomicUsize>;

/// The batch processor, with the spans it is handed counted and, past [`QUEUE`] waiting, dropped and counted.
#[derive(Debug)]
struct Bounded {
    inner: BatchSpanProcessor,
    pending: Pending,
    failures: ExportFailures,
}

impl SpanProcessor for Bounded {
    fn on_start(&self, span: &mut opentelemetry_sdk::trace::Span, context: &Context) {
        self.inner.on_start(span, context);
    }

    fn on_end(&self, span: SpanData) {
        if !span.span_context.is_sampled() {
            return;
        }
        if self.pending.fetch_add(1, Ordering::Relaxed) >= QUEUE {
            self.pending.fetch_sub(1, Ordering::Relaxed);
            self.failures.queue_full.inc();
            return;
        }
        self.inner.on_end(span);
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// An exporter whose exports leave the pending count, and whose failed exports are counted.
#[derive(Debug)]
struct Counted<E> {
    inner: E,
    pending: Pending,
    failures: ExportFailures,
}

impl<E: SpanExporter> SpanExporter for Counted<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let spans = batch.len();
        let result = self.inner.export(batch).await;
        self.pending.fetch_sub(spans, Ordering::Relaxed);
        if result.is_err() {
            self.failures.exports.inc();
            self.failures.failed.inc_by(spans as u64);
        }
        result
    }

    fn shutdown_with_timeout(&mut self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// The attributes that name the model and batch of a request.
fn model_attributes(served: &Served) -> Vec<KeyValue> {
    let int = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
    vec![
        KeyValue::new("ferroserve.model", served.model.clone()),
        KeyValue::new("ferroserve.model_version", served.version.clone()),
        KeyValue::new("ferroserve.batch_size", int(served.timing.batch_size as u64)),
        KeyValue::new("ferroserve.batch_id", int(served.timing.batch_id)),
    ]
}

/// A request's `traceparent` and `tracestate`, as the propagator reads them.
struct TraceHeaders<'a>(&'a (hyper::header::HeaderValue, Option<hyper::header::HeaderValue>));

impl Extractor for TraceHeaders<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        match key {
            "traceparent" => self.0 .0.to_str().ok(),
            "tracestate" => self.0 .1.as_ref().and_then(|v| v.to_str().ok()),
            _ => None,
        }
    }

    fn keys(&self) -> Vec<&str> {
        vec!["traceparent", "tracestate"]
    }
}
