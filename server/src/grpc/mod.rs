//! The gRPC services, over the same state, engine path, token keys, admission and metrics as the HTTP APIs: on
//! `grpc_inference_address` KServe v2's `inference.GRPCInferenceService` (Triton's clients) and TorchServe's
//! `InferenceAPIsService`, on `grpc_management_address` TorchServe's `ManagementAPIsService`.
//!
//! Every call goes through [`unary`] (or, for a stream, [`admit`] per message): the API's token from the
//! `authorization: Bearer <key>` metadata (health calls need none), a place among `max_inflight_requests` for an
//! inference, the deadline (`grpc-timeout`, or `x-request-timeout-ms` metadata, the shorter), the handler, then
//! the answer counted in the API's response metrics and an error turned into its gRPC status ([`status`]).
//!
//! A connection past `max_connections` is refused with `UNAVAILABLE` calls and a GOAWAY ([`refuse`]).
//!
//! HTTP/2 limits ([`http2`]): messages up to `max_request_size` in and `max_response_size` out,
//! [`MAX_CONCURRENT_STREAMS`] calls at once per connection, a keepalive ping every [`KEEPALIVE_INTERVAL`] that
//! closes a connection whose peer does not answer within [`KEEPALIVE_TIMEOUT`].

mod kserve;
mod refuse;
mod status;
mod torchserve;

use std::{convert::Infallible, future::Future, pin::Pin, sync::Arc, time::Duration};

use hyper::{body::Incoming, Request, Response};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::sync::OwnedSemaphorePermit;
use tonic::{metadata::MetadataMap, server::NamedService};

use crate::{auth::bearer_token, config::Api, error::ApiError, infer::timeout_ms, state::AppState};
pub(crate) use refuse::refuse;

/// Calls at once on one HTTP/2 connection (`SETTINGS_MAX_CONCURRENT_STREAMS`); inference calls past
/// `max_inflight_requests` are refused anyway.
pub(crate) const MAX_CONCURRENT_STREAMS: u32 = 1024;

/// How long a connection may be idle before the server pings it.
pub(crate) const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(60);

/// How long the server waits for the answer to its ping before it closes the connection.
pub(crate) const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// The connection settings of the gRPC listeners: HTTP/2 only, with the limits above.
pub(crate) fn http2() -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new()).http2_only();
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        .keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT);
    builder
}

/// The gRPC services of `api` over `state`, with the message size limits of its configuration.
pub(crate) fn routes(state: &Arc<AppState>, api: Api) -> Routes {
    let limits = Limits { decode: state.config.max_request_size, encode: state.config.max_response_size };
    match api {
        Api::Inference => {
            Routes::default().add(kserve::service(state, limits)).add(torchserve::inference(state, limits))
        }
        Api::Management | Api::Metrics => Routes::default().add(torchserve::management(state, limits)),
    }
}

/// What a call's answer comes from.
type RouteFuture = Pin<Box<dyn Future<Output = Result<Response<tonic::body::Body>, Infallible>> + Send>>;

/// Runs a call on one service.
type Route = Arc<dyn Fn(Request<Incoming>) -> RouteFuture + Send + Sync>;

/// The services of one listener, each called for the paths under its name (`/<package>.<Service>/<Method>`); a
/// path that no service serves is answered `UNIMPLEMENTED`, as tonic's and grpc-core's servers answer it.
#[derive(Clone, Default)]
pub(crate) struct Routes {
    services: Vec<(String, Route)>,
}

impl Routes {
    /// `service` added, for the paths under its name.
    fn add<S>(mut self, service: S) -> Self
    where
        S: NamedService
            + tonic::codegen::Service<Request<Incoming>, Response = Response<tonic::body::Body>, Error = Infallible>
            + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
    {
        let route: Route = Arc::new(move |request| {
            let mut service = service.clone();
            Box::pin(async move {
                std::future::poll_fn(|cx| service.poll_ready(cx)).await?;
                service.call(request).await
            })
        });
        self.services.push((format!("/{}/", S::NAME), route));
        self
    }
}

impl hyper::service::Service<Request<Incoming>> for Routes {
    type Response = Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = RouteFuture;

    fn call(&self, request: Request<Incoming>) -> Self::Future {
        let path = request.uri().path();
        match self.services.iter().find(|(prefix, _)| path.starts_with(prefix.as_str())) {
            Some((_, route)) => route(request),
            None => {
                let status = tonic::Status::unimplemented(format!("no service here serves {path}"));
                Box::pin(std::future::ready(Ok(status.into_http())))
            }
        }
    }
}

/// The largest messages a service reads and writes.
#[derive(Debug, Clone, Copy)]
struct Limits {
    decode: usize,
    encode: usize,
}

/// What a call is, for its admission.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// A health check: no token needed.
    Health,
    /// An inference: it takes a place among `max_inflight_requests`.
    Infer,
    /// Anything else.
    Other,
}

/// Checks a call's token and, for an inference, takes its place among the requests in flight (held until the
/// permit drops).
///
/// # Errors
/// 401 for a missing, wrong or expired key; 429 when `max_inflight_requests` are in flight already.
fn admit(
    state: &Arc<AppState>,
    api: Api,
    metadata: &MetadataMap,
    kind: Kind,
) -> Result<Option<OwnedSemaphorePermit>, ApiError> {
    if let Some(tokens) = &state.keys {
        // The health paths of the HTTP API stand for the health calls.
        let path = if kind == Kind::Health { "/ping" } else { "" };
        let given = metadata.get("authorization").and_then(|v| v.to_str().ok()).and_then(bearer_token);
        tokens.check_token(api, path, given)?;
    }
    if kind != Kind::Infer {
        return Ok(None);
    }
    match Arc::clone(&state.inflight).try_acquire_owned() {
        Ok(permit) => Ok(Some(permit)),
        Err(_) => {
            state.metrics.refuse(api, "too_many_requests");
            let limit = state.config.max_inflight_requests;
            Err(ApiError::too_many_requests(format!("{limit} requests are in flight already, retry later")))
        }
    }
}

