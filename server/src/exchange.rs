//! One request and its answer as the access log and the traces see them: who asked what ([`Exchange`]), how it
//! ended ([`Outcome`]) and, when a model answered it, which model and batch did ([`Served`]). The handlers say
//! which model served a request with [`served`], wherever in the request's task they learn it; the transport
//! collects it with [`watch`]. A leaf: it imports nothing of the server above it.

use std::{
    future::Future,
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use ferroserve_engine::{request::Timing, Model};
use hyper::{header::HeaderValue, HeaderMap};
use parking_lot::Mutex;

/// The client's address, put in each request's extensions by the transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAddr(pub SocketAddr);

/// The model that answered a request, and the batch its sample ran in.
#[derive(Debug, Clone)]
pub struct Served {
    /// The model's name.
    pub model: String,
    /// The version that answered.
    pub version: String,
    /// Queue and inference times, batch size and id, worker.
    pub timing: Timing,
    /// When the answer came back from the worker (monotonic).
    pub answered: Instant,
}

tokio::task_local! {
    /// Where [`served`] leaves what it learns, for the [`watch`] around the request.
    static SERVED: Arc<Mutex<Option<Served>>>;
}

/// Records that `model` answered the current request with `timing`: for the access log and the traces (when the
/// request runs under [`watch`]) and in the current span's `model` and `worker` fields (the request's span).
pub fn served(model: &Model, timing: Timing) {
    let span = tracing::Span::current();
    span.record("model", model.name());
    span.record("worker", timing.worker);
    tracing::debug!(
        batch_size = timing.batch_size,
        batch_id = timing.batch_id,
        queue_us = u64::try_from(timing.queue.as_micros()).unwrap_or(u64::MAX),
        inference_us = u64::try_from(timing.inference.as_micros()).unwrap_or(u64::MAX),
        "answered"
    );
    let _ = SERVED.try_with(|slot| {
        *slot.lock() = Some(Served {
            model: model.name().to_string(),
            version: model.version().to_string(),
            timing,
            answered: Instant::now(),
        });
    });
}

/// Runs `work`, and returns its output with what [`served`] recorded meanwhile in the same task.
pub async fn watch<F: Future>(work: F) -> (F::Output, Option<Served>) {
    let slot = Arc::new(Mutex::new(None));
    let output = SERVED.scope(Arc::clone(&slot), work).await;
    let served = slot.lock().take();
    (output, served)
}

/// What the access log and the traces know of a request when it arrives.
#[derive(Debug, Clone)]
pub struct Exchange {
    /// When it arrived (wall clock, for the log line and the spans).
    pub started: SystemTime,
    /// When it arrived (monotonic, for its latency).
    pub start: Instant,
    /// The client's address, when the transport knows it.
    pub peer: Option<SocketAddr>,
    /// `HTTP/1.1`, `HTTP/2.0` or `gRPC`.
    pub protocol: &'static str,
    /// The HTTP method (`POST` for a gRPC call).
    pub method: String,
    /// The path: for gRPC, `/<service>/<method>`.
    pub path: String,
    /// Its `x-request-id`.
    pub request_id: String,
    /// The client's W3C `traceparent` and `tracestate`, when it sent them.
    pub trace_headers: Option<(HeaderValue, Option<HeaderValue>)>,
}

impl Exchange {
    /// The exchange of `req`, arriving now over `protocol` (`gRPC`, else the request's HTTP version).
    #[must_use]
    pub fn begin<B>(req: &hyper::Request<B>, protocol: &'static str, request_id: &str) -> Self {
        let protocol = match (protocol, req.version()) {
            ("gRPC", _) => "gRPC",
            (_, hyper::Version::HTTP_2) => "HTTP/2.0",
            (_, hyper::Version::HTTP_10) => "HTTP/1.0",
            _ => "HTTP/1.1",
        };
        Self {
            started: SystemTime::now(),
            start: Instant::now(),
            peer: req.extensions().get::<ClientAddr>().map(|a| a.0),
            protocol,
            method: req.method().to_string(),
            path: req.uri().path().to_string(),
            request_id: request_id.to_string(),
            trace_headers: trace_headers(req.headers()),
        }
    }
}

/// The client's `traceparent` (and `tracestate`), when it sent one.
fn trace_headers(headers: &HeaderMap) -> Option<(HeaderValue, Option<HeaderValue>)> {
    let parent = headers.get("traceparent")?.clone();
    Some((parent, headers.get("tracestate").cloned()))
}

/// How a request ended.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The HTTP status.
    pub status: u16,
    /// The gRPC status code, for a gRPC call.
    pub grpc_status: Option<i32>,
    /// Bytes of the response body.
    pub bytes: u64,
    /// From arrival to the answer (HTTP: its head and whole body ready; gRPC: its last frame sent).
    pub latency: Duration,
    /// The model and batch that answered it, if one did.
    pub served: Option<Served>,
}
