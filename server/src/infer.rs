//! What the inference handlers of both protocols share: finding the model a request names (through the canary
//! split when it names no version), the client's deadline, queueing a sample and waiting for its answer,
//! recording the request's latency, and the headers every answer carries (the version that answered, timings).

use std::{
    future::Future,
    sync::Arc,
    time::{Duration, Instant},
};

use ferroserve_engine::{
    canary,
    request::{HandlerInput, InferResult},
    InferOutput, Model,
};
use hyper::{body::Incoming, header::HeaderValue, Request, StatusCode};
use tokio::sync::oneshot::Receiver;

use crate::{
    error::ApiError,
    reply::{name_version, Reply},
    state::AppState,
};

/// The model `name` at `version` (or its default), or TorchServe's 404.
///
/// # Errors
/// [`ApiError`] 404 naming the model (and why it failed to load, when it did), or the version of a known model
/// (`ModelVersionNotFoundException`, as in TorchServe).
pub fn find_model(state: &AppState, name: &str, version: Option<&str>) -> Result<Arc<Model>, ApiError> {
    state.registry.get(name, version).ok_or_else(|| match version {
        Some(v) if state.registry.get(name, None).is_some() => ApiError::version_not_found(name, v),
        _ => match state.failure(name) {
            Some(why) => ApiError::model_not_found(format!("Model not found: {name} (it failed to load: {why})")),
            None => ApiError::model_not_found(format!("Model not found: {name}")),
        },
    })
}

/// The header whose value keeps a client on one version of a model while its canary split is unchanged.
pub const CANARY_KEY: &str = "x-canary-key";

/// Where a request to model `name` falls in the canary split: the bucket of its `x-canary-key`, so that one
/// client stays on one version, else a random one.
#[must_use]
pub fn split_bucket(req: &Request<Incoming>, name: &str) -> u32 {
    bucket_of(name, req.headers().get(CANARY_KEY).map(HeaderValue::as_bytes))
}

/// The canary bucket of a request to model `name` whose canary key (header or gRPC metadata) is `key`.
#[must_use]
pub fn bucket_of(name: &str, key: Option<&[u8]>) -> u32 {
    match key {
        Some(key) => canary::bucket(name, key),
        None => fastrand::u32(..canary::BUCKETS),
    }
}

/// An answer of an inference handler, whatever its protocol: its status for the metrics, and the model version
/// that gave it.
pub trait Answer {
    /// The HTTP status the answer stands for.
    fn status(&self) -> StatusCode;
    /// Names `version` as the model version that answered.
    fn answered_by(&mut self, version: &str);
}

impl Answer for Reply {
    fn status(&self) -> StatusCode {
        Reply::status(self)
    }

    fn answered_by(&mut self, version: &str) {
        name_version(self, version);
    }
}

/// The model a request reaches: `name` at `version` when the URL names one, else the default version or, for
/// the requests in its share (`bucket`, see [`split_bucket`]), the canary.
///
/// # Errors
/// As [`find_model`].
pub fn route(state: &AppState, name: &str, version: Option<&str>, bucket: u32) -> Result<Arc<Model>, ApiError> {
    let routed = match version {
        None => state.registry.route(name, bucket),
        Some(_) => None,
    };
    routed.map_or_else(|| find_model(state, name, version), |r| Ok(r.model))
}

/// The client's deadline, `x-request-timeout-ms` (a positive integer), when it sends one.
///
/// # Errors
/// 400 when the header is not a positive integer.
pub fn request_timeout(req: &Request<Incoming>) -> Result<Option<Duration>, ApiError> {
    timeout_ms(req.headers().get("x-request-timeout-ms").map(HeaderValue::as_bytes))
}

/// The deadline `x-request-timeout-ms` (a header, or gRPC metadata) gives, when it is there.
///
/// # Errors
/// 400 when it is not a positive integer.
pub fn timeout_ms(value: Option<&[u8]>) -> Result<Option<Duration>, ApiError> {
    let Some(value) = value else { return Ok(None) };
    match std::str::from_utf8(value).ok().and_then(|v| v.trim().parse::<u64>().ok()) {
        Some(ms) if ms > 0 => Ok(Some(Duration::from_millis(ms))),
        _ => Err(ApiError::bad_request("header x-request-timeout-ms must be a positive number of milliseconds")),
    }
}

