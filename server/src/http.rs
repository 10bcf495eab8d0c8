//! The HTTP plumbing shared by the three APIs (inference, management, metrics): one accept loop over hyper 1
//! with TCP_NODELAY, a header-read timeout and graceful shutdown, and the helpers every handler uses.

use std::{collections::HashMap, convert::Infallible, future::Future, sync::Arc, time::Duration};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Body as _;
use hyper::{
    body::Incoming,
    header::{HeaderValue, CONTENT_LENGTH, CONTENT_TYPE},
    service::service_fn,
    Request, Response, StatusCode,
};
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::{conn::auto, graceful::GracefulShutdown},
};
use tokio::net::TcpListener;

use crate::{error::ApiError, state::AppState};

/// How long a client may take to send its request headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// A response with its whole body.
pub type Reply = Response<Full<Bytes>>;

/// Which API a listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    /// `/ping`, `/predictions`, KServe v2 (`inference_address`).
    Inference,
    /// `/models` (`management_address`).
    Management,
    /// `/metrics` (`metrics_address`).
    Metrics,
}

impl Api {
    /// Its index among the three (for per-API state).
    #[must_use]
    pub fn index(self) -> usize {
        self as usize
    }

    /// The label of this API in metrics.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Api::Inference => "inference",
            Api::Management => "management",
            Api::Metrics => "metrics",
        }
    }
}

/// Serves the inference API on `listener` until `shutdown` completes (see [`serve`]).
///
/// # Errors
/// Never at present: accept errors are logged and retried.
pub async fn run(
    listener: TcpListener,
    state: Arc<AppState>,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    serve(listener, state, Api::Inference, shutdown).await
}

/// Serves `api` on `listener` until `shutdown` completes, then lets open connections finish their requests (for
/// `shutdown_grace_period` at most).
///
/// # Errors
/// Never at present: accept errors (such as running out of file descriptors) are logged and retried.
pub async fn serve(
    listener: TcpListener,
    state: Arc<AppState>,
    api: Api,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(HEADER_READ_TIMEOUT);
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(error) => {
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let Ok(permit) = Arc::clone(&state.connections[api.index()]).try_acquire_owned() else {
            state.metrics.refuse(api, "too_many_connections");
            tokio::spawn(refuse_connection(stream));
            continue;
        };
        // Small responses must not wait for Nagle's algorithm (about 40 ms otherwise).
        if let Err(error) = stream.set_nodelay(true) {
            tracing::debug!(%error, %peer, "cannot set TCP_NODELAY");
        }
        let state = Arc::clone(&state);
        let service = service_fn(move |req| {
            let state = Arc::clone(&state);
            async move { Ok::<_, Infallible>(dispatch(req, &state, api).await) }
        });
        let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
        let conn = graceful.watch(conn.into_owned());
        tokio::spawn(async move {
            if let Err(error) = conn.await {
                tracing::debug!(%error, %peer, "connection ended with an error");
            }
            drop(permit);
        });
    }
    drop(listener);
    let grace = state.config.shutdown_grace_period;
    if tokio::time::timeout(grace, graceful.shutdown()).await.is_err() {
        tracing::warn!("some connections were still open after {grace:?}");
    }
    Ok(())
}

/// How long a refused connection may keep sending before it is closed.
const LINGER: Duration = Duration::from_secs(2);

/// Answers a connection over `max_connections` with a 503 and closes it, without parsing its request. What the
/// client still sends is read and dropped for a moment (a lingering close), so that closing with unread data
/// does not reset the connection before the client has read the 503.
async fn refuse_connection(mut stream: tokio::net::TcpStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let body = ApiError::unavailable("too many open connections, retry later").body();
    let head = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\n\
         connection: close\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    if stream.write_all(head.as_bytes()).await.is_err() || stream.write_all(&body).await.is_err() {
        return;
    }
    let _ = stream.shutdown().await;
    let mut sink = [0u8; 16 * 1024];
    let _ =
        tokio::time::timeout(LINGER, async { while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {} }).await;
}

