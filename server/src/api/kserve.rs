//! The KServe v2 inference protocol (Triton's) on the inference address: health, server and model metadata,
//! readiness, and `POST /v2/models/{m}[/versions/{v}]/infer` for any model in the registry. Errors use the
//! protocol's body `{"error": "..."}`.
//!
//! An infer request carries the model's one input as `[N, ...per-sample shape]`; its N samples enter the same
//! batcher as `/predictions` requests, each as its own engine request, all at once so that they can share batches,
//! and their output rows come back joined as one FP32 tensor `[N, ...output shape]`. Each sample takes a place in
//! the model's job queue: a full queue is a 503, more samples than the queue holds a 400. Inputs of datatype FP16,
//! INT64, INT32 or BOOL are converted to f32, the engine's only type (FP16 kept at f32 precision, integers above
//! 2^24 rounded); models whose ONNX input or output is not float32 are refused when they load. The binary tensor
//! data extension is supported both ways.
//!
//! A model that leaves sizes of its input to the requests (TorchScript without a declaration) takes the shape the
//! request states, `[N, ...]`, within what it fixes; its metadata shows each unknown size as -1 (Triton's
//! convention) and an unknown rank as `[-1]`, the batch alone; the output's shape comes from the forward.

pub mod grpc;
mod tensor;
pub mod triton;

use std::sync::Arc;

use ferroserve_engine::{backend::Shape, InferOutput, Model};
use hyper::{body::Incoming, header::HeaderValue, Method, Request, StatusCode};
use serde::Serialize;
use serde_json::json;
use tokio::task::JoinSet;
use tracing::Instrument as _;

use crate::{
    error::ApiError,
    infer::{find_model, infer_within, on_model, request_timeout, split_bucket, timing_headers},
    reply::{json_value, read_body_timed, with_type, Reply},
    state::AppState,
};
use tensor::TensorRequest;

/// The header that gives the length of the JSON part of a body followed by binary tensor data.
const INFERENCE_HEADER: &str = "inference-header-content-length";

/// A v2 endpoint, by path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Endpoint<'p> {
    Server,
    Live,
    Ready,
    Model(&'p str, Option<&'p str>),
    ModelReady(&'p str, Option<&'p str>),
    Infer(&'p str, Option<&'p str>),
}

impl<'p> Endpoint<'p> {
    /// The endpoint at `path` (what follows `v2`).
    fn of(path: &[&'p str]) -> Option<Self> {
        match path {
            [] | [""] => Some(Self::Server),
            ["health", "live"] => Some(Self::Live),
            ["health", "ready"] => Some(Self::Ready),
            ["models", name, rest @ ..] => {
                let (version, rest) = match rest {
                    ["versions", v, rest @ ..] => (Some(*v), rest),
                    _ => (None, rest),
                };
                match rest {
                    [] => Some(Self::Model(name, version)),
                    ["ready"] => Some(Self::ModelReady(name, version)),
                    ["infer"] => Some(Self::Infer(name, version)),
                    _ => None,
                }
            }
            _ => None,
        }
    }

    /// The method the endpoint answers.
    fn method(self) -> Method {
        if matches!(self, Self::Infer(..)) {
            Method::POST
        } else {
            Method::GET
        }
    }
}

/// Answers one KServe v2 request (a path under `/v2`).
///
/// # Errors
/// [`ApiError`] for an unknown path or method, an unknown model, and whatever the infer call refuses.
pub async fn handle(req: Request<Incoming>, state: &Arc<AppState>) -> Result<Reply, ApiError> {
    let path = req.uri().path().to_string();
    let segments: Vec<&str> = path.trim_matches('/').split('/').skip(1).collect();
    match Endpoint::of(&segments) {
        None => Err(ApiError::not_found(&path)),
        Some(endpoint) if *req.method() != endpoint.method() => Err(ApiError::method_not_allowed()),
        Some(Endpoint::Server) => Ok(server_metadata()),
        Some(Endpoint::Live) => Ok(json_value(StatusCode::OK, &json!({ "live": true }))),
        Some(Endpoint::Ready) => Ok(server_ready(state)),
        Some(Endpoint::Model(name, version)) => find_model(state, name, version).map(|m| model_metadata(&m)),
        Some(Endpoint::ModelReady(name, version)) => find_model(state, name, version).map(|m| model_ready(&m)),
        Some(Endpoint::Infer(name, version)) => handle_infer(req, state, name, version).await,
    }
}

/// Parses and validates an infer request body against `spec` without running it, returning its number of
/// samples: the decoder the server uses, for fuzzing and tools.
///
/// # Errors
/// The 400 the server would answer.
pub fn validate_request(
    body: &mut [u8],
    json_len: Option<usize>,
    spec: &ferroserve_engine::ModelSpec,
) -> Result<usize, ApiError> {
    tensor::parse(body, json_len, spec).map(|request| request.samples)
}

fn server_metadata() -> Reply {
    json_value(
        StatusCode::OK,
        &json!({ "name": "ferroserve", "version": env!("CARGO_PKG_VERSION"), "extensions": ["binary_tensor_data"] }),
    )
}

fn server_ready(state: &AppState) -> Reply {
    let ready = state.is_ready();
    let code = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    json_value(code, &json!({ "ready": ready }))
}

/// Whether `model` has a live worker.
fn is_ready(model: &Model) -> bool {
    model.workers().1 > 0
}

fn model_ready(model: &Model) -> Reply {
    let ready = is_ready(model);
    let code = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    json_value(code, &json!({ "name": model.name(), "ready": ready }))
}

/// A tensor of a model's metadata.
#[derive(Serialize)]
struct TensorMetadata<'m> {
    name: &'m str,
    datatype: &'static str,
    /// The batch first; -1 for every size the model leaves open.
    shape: Vec<i64>,
}