/// Runs `work` on the model `name` at `url_version` (the version the URL named, else the one the canary split
/// picks for `bucket`) and records the request's end-to-end latency and status, whatever its outcome: a request
/// that reached the model counts, even when its body is refused. The answer, error or not, names the version
/// in `x-model-version`. Both protocols' inference handlers go through here.
///
/// # Errors
/// 404 from [`find_model`] (not recorded: no model was reached), and whatever `work` answers.
pub async fn on_model<F, W, A>(
    state: &AppState,
    name: &str,
    url_version: Option<&str>,
    bucket: u32,
    work: W,
) -> Result<A, ApiError>
where
    W: FnOnce(Arc<Model>) -> F,
    F: Future<Output = Result<A, ApiError>>,
    A: Answer,
{
    let model = route(state, name, url_version, bucket)?;
    let started = Instant::now();
    let result = work(Arc::clone(&model)).await;
    let status = result.as_ref().map_or_else(|e| e.status, Answer::status);
    state.metrics.observe_request(&model, url_version, status, started.elapsed());
    match result {
        Ok(mut reply) => {
            reply.answered_by(model.version());
            Ok(reply)
        }
        Err(e) => Err(e.answered_by(model.version())),
    }
}

/// Queues one sample of shape `shape` and waits for its answer, within `timeout` when it is shorter than the
/// model's `responseTimeout`. A request still queued at its deadline never runs; one whose batch runs past it is
/// answered 504 while the worker finishes the batch.
///
/// # Errors
/// The engine's refusal or failure, or 504 at the deadline, as an [`ApiError`].
pub async fn infer_within(
    model: &Model,
    input: Vec<f32>,
    shape: &[usize],
    timeout: Option<Duration>,
) -> Result<InferOutput, ApiError> {
    if model.runs_handler() {
        return Err(ApiError::bad_request(format!(
            "model {} runs its archive's Python handler: send its requests to /predictions/{}",
            model.name(),
            model.name()
        )));
    }
    let limit = limit(model, timeout);
    answer(model, limit, model.submit_shaped(input, Some(shape), Some(limit))?).await
}

/// Queues one request for a model's Python handler and waits for the handler's answer, as [`infer_within`].
///
/// # Errors
/// As [`infer_within`].
pub async fn infer_handler(
    model: &Model,
    input: HandlerInput,
    timeout: Option<Duration>,
) -> Result<InferOutput, ApiError> {
    let limit = limit(model, timeout);
    answer(model, limit, model.submit_handler(input, Some(limit))?).await
}

/// The client's timeout when it is shorter than the model's `responseTimeout`.
fn limit(model: &Model, timeout: Option<Duration>) -> Duration {
    timeout.map_or(model.options().response_timeout, |t| t.min(model.options().response_timeout))
}

/// Waits for the answer on `reply` for `limit` at most.
async fn answer(model: &Model, limit: Duration, reply: Receiver<InferResult>) -> Result<InferOutput, ApiError> {
    let answer = tokio::time::timeout(limit, reply)
        .await
        .map_err(|_| {
            ApiError::gateway_timeout(format!("no answer from model {} within {} ms", model.name(), limit.as_millis()))
        })?
        .map_err(|_| ApiError::internal(format!("model {} dropped the request (it is shutting down)", model.name())))?;
    Ok(answer?)
}

/// Adds `x-queue-time`, `x-inference-time` (ms), `x-batch-size` and `x-device`, so that a client can join its
/// own timings with the server's.
pub fn timing_headers(response: &mut Reply, output: &InferOutput) {
    let timing = output.timing;
    let headers = response.headers_mut();
    let ms = |d: Duration| HeaderValue::from_str(&format!("{:.3}", d.as_secs_f64() * 1000.0));
    for (name, value) in [
        ("x-queue-time", ms(timing.queue)),
        ("x-inference-time", ms(timing.inference)),
        ("x-batch-size", HeaderValue::from_str(&timing.batch_size.to_string())),
        ("x-device", HeaderValue::from_str(&output.device.to_string())),
    ] {
        if let Ok(value) = value {
            headers.insert(name, value);
        }
    }
}