/// Routes to the API's handlers, then applies what holds for every response: the in-flight limit of inference
/// requests, the `max_response_size` limit, `Retry-After` on overload answers, and the count of responses by
/// status class.
async fn dispatch(req: Request<Incoming>, state: &Arc<AppState>, api: Api) -> Reply {
    if let (Api::Management, "/token", Some(keys)) = (api, req.uri().path(), &state.keys) {
        let reply = crate::auth::token_api(&req, state, keys).await;
        state.metrics.count_response(api, reply.status());
        return reply;
    }
    if let Some(Err(e)) = state.keys.as_ref().map(|keys| keys.check(api, &req)) {
        state.metrics.count_response(api, e.status);
        return if req.uri().path().starts_with("/v2/") { crate::kserve::error(&e) } else { error_reply(&e) };
    }
    let reply = match api {
        Api::Inference if req.method() == hyper::Method::POST => {
            match Arc::clone(&state.inflight).try_acquire_owned() {
                Ok(_permit) => crate::inference::route(req, state).await,
                Err(_) => {
                    state.metrics.refuse(api, "too_many_requests");
                    let limit = state.config.max_inflight_requests;
                    let e = ApiError::too_many_requests(format!("{limit} requests are in flight already, retry later"));
                    let v2 = req.uri().path().starts_with("/v2/");
                    // Read the body before answering: closing a connection with unread data resets it, and the
                    // client would never see the 429.
                    let _ = read_body_timed(req, &state.config).await;
                    if v2 {
                        crate::kserve::error(&e)
                    } else {
                        error_reply(&e)
                    }
                }
            }
        }
        Api::Inference => crate::inference::route(req, state).await,
        Api::Management => crate::management::route(req, state).await,
        Api::Metrics => crate::metrics::route(&req, state),
    };
    let reply = match reply.body().size_hint().exact() {
        Some(n) if n > state.config.max_response_size as u64 => {
            let e = ApiError::internal(format!(
                "the response ({n} bytes) is larger than max_response_size ({} bytes)",
                state.config.max_response_size
            ));
            json(e.status, e.body())
        }
        _ => reply,
    };
    let mut reply = reply;
    if matches!(reply.status(), StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE) {
        reply.headers_mut().entry(hyper::header::RETRY_AFTER).or_insert(HeaderValue::from_static("1"));
    }
    // The body of a refused upload was not read: the connection cannot carry another request.
    if matches!(reply.status(), StatusCode::PAYLOAD_TOO_LARGE | StatusCode::REQUEST_TIMEOUT) {
        reply.headers_mut().insert(hyper::header::CONNECTION, HeaderValue::from_static("close"));
    }
    state.metrics.count_response(api, reply.status());
    reply
}

/// Answers an error as TorchServe does.
#[must_use]
pub fn error_reply(e: &ApiError) -> Reply {
    json(e.status, e.body())
}

/// A JSON response.
#[must_use]
pub fn json(status: StatusCode, body: Vec<u8>) -> Reply {
    with_type(status, body, "application/json")
}

/// A response with a content type.
#[must_use]
pub fn with_type(status: StatusCode, body: Vec<u8>, content_type: &'static str) -> Reply {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// A JSON response of a serialisable value.
#[must_use]
pub fn json_value(status: StatusCode, value: &impl serde::Serialize) -> Reply {
    json(status, serde_json::to_vec(value).unwrap_or_else(|_| b"{}".to_vec()))
}

/// The query string's parameters, decoded (the last value of a repeated key wins, except for `name[]` keys,
/// whose values are kept in order, joined by commas).
#[must_use]
pub fn query(req: &Request<Incoming>) -> HashMap<String, String> {
    let mut params: HashMap<String, String> = HashMap::new();
    for (key, value) in form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes()) {
        if key.ends_with("[]") {
            let entry = params.entry(key.into_owned()).or_default();
            if !entry.is_empty() {
                entry.push(',');
            }
            entry.push_str(&value);
        } else {
            params.insert(key.into_owned(), value.into_owned());
        }
    }
    params
}

/// [`read_body`] within `request_read_timeout`: a client too slow to send its body gets a 408.
///
/// # Errors
/// 408 on the timeout, and what [`read_body`] refuses.
pub async fn read_body_timed(req: Request<Incoming>, config: &crate::config::Config) -> Result<Vec<u8>, ApiError> {
    let timeout = config.request_read_timeout;
    tokio::time::timeout(timeout, read_body(req, config.max_request_size)).await.map_err(|_| {
        ApiError::request_timeout(format!("the request body did not arrive within {} s", timeout.as_secs()))
    })?
}

/// Reads the whole body into one buffer, refusing more than `limit` bytes (early, from Content-Length, when the
/// client sends it).
pub async fn read_body(req: Request<Incoming>, limit: usize) -> Result<Vec<u8>, ApiError> {
    let declared = req.headers().get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(ApiError::too_large(limit));
    }
    let capacity = declared.map_or(0, |n| usize::try_from(n).unwrap_or(limit));
    let mut buffer = Vec::with_capacity(capacity);
    let mut body = req.into_body();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| ApiError::bad_request(format!("cannot read the request body: {e}")))?;
        if let Ok(data) = frame.into_data() {
            if buffer.len() + data.len() > limit {
                return Err(ApiError::too_large(limit));
            }
            buffer.extend_from_slice(&data);
        }
    }
    Ok(buffer)
}