/// A model's metadata, as both protocols answer it.
#[derive(Serialize)]
struct ModelMetadata<'m> {
    name: &'m str,
    versions: [&'m str; 1],
    platform: &'m str,
    inputs: [TensorMetadata<'m>; 1],
    outputs: [TensorMetadata<'m>; 1],
}

impl<'m> ModelMetadata<'m> {
    fn of(model: &'m Model) -> Self {
        let spec = model.spec();
        // Nothing after the batch when even the rank is open.
        let batched =
            |shape: &Shape| -> Vec<i64> { std::iter::once(-1).chain(shape.signed().unwrap_or_default()).collect() };
        let platform = match model.runtime() {
            "onnx" => "onnxruntime_onnx",
            "torchscript" => "pytorch_libtorch",
            other => other,
        };
        let tensor = |name, shape| TensorMetadata { name, datatype: "FP32", shape: batched(shape) };
        Self {
            name: model.name(),
            versions: [model.version()],
            platform,
            inputs: [tensor(&spec.input_name, &spec.input_shape)],
            outputs: [tensor(&spec.output_name, &spec.output_shape)],
        }
    }
}

fn model_metadata(model: &Model) -> Reply {
    json_value(StatusCode::OK, &ModelMetadata::of(model))
}

/// `POST /v2/models/{m}[/versions/{v}]/infer`, recorded in the request-latency metrics whatever its outcome.
async fn handle_infer(
    req: Request<Incoming>,
    state: &AppState,
    name: &str,
    version: Option<&str>,
) -> Result<Reply, ApiError> {
    let bucket = split_bucket(&req, name);
    on_model(state, name, version, bucket, |model| async move { run_infer(req, state, &model, version).await }).await
}

/// Runs the request's samples as concurrent engine requests, so that they can share batches.
async fn run_infer(
    req: Request<Incoming>,
    state: &AppState,
    model: &Arc<Model>,
    version: Option<&str>,
) -> Result<Reply, ApiError> {
    let json_len = header_length(&req)?;
    let timeout = request_timeout(&req)?;
    let mut body = read_body_timed(req, &state.config).await?;
    let mut request = tensor::parse(&mut body, json_len, model.spec())?;
    // The rows may wait in the queue: the body is not needed any more.
    drop(body);
    let answers = run_samples(state, model, version, &mut request, timeout).await?;
    response(model, &request, &answers)
}

/// Runs a validated request's samples, each its own engine request (moved out of `request.input`), with the
/// drift monitor and the queue-time metric, and returns their answers in order.
async fn run_samples(
    state: &AppState,
    model: &Arc<Model>,
    version: Option<&str>,
    request: &mut TensorRequest,
    timeout: Option<std::time::Duration>,
) -> Result<Vec<InferOutput>, ApiError> {
    // Each sample takes a place in the queue: more samples than it holds could never be admitted.
    let capacity = model.options().queue_size;
    if request.samples > capacity {
        let n = request.samples;
        return Err(ApiError::bad_request(format!(
            "the request has {n} samples, more than the model's job queue holds ({capacity}): send fewer at a time"
        )));
    }
    let rows = rows(std::mem::take(&mut request.input), request.samples);
    let drift: Vec<_> = rows.iter().map(|row| state.drift.features(model, row, &request.sample_shape)).collect();
    let answers = infer_rows(model, rows, &request.sample_shape, timeout).await?;
    for (pending, answer) in drift.into_iter().zip(&answers) {
        if let Some(pending) = pending {
            state.drift.observe(pending, &answer.output);
        }
    }
    if let Some(first) = answers.first() {
        // Once per request, as TorchServe counts a v2 request (its rows wait side by side).
        state.metrics.observe_queue(model, version, first.timing.queue);
        crate::exchange::served(model, first.timing);
    }
    Ok(answers)
}

/// Each row's answer, in order. The first failure fails the request; the rows still pending are then dropped
/// (the engine skips them).
async fn infer_rows(
    model: &Arc<Model>,
    rows: Vec<Vec<f32>>,
    shape: &[usize],
    timeout: Option<std::time::Duration>,
) -> Result<Vec<InferOutput>, ApiError> {
    let rows = match <[Vec<f32>; 1]>::try_from(rows) {
        Ok([row]) => return Ok(vec![infer_within(model, row, shape, timeout).await?]),
        Err(rows) => rows,
    };
    let shape: Arc<[usize]> = shape.into();
    let mut tasks = JoinSet::new();
    for (k, row) in rows.into_iter().enumerate() {
        let (model, shape) = (Arc::clone(model), Arc::clone(&shape));
        // In the request's span, which the engine's queued span takes as its parent.
        tasks.spawn(async move { (k, infer_within(&model, row, &shape, timeout).await) }.in_current_span());
    }
    let mut answers = vec![None; tasks.len()];
    while let Some(joined) = tasks.join_next().await {
        let (k, answer) = joined.map_err(|e| ApiError::internal(format!("an inference task failed: {e}")))?;
        answers[k] = Some(answer?);
    }
    Ok(answers.into_iter().flatten().collect())
}

/// `Inference-Header-Content-Length`, when the body carries binary tensor data.
fn header_length(req: &Request<Incoming>) -> Result<Option<usize>, ApiError> {
    let Some(value) = req.headers().get(INFERENCE_HEADER) else {
        return Ok(None);
    };
    let length = value.to_str().ok().and_then(|v| v.trim().parse().ok());
    length.map(Some).ok_or_else(|| ApiError::bad_request("Inference-Header-Content-Length must be a byte count"))
}

/// The request's input cut into one engine input per sample (moved, not copied, when there is one sample).
fn rows(input: Vec<f32>, samples: usize) -> Vec<Vec<f32>> {
    if samples == 1 {
        return vec![input];
    }
    let len = input.len() / samples.max(1);
    (0..samples).map(|k| input[k * len..(k + 1) * len].to_vec()).collect()
}

/// The output rows of `answers`, joined.
fn joined(answers: &[InferOutput]) -> Vec<f32> {
    answers.iter().flat_map(|a| a.output.iter().copied()).collect()
}

/// The response body's JSON.
#[derive(Serialize)]
struct InferResponse<'a> {
    model_name: &'a str,
    model_version: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
    outputs: [OutputTensor<'a>; 1],
}

/// The output tensor, with its data in the JSON or its size when the data follows the JSON.
#[derive(Serialize)]
struct OutputTensor<'a> {
    name: &'a str,
    datatype: &'static str,
    shape: Vec<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<&'a [f32]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    parameters: Option<BinaryDataSize>,
}

/// The binary tensor data extension's parameter of an output.
#[derive(Serialize)]
struct BinaryDataSize {
    binary_data_size: usize,
}

/// The per-sample output shape: the model's when it fixes it, else what the forward gave, which must be the same
/// for every row of the request.
fn output_shape(model: &Model, answers: &[InferOutput]) -> Result<Vec<usize>, ApiError> {
    if let Some(fixed) = model.spec().output_shape.to_fixed() {
        return Ok(fixed);
    }
    let mut shapes = answers.iter().map(|a| a.shape.as_deref().unwrap_or_default());
    let first = shapes.next().unwrap_or_default();
    match shapes.find(|shape| *shape != first) {
        None => Ok(first.to_vec()),
        Some(other) => Err(ApiError::internal(format!(
            "model {} gave rows of shapes {first:?} and {other:?} to one request",
            model.name()
        ))),
    }
}

/// The samples' output rows joined into one tensor `[N, ...output_shape]`, with the timing headers of the first.
fn response(model: &Model, request: &TensorRequest, answers: &[InferOutput]) -> Result<Reply, ApiError> {
    let spec = model.spec();
    let row_shape = output_shape(model, answers)?;
    let data = joined(answers);
    let binary = request.binary_output;
    let body = InferResponse {
        model_name: model.name(),
        model_version: model.version(),
        id: request.id.as_deref(),
        outputs: [OutputTensor {
            name: &spec.output_name,
            datatype: "FP32",
            shape: std::iter::once(request.samples).chain(row_shape).collect(),
            data: (!binary).then_some(data.as_slice()),
            parameters: binary.then(|| BinaryDataSize { binary_data_size: data.len() * 4 }),
        }],
    };
    let mut reply = if binary {
        let mut bytes = serde_json::to_vec(&body).unwrap_or_default();
        let json_len = HeaderValue::from(bytes.len());
        bytes.extend(data.iter().flat_map(|x| x.to_le_bytes()));
        let mut reply = with_type(StatusCode::OK, bytes, "application/octet-stream");
        reply.headers_mut().insert(INFERENCE_HEADER, json_len);
        reply
    } else {
        json_value(StatusCode::OK, &body)
    };
    if let Some(first) = answers.first() {
        timing_headers(&mut reply, first);
    }
    Ok(reply)
}
