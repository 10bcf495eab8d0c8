//! The KServe v2 inference protocol (Triton's) on the inference address: health, server and model metadata,
//! readiness. Errors use the protocol's body `{"error": "..."}`.

use ferroserve_engine::Model;
use hyper::{body::Incoming, Method, Request, StatusCode};
use serde_json::json;

use crate::{
    error::ApiError,
    http::{json_value, Reply},
    state::AppState,
};

/// Routes `/v2/...`; `path` is what follows `v2`.
pub async fn route(req: Request<Incoming>, state: &AppState, path: &[&str]) -> Reply {
    let result = match (req.method(), path) {
        (&Method::GET, [] | [""]) => Ok(server_metadata()),
        (&Method::GET, ["health", "live"]) => Ok(json_value(StatusCode::OK, &json!({ "live": true }))),
        (&Method::GET, ["health", "ready"]) => Ok(server_ready(state)),
        (&Method::GET, ["models", name]) => model(state, name, None).map(|m| model_metadata(&m)),
        (&Method::GET, ["models", name, "versions", v]) => model(state, name, Some(v)).map(|m| model_metadata(&m)),
        (&Method::GET, ["models", name, "ready"]) => model(state, name, None).map(|m| model_ready(&m)),
        (&Method::GET, ["models", name, "versions", v, "ready"]) => {
            model(state, name, Some(v)).map(|m| model_ready(&m))
        }
        (_, _) if req.method() != Method::GET && req.method() != Method::POST => Err(ApiError::method_not_allowed()),
        _ => Err(ApiError::not_found(req.uri().path())),
    };
    result.unwrap_or_else(|e| error(&e))
}

/// The protocol's error body.
#[must_use]
pub fn error(e: &ApiError) -> Reply {
    json_value(e.status, &json!({ "error": e.message }))
}

fn model(state: &AppState, name: &str, version: Option<&str>) -> Result<std::sync::Arc<Model>, ApiError> {
    crate::inference::find_model(state, name, version)
}

fn server_metadata() -> Reply {
    json_value(StatusCode::OK, &json!({ "name": "ferroserve", "version": env!("CARGO_PKG_VERSION"), "extensions": [] }))
}

fn server_ready(state: &AppState) -> Reply {
    let ready = state.registry.all().iter().all(|m| m.workers().1 > 0);
    let code = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    json_value(code, &json!({ "ready": ready }))
}

fn model_ready(model: &Model) -> Reply {
    let ready = model.workers().1 > 0;
    let code = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    json_value(code, &json!({ "name": model.name(), "ready": ready }))
}

fn model_metadata(model: &Model) -> Reply {
    let spec = model.spec();
    let batched = |shape: &[usize]| -> Vec<i64> {
        std::iter::once(-1).chain(shape.iter().map(|&d| i64::try_from(d).unwrap_or(i64::MAX))).collect()
    };
    let platform = match model.runtime() {
        "onnx" => "onnxruntime_onnx",
        other => other,
    };
    json_value(
        StatusCode::OK,
        &json!({
            "name": model.name(),
            "versions": [model.version()],
            "platform": platform,
            "inputs": [{ "name": spec.input_name, "datatype": "FP32", "shape": batched(&spec.input_shape) }],
            "outputs": [{ "name": spec.output_name, "datatype": "FP32", "shape": batched(&spec.output_shape) }],
        }),
    )
}
