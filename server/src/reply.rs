//! What every handler builds its answer from and reads its request with: the [`Reply`] type, JSON and typed
//! responses, the one rendering of an [`ApiError`] as a response, the query string, and the request body read
//! within `max_request_size` and `request_read_timeout`.

use std::collections::HashMap;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{
    body::Incoming,
    header::{HeaderValue, CONTENT_LENGTH, CONTENT_TYPE},
    Request, Response, StatusCode,
};

use crate::{
    config::Config,
    error::{ApiError, Protocol},
};

/// A response with its whole body.
pub type Reply = Response<Full<Bytes>>;

/// The header naming the model version that answered an inference request (ferroserve's extension).
pub const MODEL_VERSION: &str = "x-model-version";

/// `e` answered in `protocol`'s error body, naming the model version that answered it when one did.
#[must_use]
pub fn error(e: &ApiError, protocol: Protocol) -> Reply {
    let mut reply = json(e.status, e.body(protocol));
    if let Some(version) = &e.model_version {
        name_version(&mut reply, version);
    }
    reply
}

/// Names `version` as the model version that answered, in [`MODEL_VERSION`].
pub fn name_version(reply: &mut Reply, version: &str) {
    if let Ok(value) = HeaderValue::from_str(version) {
        reply.headers_mut().insert(MODEL_VERSION, value);
    }
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

/// TorchServe's `{"status": "..."}` answer of the management and token APIs.
#[must_use]
pub fn status(code: StatusCode, message: &str) -> Reply {
    json_value(code, &serde_json::json!({ "status": message }))
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
pub async fn read_body_timed(req: Request<Incoming>, config: &Config) -> Result<Vec<u8>, ApiError> {
    let timeout = config.request_read_timeout;
    tokio::time::timeout(timeout, read_body(req, config.max_request_size)).await.map_err(|_| {
        ApiError::request_timeout(format!("the request body did not arrive within {} s", timeout.as_secs()))
    })?
}

/// Reads the whole body into one buffer, refusing more than `limit` bytes (early, from Content-Length, when the
/// client sends it).
///
/// # Errors
/// 413 past `limit`, 400 when the connection fails while the body is read.
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
