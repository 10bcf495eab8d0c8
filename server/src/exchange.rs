//! One request and its answer as the access log and the traces see them: who asked what ([`Exchange`]), how it
//! ended ([`Outcome`]) and, when a model answered it, which model and batch did ([`Served`]). The handlers say
//! which model served a request with [`served`], wherever in the request's task they learn it; the transport
//! collects it with [`watch`] (or a [`ServedSlot`] read when a stream ends), and [`carry`] takes it, with the
//! request's span, into a task the request starts. A leaf: it imports nothing of the server above it.

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

/// Where [`served`] leaves what it learns while a request's work runs in [`ServedSlot::scope`]: read once the
/// request is over, which for a stream is when its last answer is sent.
#[derive(Debug, Clone, Default)]
pub struct ServedSlot(Arc<Mutex<Option<Served>>>);

impl ServedSlot {
    /// Runs `work` with what [`served`] records in it (and in the tasks it starts through [`carry`]) left here.
    pub async fn scope<F: Future>(&self, work: F) -> F::Output {
        SERVED.scope(Arc::clone(&self.0), work).await
    }

    /// What [`served`] recorded last, if anything.
    #[must_use]
    pub fn take(&self) -> Option<Served> {
        self.0.lock().take()
    }
}

/// `work`, to be run on a task of its own (`tokio::spawn`), made part of the current request: it runs in the
/// current span, and what [`served`] records in it goes to the current request's [`watch`] or [`ServedSlot`].
/// For the answers of a gRPC stream, computed on a task of their own.
pub fn carry<F: Future>(work: F) -> impl Future<Output = F::Output> {
    let span = tracing::Span::current();
    let slot = SERVED.try_with(Arc::clone).ok();
    async move {
        let work = tracing::Instrument::instrument(work, span);
        match slot {
            Some(slot) => SERVED.scope(slot, work).await,
            None => work.await,
        }
    }
}

/// The model a request's path names, when it names one: `/predictions/{model}`, `/explanations/{model}`,
/// `/v2/models/{model}/...`, `/models/{model}` (management) and `/v1/models/{model}:verb`; so that a request's
/// log lines carry its model before a model has answered it.
#[must_use]
pub fn model_in_path(path: &str) -> Option<&str> {
    let mut parts = path.trim_start_matches('/').split('/');
    let model = match (parts.next()?, parts.next()?) {
        ("predictions" | "explanations" | "models", model) => model,
        ("v1" | "v2", "models") => parts.next()?,
        _ => return None,
    };
    let model = model.split_once(':').map_or(model, |(name, _)| name);
    (!model.is_empty()).then_some(model)
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
    let slot = ServedSlot::default();
    let output = slot.scope(work).await;
    (output, slot.take())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_model_is_read_from_the_paths_that_name_one() {
        for (path, model) in [
            ("/predictions/signnet", Some("signnet")),
            ("/predictions/signnet/2.0", Some("signnet")),
            ("/explanations/m", Some("m")),
            ("/v2/models/m/versions/1/infer", Some("m")),
            ("/v2/models/m/ready", Some("m")),
            ("/v1/models/m:predict", Some("m")),
            ("/models/m", Some("m")),
            ("/models", None),
            ("/predictions/", None),
            ("/ping", None),
            ("/v2/health/ready", None),
        ] {
            assert_eq!(model_in_path(path), model, "{path}");
        }
    }

    #[tokio::test]
    async fn what_a_carried_task_records_reaches_the_requests_watch() {
        let timing = Timing {
            queue: Duration::from_millis(1),
            inference: Duration::from_millis(2),
            batch_size: 3,
            batch_id: 9,
            worker: 1,
        };
        let record = move || {
            let _ = SERVED.try_with(|slot| {
                *slot.lock() =
                    Some(Served { model: "m".into(), version: "1.0".into(), timing, answered: Instant::now() });
            });
        };
        let slot = ServedSlot::default();
        slot.scope(async move { tokio::spawn(carry(async move { record() })).await.expect("the task") }).await;
        let served = slot.take().expect("recorded from the other task");
        assert_eq!((served.model.as_str(), served.timing.batch_size), ("m", 3));
        let lost = ServedSlot::default();
        lost.scope(async move { tokio::spawn(async move { record() }).await.expect("the task") }).await;
        assert!(lost.take().is_none(), "without carry, a spawned task records nothing");
    }
}
