//! The router: what holds for every request of every API, decided once, before and after its handler. The
//! protocol (TorchServe's or KServe v2's, which chooses the error body) is decided from the path; then the token
//! check, the in-flight limit of inference requests, the handler of the API, the `max_response_size` limit,
//! `Retry-After` on overload answers and the count of responses by status class. Each request has an id (the
//! client's `x-request-id`, else a new UUID) sent back in `x-request-id`, and runs in a `request` span (INFO)
//! that names it and the model its path names (and the worker that answered it, once known), the parent of its
//! span in the engine's queue. When the access log or traces are on, the finished request goes to
//! [`crate::observe::Observer`].

use std::sync::Arc;

use hyper::{
    body::{Body as _, Incoming},
    header::{HeaderValue, CONNECTION, RETRY_AFTER},
    Method, Request, StatusCode,
};
use tracing::Instrument as _;

use crate::{
    api,
    config::Api,
    error::{ApiError, Protocol},
    exchange::{self, Exchange, Outcome},
    reply::{self, read_body_timed, Reply},
    state::AppState,
};

/// The header that names a request, in both directions (as TorchServe sends it).
const X_REQUEST_ID: &str = "x-request-id";

/// Answers one request to `api`: never fails, every error becomes an answer in the request's protocol.
pub(crate) async fn route(req: Request<Incoming>, state: &Arc<AppState>, api: Api) -> Reply {
    let protocol = protocol_of(api, req.uri().path());
    let id = request_id(&req);
    let span = tracing::info_span!(
        "request",
        id = %id.to_str().unwrap_or_default(),
        api = api.name(),
        method = %req.method(),
        path = %req.uri().path(),
        model = exchange::model_in_path(req.uri().path()),
        worker = tracing::field::Empty,
    );
    let exchange = state.observer.is_on().then(|| Exchange::begin(&req, "HTTP", id.to_str().unwrap_or_default()));
    let (result, served) = if state.config.cors.is_preflight(&req) {
        (Ok(reply::with_type(StatusCode::OK, Vec::new(), "text/plain")), None)
    } else {
        let work = handle(req, state, api, protocol).instrument(span);
        if exchange.is_some() {
            exchange::watch(work).await
        } else {
            (work.await, None)
        }
    };
    let reply = result
        .and_then(|reply| within_limit(reply, state.config.max_response_size))
        .unwrap_or_else(|e| reply::error(&e, protocol));
    let mut reply = finish(reply, state, api);
    reply.headers_mut().insert(X_REQUEST_ID, id);
    state.config.cors.decorate(reply.headers_mut());
    if let Some(exchange) = exchange {
        let bytes = reply.body().size_hint().exact().unwrap_or_else(|| reply.body().size_hint().lower());
        let outcome = Outcome {
            status: reply.status().as_u16(),
            grpc_status: None,
            bytes,
            latency: exchange.start.elapsed(),
            served,
        };
        state.observer.finish(&exchange, &outcome);
    }
    reply
}

/// The client's `x-request-id` when it sends one (visible ASCII, 128 bytes at most), else a new UUID.
fn request_id(req: &Request<Incoming>) -> HeaderValue {
    let given = req.headers().get(X_REQUEST_ID);
    let usable = |v: &&HeaderValue| {
        (1..=128).contains(&v.len()) && v.to_str().is_ok_and(|s| s.bytes().all(|b| b.is_ascii_graphic()))
    };
    given.filter(usable).cloned().unwrap_or_else(|| {
        let mut buffer = uuid::Uuid::encode_buffer();
        HeaderValue::from_str(uuid::Uuid::new_v4().hyphenated().encode_lower(&mut buffer))
            .unwrap_or(HeaderValue::from_static("-"))
    })
}

/// KServe v2 for `/v2` and the paths under it on the inference API; TorchServe's everywhere else.
fn protocol_of(api: Api, path: &str) -> Protocol {
    match (api, path.trim_matches('/').split('/').next()) {
        (Api::Inference, Some("v2")) => Protocol::KServeV2,
        _ => Protocol::TorchServe,
    }
}

/// Checks the request's token and admission, then runs the API's handler.
async fn handle(
    req: Request<Incoming>,
    state: &Arc<AppState>,
    api: Api,
    protocol: Protocol,
) -> Result<Reply, ApiError> {
    if let (Api::Management, "/token", Some(tokens)) = (api, req.uri().path(), &state.keys) {
        // The token API checks the API key itself.
        return api::token::handle(&req, state, tokens).await;
    }
    if let Some(tokens) = &state.keys {
        tokens.check(api, &req)?;
    }
    match api {
        Api::Inference => {
            let admitted = (req.method() == Method::POST).then(|| Arc::clone(&state.inflight).try_acquire_owned());
            if let Some(Err(_)) = admitted {
                return Err(refuse_in_flight(req, state).await);
            }
            match protocol {
                Protocol::KServeV2 => api::kserve::handle(req, state).await,
                Protocol::TorchServe => api::predictions::handle(req, state).await,
            }
        }
        Api::Management => api::management::handle(req, state).await,
        Api::Metrics => api::metrics::handle(&req, state),
    }
}

/// The 429 for an inference request beyond `max_inflight_requests`, once its body is read: closing a connection
/// with unread data resets it, and the client would never see the answer.
async fn refuse_in_flight(req: Request<Incoming>, state: &AppState) -> ApiError {
    state.metrics.refuse(Api::Inference, "too_many_requests");
    let _ = read_body_timed(req, &state.config).await;
    let limit = state.config.max_inflight_requests;
    ApiError::too_many_requests(format!("{limit} requests are in flight already, retry later"))
}

/// The reply, or a 500 when its body is larger than `max_response_size`.
fn within_limit(reply: Reply, limit: usize) -> Result<Reply, ApiError> {
    match reply.body().size_hint().exact() {
        Some(n) if n > limit as u64 => Err(ApiError::internal(format!(
            "the response ({n} bytes) is larger than max_response_size ({limit} bytes)"
        ))),
        _ => Ok(reply),
    }
}

/// What every answer gets: `Retry-After` on overload, `Connection: close` when the request body was left
/// unread, and its count by status class.
fn finish(mut reply: Reply, state: &AppState, api: Api) -> Reply {
    let status = reply.status();
    if matches!(status, StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE) {
        reply.headers_mut().entry(RETRY_AFTER).or_insert(HeaderValue::from_static("1"));
    }
    // The body of a refused upload was not read: the connection cannot carry another request.
    if matches!(status, StatusCode::PAYLOAD_TOO_LARGE | StatusCode::REQUEST_TIMEOUT) {
        reply.headers_mut().insert(CONNECTION, HeaderValue::from_static("close"));
    }
    state.metrics.count_response(api, status);
    reply
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_protocol_is_kserve_v2_under_v2_on_the_inference_api_only() {
        for path in ["/v2", "/v2/", "/v2/health/ready", "/v2/models/m/infer"] {
            assert_eq!(protocol_of(Api::Inference, path), Protocol::KServeV2, "{path}");
        }
        for path in ["/", "/ping", "/predictions/v2", "/v2x", "/v20/models"] {
            assert_eq!(protocol_of(Api::Inference, path), Protocol::TorchServe, "{path}");
        }
        assert_eq!(protocol_of(Api::Management, "/v2/models"), Protocol::TorchServe);
    }
}