/// The call's deadline: `grpc-timeout`, or ferroserve's `x-request-timeout-ms` metadata, whichever is shorter.
///
/// # Errors
/// 400 for a value of either that is not a timeout.
fn deadline(metadata: &MetadataMap) -> Result<Option<Duration>, ApiError> {
    let grpc = metadata.get("grpc-timeout").map(|v| grpc_timeout(v.as_bytes())).transpose()?;
    let ours = timeout_ms(metadata.get("x-request-timeout-ms").map(|v| v.as_bytes()))?;
    Ok(match (grpc, ours) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    })
}

/// gRPC's `grpc-timeout`: up to 8 digits and a unit (`H`, `M`, `S`, `m`, `u`, `n`).
fn grpc_timeout(value: &[u8]) -> Result<Duration, ApiError> {
    let bad = || ApiError::bad_request("grpc-timeout must be up to 8 digits and a unit (H, M, S, m, u or n)");
    let (digits, unit) = value.split_last().map(|(u, d)| (d, *u)).ok_or_else(bad)?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return Err(bad());
    }
    let n: u64 = std::str::from_utf8(digits).ok().and_then(|d| d.parse().ok()).ok_or_else(bad)?;
    match unit {
        b'H' => Ok(Duration::from_secs(n * 3600)),
        b'M' => Ok(Duration::from_secs(n * 60)),
        b'S' => Ok(Duration::from_secs(n)),
        b'm' => Ok(Duration::from_millis(n)),
        b'u' => Ok(Duration::from_micros(n)),
        b'n' => Ok(Duration::from_nanos(n)),
        _ => Err(bad()),
    }
}

/// Runs one unary call of `api`: admission, deadline, `work` (given the call's metadata, message and deadline),
/// and the answer counted and turned into gRPC's.
async fn unary<M, R, F, W>(
    state: &Arc<AppState>,
    api: Api,
    kind: Kind,
    request: tonic::Request<M>,
    work: W,
) -> Result<tonic::Response<R>, tonic::Status>
where
    W: FnOnce(MetadataMap, M, Option<Duration>) -> F,
    F: Future<Output = Result<R, ApiError>>,
{
    let (metadata, _, message) = request.into_parts();
    let result = admitted(state, api, &metadata, kind, |timeout| work(metadata.clone(), message, timeout)).await;
    answer(state, api, result)
}

/// Admits a call of `api` (see [`admit`]) and runs `work` within its deadline, holding its place in flight
/// until `work` is done.
async fn admitted<R, F>(
    state: &Arc<AppState>,
    api: Api,
    metadata: &MetadataMap,
    kind: Kind,
    work: impl FnOnce(Option<Duration>) -> F,
) -> Result<R, ApiError>
where
    F: Future<Output = Result<R, ApiError>>,
{
    let permit = admit(state, api, metadata, kind)?;
    let result = work(deadline(metadata)?).await;
    drop(permit);
    result
}

/// `result` counted in the API's response metrics, and an error as its gRPC status.
fn answer<R>(state: &AppState, api: Api, result: Result<R, ApiError>) -> Result<tonic::Response<R>, tonic::Status> {
    match result {
        Ok(message) => {
            state.metrics.count_response(api, hyper::StatusCode::OK);
            Ok(tonic::Response::new(message))
        }
        Err(e) => {
            state.metrics.count_response(api, e.status);
            Err(status::of(&e))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_are_read_in_every_unit() {
        let read = |v: &str| grpc_timeout(v.as_bytes()).ok();
        assert_eq!(read("2H"), Some(Duration::from_secs(7200)));
        assert_eq!(read("3M"), Some(Duration::from_secs(180)));
        assert_eq!(read("4S"), Some(Duration::from_secs(4)));
        assert_eq!(read("250m"), Some(Duration::from_millis(250)));
        assert_eq!(read("99999999u"), Some(Duration::from_micros(99_999_999)));
        assert_eq!(read("7n"), Some(Duration::from_nanos(7)));
        for bad in ["", "m", "123456789m", "10x", "-1S", "1.5S", "10"] {
            assert_eq!(read(bad), None, "{bad}");
        }
    }

    #[test]
    fn the_shorter_of_the_two_deadlines_wins() {
        let mut metadata = MetadataMap::new();
        assert_eq!(deadline(&metadata).ok(), Some(None));
        metadata.insert("grpc-timeout", tonic::metadata::MetadataValue::from_static("500m"));
        assert_eq!(deadline(&metadata).ok(), Some(Some(Duration::from_millis(500))));
        metadata.insert("x-request-timeout-ms", tonic::metadata::MetadataValue::from_static("200"));
        assert_eq!(deadline(&metadata).ok(), Some(Some(Duration::from_millis(200))));
        metadata.insert("x-request-timeout-ms", tonic::metadata::MetadataValue::from_static("0"));
        assert_eq!(deadline(&metadata).map_err(|e| e.status).err(), Some(hyper::StatusCode::BAD_REQUEST));
    }
}
