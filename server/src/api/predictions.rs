//! TorchServe's inference API: `GET /ping` and `POST /predictions/{model}[/{version}]`, the landmark handler.

use std::sync::Arc;

use ferroserve_engine::{InferOutput, Model};
use hyper::{body::Incoming, Method, Request, StatusCode};
use serde::Serialize;

use crate::{
    error::ApiError,
    infer::{infer_handler, infer_within, on_model, request_timeout, split_bucket, timing_headers},
    landmarks::{self, LandmarkShape},
    passthrough,
    reply::{json, json_value, query, read_body_timed, Reply},
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
fn ping(state: &AppState) -> Reply {
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
    let mut output = infer_handler(model, passthrough::with_body(input, body), timeout).await?;
    state.metrics.observe_queue(model, version, output.timing.queue);
    let handler = output.handler.take().ok_or_else(|| ApiError::internal("the handler's answer is missing"))?;
    let mut response = passthrough::reply_of(*handler);
    timing_headers(&mut response, &output);
    Ok(response)
}

async fn run_landmarks(
    req: Request<Incoming>,
    state: &AppState,
    model: &Model,
    version: Option<&str>,
) -> Result<Reply, ApiError> {
    let shape = LandmarkShape::of(model.spec()).ok_or_else(|| {
        ApiError::bad_request(format!(
            "model {} takes input `{}` of shape {}, not hand landmarks [frames, points, 3]",
            model.name(),
            model.spec().input_name,
            model.spec().input_shape
        ))
    })?;
    let query_k = query_topk(&req)?;
    let timeout = request_timeout(&req)?;
    let mut body = read_body_timed(req, &state.config).await?;
    let request = landmarks::parse(&mut body, shape)?;
    let drift = state.drift.features(model, &request.input, &request.shape);
    let output = infer_within(model, request.input, &request.shape, timeout).await?;
    if let Some(pending) = drift {
        state.drift.observe(pending, &output.output);
    }
    state.metrics.observe_queue(model, version, output.timing.queue);
    let topk = request.topk.or(query_k).unwrap_or(1);
    Ok(prediction_response(model, &output, topk))
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
