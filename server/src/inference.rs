//! The inference API: `GET /ping`, `POST /predictions/{model}[/{version}]` (the landmark handler) and the
//! KServe v2 routes.

use std::{sync::Arc, time::Duration, time::Instant};

use ferroserve_engine::{InferOutput, Model};
use hyper::{body::Incoming, header::HeaderValue, Method, Request, StatusCode};
use serde::Serialize;

use crate::{
    error::ApiError,
    http::{error_reply, json, json_value, read_body, Reply},
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

/// TorchServe's health answer: healthy while every model has a live worker.
fn ping(state: &AppState) -> Reply {
    let healthy = state.registry.all().iter().all(|m| m.workers().1 > 0);
    if healthy {
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
        _ => ApiError::model_not_found(format!("Model not found: {name}")),
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
    let started = Instant::now();
    let result = run_landmarks(req, state, &model, shape).await;
    state.metrics.observe_request(&model, started.elapsed());
    result
}

async fn run_landmarks(
    req: Request<Incoming>,
    state: &AppState,
    model: &Model,
    shape: LandmarkShape,
) -> Result<Reply, ApiError> {
    let query_k = query_topk(&req)?;
    let mut body = read_body(req, state.config.max_request_size).await?;
    let request = landmarks::parse(&mut body, shape)?;
    let output = infer(model, request.input).await?;
    let topk = request.topk.or(query_k).unwrap_or(1);
    Ok(prediction_response(model, &output, topk))
}

/// Queues one sample and waits for its answer.
///
/// # Errors
/// The engine's refusal or failure, as an [`ApiError`].
pub async fn infer(model: &Model, input: Vec<f32>) -> Result<InferOutput, ApiError> {
    let reply = model.submit(input)?;
    let answer = reply
        .await
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
