//! The inference API: `GET /ping`, `POST /predictions/{model}[/{version}]` (the landmark handler) and the
//! KServe v2 routes.

use std::{sync::Arc, time::Duration, time::Instant};

use ferroserve_engine::{InferOutput, Model};
use hyper::{body::Incoming, header::HeaderValue, Method, Request, StatusCode};
use serde::Serialize;

use crate::{
    error::ApiError,
    http::{error_reply, json, json_value, read_body_timed, Reply},
    landmarks::{self, LandmarkShape},
    state::AppState,
};

/// Routes one inference-API request.
pub async fn route(req: Request<Incoming>, state: &AppState) -> Reply {
    let path = req.uri().path().to_string();
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    if segments.first() == Some(&"v2") {
        return crate::kserve::route(req, state, &segments[1..]).await;
    }
    let result = match (req.method(), segments.as_slice()) {
        (&Method::GET, ["ping"]) => Ok(ping(state)),
        (&Method::POST, ["predictions", model]) => predict(req, state, model, None).await,
        (&Method::POST, ["predictions", model, version]) => predict(req, state, model, Some(version)).await,
        (_, ["ping"] | ["predictions", _] | ["predictions", _, _]) => Err(ApiError::method_not_allowed()),
        _ => Err(ApiError::not_found(&path)),
    };
    result.unwrap_or_else(|e| error_reply(&e))
}

/// TorchServe's health answer: healthy while every model has a live worker and no shutdown has begun.
fn ping(state: &AppState) -> Reply {
    if state.is_ready() {
        json(StatusCode::OK, br#"{"status":"Healthy"}"#.to_vec())
    } else {
        json(StatusCode::INTERNAL_SERVER_ERROR, br#"{"status":"Unhealthy"}"#.to_vec())
    }
}

/// The model `name` at `version` (or its default), or TorchServe's 404.
///
/// # Errors
/// [`ApiError`] 404 naming the model or the version.
pub fn find_model(state: &AppState, name: &str, version: Option<&str>) -> Result<Arc<Model>, ApiError> {
    state.registry.get(name, version).ok_or_else(|| match version {
        Some(v) if state.registry.get(name, None).is_some() => {
            ApiError::model_not_found(format!("Model version: {v} does not exist for model: {name}"))
        }
        _ => match state.failure(name) {
            Some(why) => ApiError::model_not_found(format!("Model not found: {name} (it failed to load: {why})")),
            None => ApiError::model_not_found(format!("Model not found: {name}")),
        },
    })
}

/// `topk` from the query string (`?topk=3`); the body's `topk` field wins over it.
fn query_topk(req: &Request<Incoming>) -> Result<Option<usize>, ApiError> {
    let Some(query) = req.uri().query() else {
        return Ok(None);
    };
    let Some(value) = query.split('&').find_map(|kv| kv.strip_prefix("topk=")) else {
        return Ok(None);
    };
    match value.parse::<usize>() {
        Ok(k) if k > 0 => Ok(Some(k)),
        _ => Err(ApiError::bad_request(format!("query parameter topk={value} must be a positive integer"))),
    }
}

async fn predict(
    req: Request<Incoming>,
    state: &AppState,
    name: &str,
    version: Option<&str>,
) -> Result<Reply, ApiError> {
    let model = find_model(state, name, version)?;
    let shape = LandmarkShape::of(model.spec()).ok_or_else(|| {
        ApiError::bad_request(format!(
            "model {name} takes input `{}` of shape {:?}, not hand landmarks [frames, points, 3]",
            model.spec().input_name,
            model.spec().input_shape
        ))
    })?;
    observed(state, &model, run_landmarks(req, state, &model, shape)).await
}

/// Runs `work` for a request to `model` and records its end-to-end latency, whatever its outcome.
pub async fn observed<T>(state: &AppState, model: &Model, work: impl std::future::Future<Output = T>) -> T {
    let started = Instant::now();
    let result = work.await;
    state.metrics.observe_request(model, started.elapsed());
    result
}

async fn run_landmarks(
    req: Request<Incoming>,
    state: &AppState,
    model: &Model,
    shape: LandmarkShape,
) -> Result<Reply, ApiError> {
    let query_k = query_topk(&req)?;
    let timeout = request_timeout(&req)?;
    let mut body = read_body_timed(req, &state.config).await?;
    let request = landmarks::parse(&mut body, shape)?;
    let output = infer_within(model, request.input, timeout).await?;
    let topk = request.topk.or(query_k).unwrap_or(1);
    Ok(prediction_response(model, &output, topk))
}

/// The client's deadline, `x-request-timeout-ms` (a positive integer), when it sends one.
///
/// # Errors
/// 400 when the header is not a positive integer.
pub fn request_timeout(req: &Request<Incoming>) -> Result<Option<Duration>, ApiError> {
    let Some(value) = req.headers().get("x-request-timeout-ms") else { return Ok(None) };
    match value.to_str().ok().and_then(|v| v.trim().parse::<u64>().ok()) {
        Some(ms) if ms > 0 => Ok(Some(Duration::from_millis(ms))),
        _ => Err(ApiError::bad_request("header x-request-timeout-ms must be a positive number of milliseconds")),
    }
}

/// Queues one sample and waits for its answer, within the model's `responseTimeout`.
///
/// # Errors
/// The engine's refusal or failure, as an [`ApiError`].
pub async fn infer(model: &Model, input: Vec<f32>) -> Result<InferOutput, ApiError> {
    infer_within(model, input, None).await
}

/// Queues one sample and waits for its answer, within `timeout` when it is shorter than the model's
/// `responseTimeout`. A request still queued at its deadline never runs; one whose batch runs past it is answered
/// 504 while the worker finishes the batch.
///
/// # Errors
/// The engine's refusal or failure, or 504 at the deadline, as an [`ApiError`].
pub async fn infer_within(model: &Model, input: Vec<f32>, timeout: Option<Duration>) -> Result<InferOutput, ApiError> {
    let limit = timeout.map_or(model.options().response_timeout, |t| t.min(model.options().response_timeout));
    let reply = model.submit_within(input, Some(limit))?;
    let answer = tokio::time::timeout(limit, reply)
        .await
        .map_err(|_| {
            ApiError::gateway_timeout(format!("no answer from model {} within {} ms", model.name(), limit.as_millis()))
        })?
        .map_err(|_| ApiError::internal(format!("model {} dropped the request (it is shutting down)", model.name())))?;
    Ok(answer?)
}

#[derive(Serialize)]
struct PredictionBody<'a> {
    predictions: Vec<landmarks::Prediction<'a>>,
    device: &'static str,
}

fn prediction_response(model: &Model, output: &InferOutput, topk: usize) -> Reply {
    let body = PredictionBody {
        predictions: landmarks::top_k(&output.output, model.labels(), topk),
        device: output.device.kind(),
    };
    let mut response = json_value(StatusCode::OK, &body);
    timing_headers(&mut response, output);
    response
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
