//! TorchServe's inference API: `GET /ping` and `POST /predictions/{model}[/{version}]`, the landmark handler.

use std::sync::Arc;

use ferroserve_engine::{
    request::{HandlerInput, HandlerOutput},
    InferOutput, Model,
};
use hyper::{body::Incoming, Method, Request, StatusCode};
use serde::Serialize;

use crate::{
    error::ApiError,
    infer::{infer_handler, infer_within, on_model, request_timeout, split_bucket, timing_headers},
    landmarks::{self, LandmarkShape},
    passthrough,
    reply::{json, query, read_body_timed, Reply},
    state::AppState,
};

/// Answers one request of TorchServe's inference API.
///
/// # Errors
/// [`ApiError`] for an unknown path or method, and whatever the prediction refuses.
pub async fn handle(req: Request<Incoming>, state: &Arc<AppState>) -> Result<Reply, ApiError> {
    let path = req.uri().path().to_string();
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    match (req.method(), segments.as_slice()) {
        (&Method::GET, ["ping"]) => Ok(ping(state)),
        (&Method::POST, ["predictions", model]) => predict(req, state, model, None).await,
        (&Method::POST, ["predictions", model, version]) => predict(req, state, model, Some(version)).await,
        (_, ["ping"] | ["predictions", _] | ["predictions", _, _]) => Err(ApiError::method_not_allowed()),
        (method, [page @ ("" | "api-description")]) => super::description::inference(method, page),
        _ => Err(ApiError::not_found(&path)),
    }
}

/// TorchServe's health answer: healthy while every model has a live worker and no shutdown has begun.
#[must_use]
pub fn ping(state: &AppState) -> Reply {
    if state.is_ready() {
        json(StatusCode::OK, br#"{"status":"Healthy"}"#.to_vec())
    } else {
        json(StatusCode::INTERNAL_SERVER_ERROR, br#"{"status":"Unhealthy"}"#.to_vec())
    }
}

/// `topk` from the query string (`?topk=3`); the body's `topk` field wins over it.
fn query_topk(req: &Request<Incoming>) -> Result<Option<usize>, ApiError> {
    let Some(value) = query(req).remove("topk") else {
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
    let bucket = split_bucket(&req, name);
    on_model(state, name, version, bucket, |model| async move {
        if model.runs_handler() {
            run_handler(req, state, &model, version).await
        } else {
            run_landmarks(req, state, &model, version).await
        }
    })
    .await
}

/// Passes the request to the archive's Python handler and answers what it made of it, with the timing headers.
async fn run_handler(
    req: Request<Incoming>,
    state: &AppState,
    model: &Model,
    version: Option<&str>,
) -> Result<Reply, ApiError> {
    let timeout = request_timeout(&req)?;
    let input = passthrough::input_of(&req);
    let body = read_body_timed(req, &state.config).await?;
    let (handler, output) =
        predict_handler(state, model, version, passthrough::with_body(input, body), timeout).await?;
    let mut response = passthrough::reply_of(handler);
    timing_headers(&mut response, &output);
    Ok(response)
}

/// Passes `input` to the archive's Python handler of `model` within `timeout`, and answers what the handler
/// made of it, with the engine's answer: both protocols' handler path.
///
/// # Errors
/// What the engine refuses or fails with.
pub async fn predict_handler(
    state: &AppState,
    model: &Model,
    version: Option<&str>,
    input: HandlerInput,
    timeout: Option<std::time::Duration>,
) -> Result<(HandlerOutput, InferOutput), ApiError> {
    let mut output = infer_handler(model, input, timeout).await?;
    state.metrics.observe_queue(model, version, output.timing.queue);
    crate::exchange::served(model, output.timing);
    let handler = output.handler.take().ok_or_else(|| ApiError::internal("the handler's answer is missing"))?;
    Ok((*handler, output))
}

async fn run_landmarks(
    req: Request<Incoming>,
    state: &AppState,
    model: &Model,
    version: Option<&str>,
) -> Result<Reply, ApiError> {
    let query_k = query_topk(&req)?;
    let timeout = request_timeout(&req)?;
    let body = read_body_timed(req, &state.config).await?;
    let (prediction, output) = predict_landmarks(state, model, version, body, query_k, timeout).await?;
    let mut response = json(StatusCode::OK, prediction);
    timing_headers(&mut response, &output);
    Ok(response)
}

/// Runs the landmark JSON `body` on `model` within `timeout`, and answers the prediction's JSON (the `topk` of
/// the body, else `query_k`, else 1 class) with the engine's answer: both protocols' landmark path.
///
/// # Errors
/// 400 for a model that does not take landmarks or a body that does not fit it, and what the engine refuses.
pub async fn predict_landmarks(
    state: &AppState,
    model: &Model,
    version: Option<&str>,
    mut body: Vec<u8>,
    query_k: Option<usize>,
    timeout: Option<std::time::Duration>,
) -> Result<(Vec<u8>, InferOutput), ApiError> {
    let shape = LandmarkShape::of(model.spec()).ok_or_else(|| {
        ApiError::bad_request(format!(
            "model {} takes input `{}` of shape {}, not hand landmarks [frames, points, 3]",
            model.name(),
            model.spec().input_name,
            model.spec().input_shape
        ))
    })?;
    let request = landmarks::parse(&mut body, shape)?;
    let drift = state.drift.features(model, &request.input, &request.shape);
    let output = infer_within(model, request.input, &request.shape, timeout).await?;
    if let Some(pending) = drift {
        state.drift.observe(pending, &output.output);
    }
    state.metrics.observe_queue(model, version, output.timing.queue);
    crate::exchange::served(model, output.timing);
    let topk = request.topk.or(query_k).unwrap_or(1);
    let body = PredictionBody {
        predictions: landmarks::top_k(&output.output, model.labels(), topk),
        device: output.device.kind(),
    };
    Ok((serde_json::to_vec(&body).unwrap_or_default(), output))
}

#[derive(Serialize)]
struct PredictionBody<'a> {
    predictions: Vec<landmarks::Prediction<'a>>,
    device: &'static str,
}
