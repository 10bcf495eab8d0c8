//! What the server tells the outside of each request: its access log line and its trace ([`Observer`]), fed by
//! the router for HTTP and by [`Grpc`] around the gRPC services. Both are off unless configured, and then cost a
//! request a few allocations and a channel send: writing and exporting happen on threads of their own.

use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use hyper::{
    body::{Body, Frame, Incoming, SizeHint},
    service::Service,
    Request, Response,
};
use tracing::Instrument as _;

use crate::{
    access_log::AccessLog,
    exchange::{Exchange, Outcome, ServedSlot},
    obs_config::ObsConfig,
    traces::{ExportFailures, Traces},
};

/// How long a stopping server waits for the access log's last lines to be written.
const SHUTDOWN_FLUSH: std::time::Duration = std::time::Duration::from_secs(10);

/// The access log and the trace exporter, each when configured.
#[derive(Debug, Default)]
pub struct Observer {
    access_log: Option<AccessLog>,
    traces: Option<Traces>,
}

/// Why the observer could not start.
#[derive(Debug, thiserror::Error)]
pub enum ObserveError {
    /// The access log file cannot be opened.
    #[error("cannot open the access log (access_log): {0}")]
    AccessLog(#[from] std::io::Error),
    /// The trace exporter cannot start.
    #[error(transparent)]
    Traces(#[from] crate::traces::TraceError),
    /// The access log's or the exporter's counters cannot be registered.
    #[error("cannot register the access log's or the trace exporter's metrics: {0}")]
    Metric(#[from] prometheus::Error),
}

impl Observer {
    /// The access log and traces `config` asks for (the endpoint of [`ObsConfig::endpoint`], so
    /// `OTEL_EXPORTER_OTLP_ENDPOINT` counts), with the access log's dropped lines counted in `registry`. Must
    /// run inside a tokio runtime when traces are on.
    ///
    /// # Errors
    /// When the access log cannot be opened or the exporter cannot start.
    pub fn start(config: &ObsConfig, registry: &prometheus::Registry) -> Result<Self, ObserveError> {
        let dropped = prometheus::IntCounter::new(
            "ferroserve_access_log_dropped_total",
            "Access log lines dropped because the writer fell behind.",
        )?;
        let access_log = AccessLog::open(&config.access_log, dropped.clone())?;
        if access_log.is_some() {
            registry.register(Box::new(dropped))?;
        }
        let traces = match config.endpoint(|name| std::env::var(name).ok()) {
            Some(endpoint) => {
                tracing::info!(endpoint, ratio = config.otlp_sampling_ratio, "exporting traces over OTLP/gRPC");
                let failures = ExportFailures::register(registry)?;
                Some(Traces::start(&endpoint, config.otlp_sampling_ratio, failures)?)
            }
            None => None,
        };
        Ok(Self { access_log, traces })
    }

    /// An observer with this access log and these traces.
    #[must_use]
    pub fn new(access_log: Option<AccessLog>, traces: Option<Traces>) -> Self {
        Self { access_log, traces }
    }

    /// Whether anything watches the requests.
    #[must_use]
    pub fn is_on(&self) -> bool {
        self.access_log.is_some() || self.traces.is_some()
    }

    /// Logs and traces one finished request.
    pub fn finish(&self, exchange: &Exchange, outcome: &Outcome) {
        if let Some(log) = &self.access_log {
            log.record(exchange, outcome);
        }
        if let Some(traces) = &self.traces {
            traces.record(exchange, outcome);
        }
    }

    /// Exports the traces queued so far (see [`Traces::flush`]); nothing when traces are off.
    ///
    /// # Errors
    /// When the export fails.
    pub fn flush_traces(&self) -> Result<(), String> {
        self.traces.as_ref().map_or(Ok(()), Traces::flush)
    }

    /// Writes out the access log's lines so far and stops the trace exporter after a last export: what a server
    /// does once its connections are drained, before it exits.
    pub fn shutdown(&self) {
        if let Some(log) = &self.access_log {
            if !log.flush(SHUTDOWN_FLUSH) {
                tracing::warn!("the access log's last lines could not be written within {SHUTDOWN_FLUSH:?}");
            }
        }
        if let Some(traces) = &self.traces {
            traces.shutdown();
        }
    }
}

/// A gRPC service observed: each call runs in a `request` span (its `x-request-id`, else a new one; the model and
/// worker once known), and, with the access log or traces on, gets its line and trace once its last frame is
/// sent (or the call is dropped).
#[derive(Debug, Clone)]
pub struct Grpc<S> {
    inner: S,
    observer: Arc<Observer>,
}

impl<S> Grpc<S> {
    /// `inner`, observed by `observer`.
    pub fn new(inner: S, observer: Arc<Observer>) -> Self {
        Self { inner, observer }
    }
}

impl<S, B> Service<Request<Incoming>> for Grpc<S>
where
    S: Service<Request<Incoming>, Response = Response<B>>,
    S::Future: Send + 'static,
    B: Body + Unpin,
{
    type Response = Response<Observed<B>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        let id = req.headers().get("x-request-id").and_then(|v| v.to_str().ok()).map_or_else(new_id, str::to_string);
        let span = tracing::info_span!(
            "request",
            id = %id,
            api = "gRPC",
            method = %req.method(),
            path = %req.uri().path(),
            model = tracing::field::Empty,
            worker = tracing::field::Empty,
        );
        if !self.observer.is_on() {
            let call = self.inner.call(req).instrument(span);
            return Box::pin(async move { Ok(call.await?.map(|body| Observed { body, pending: None })) });
        }
        let exchange = Exchange::begin(&req, "gRPC", &id);
        let slot = ServedSlot::default();
        let call = self.inner.call(req).instrument(span);
        let observer = Arc::clone(&self.observer);
        Box::pin(async move {
            let response = slot.scope(call).await?;
            let status = response.status().as_u16();
            let grpc_status = response.headers().get("grpc-status").and_then(|v| v.to_str().ok()?.parse().ok());
            let pending = Pending { observer, exchange, status, grpc_status, slot, bytes: 0 };
            Ok(response.map(|body| Observed { body, pending: Some(pending) }))
        })
    }
}

/// A fresh request id, for a gRPC call that brings none.
fn new_id() -> String {
    uuid::Uuid::new_v4().hyphenated().to_string()
}

/// What is known of a call until its body ends.
#[derive(Debug)]
struct Pending {
    observer: Arc<Observer>,
    exchange: Exchange,
    status: u16,
    grpc_status: Option<i32>,
    /// What the call's model recorded; a stream's answers, computed on a task the call started, record in it too
    /// ([`crate::exchange::carry`]), so it is read when the call is over.
    slot: ServedSlot,
    bytes: u64,
}

impl Drop for Pending {
    /// The call is over: its body ended or was dropped.
    fn drop(&mut self) {
        let outcome = Outcome {
            status: self.status,
            grpc_status: self.grpc_status,
            bytes: self.bytes,
            latency: self.exchange.start.elapsed(),
            served: self.slot.take(),
        };
        self.observer.finish(&self.exchange, &outcome);
    }
}

/// A response body that counts its bytes and reads `grpc-status` from its trailers.
#[derive(Debug)]
pub struct Observed<B> {
    body: B,
    pending: Option<Pending>,
}

impl<B: Body + Unpin> Body for Observed<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let frame = Pin::new(&mut self.body).poll_frame(cx);
        if let (Poll::Ready(Some(Ok(frame))), Some(pending)) = (&frame, self.pending.as_mut()) {
            if let Some(data) = frame.data_ref() {
                pending.bytes += hyper::body::Buf::remaining(data) as u64;
            }
            if let Some(code) = frame.trailers_ref().and_then(|t| t.get("grpc-status")?.to_str().ok()?.parse().ok()) {
                pending.grpc_status = Some(code);
            }
        }
        if let Poll::Ready(None) = frame {
            self.pending = None;
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
