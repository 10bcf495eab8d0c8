//! OpenTelemetry traces, exported over OTLP/gRPC (tonic) when an endpoint is configured. Each request becomes a
//! server span (`request`, or the gRPC method), continued from the client's W3C `traceparent` when it sent one;
//! a request a model answered gets two children, its wait in the queue (`queue`) and the batch it ran in
//! (`inference`, with the batch's size and id), whose times the engine measured. The spans are made once the
//! answer is known, from those times, so an unsampled request costs one sampling decision.
//!
//! Spans go to the SDK's batch processor: a bounded queue (spans past it are dropped) drained by a thread of its
//! own, which exports every half second or 512 spans. A collector that is down, slow or refusing makes exports
//! fail there, never in a request.

use std::time::{Duration, SystemTime};

use opentelemetry::{
    propagation::{Extractor, TextMapPropagator as _},
    trace::{Span as _, SpanKind, TraceContextExt as _, Tracer as _},
    Context, KeyValue,
};
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::{
    propagation::TraceContextPropagator,
    trace::{BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracer, SdkTracerProvider},
    Resource,
};

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
    /// # Errors
    /// When `endpoint` is not a URL the exporter takes.
    pub fn start(endpoint: &str, ratio: f64) -> Result<Self, TraceError> {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint)
            .with_timeout(EXPORT_TIMEOUT)
            .build()
            .map_err(|source| TraceError { endpoint: endpoint.to_string(), source })?;
        let batching = BatchConfigBuilder::default()
            .with_max_queue_size(QUEUE)
            .with_scheduled_delay(Duration::from_millis(500))
            .build();
        let provider = SdkTracerProvider::builder()
            .with_span_processor(BatchSpanProcessor::builder(exporter).with_batch_config(batching).build())
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
