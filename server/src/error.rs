//! The one error type the APIs answer with, the one place where engine and load errors get their HTTP status,
//! and the one renderer of error bodies: TorchServe's `{"code": N, "type": "...", "message": "..."}` or KServe
//! v2's `{"error": "..."}`, by the [`Protocol`] the router decided for the request.

use ferroserve_engine::{registry::CanaryError, store::StoreError, BackendError, EngineError};
use hyper::StatusCode;
use serde::Serialize;

use crate::load::LoadError;

/// The protocol a request speaks, decided once per request by its path: it chooses the error body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// TorchServe's APIs (`/ping`, `/predictions`, `/models`, `/metrics`, `/token`).
    TorchServe,
    /// KServe v2, Triton's protocol (`/v2/...` on the inference API).
    KServeV2,
}

/// An error answered to a client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// TorchServe's exception name, stable: used in the body (and as a metric label).
    pub kind: &'static str,
    /// What was wrong, for a person.
    pub message: String,
    /// The model version that answered with this error, when one did (sent in `x-model-version`).
    pub model_version: Option<String>,
}

/// The JSON body of an error, TorchServe's shape.
#[derive(Serialize)]
struct TorchServeBody<'a> {
    code: u16,
    #[serde(rename = "type")]
    kind: &'a str,
    message: &'a str,
}

impl ApiError {
    fn new(status: StatusCode, kind: &'static str, message: String) -> Self {
        Self { status, kind, message, model_version: None }
    }

    /// This error, as answered by `version` of the model.
    #[must_use]
    pub fn answered_by(self, version: &str) -> Self {
        Self { model_version: Some(version.to_string()), ..self }
    }

    /// 400: the request is malformed.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "BadRequestException", message.into())
    }

    /// 401: a token was needed and missing or wrong.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "InvalidKeyException", message.into())
    }

    /// 404: no such model.
    pub fn model_not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "ModelNotFoundException", message.into())
    }

    /// 404: the model exists, not at this version (TorchServe's own exception name for it).
    pub fn version_not_found(name: &str, version: &str) -> Self {
        let message = format!("Model version: {version} does not exist for model: {name}");
        Self::new(StatusCode::NOT_FOUND, "ModelVersionNotFoundException", message)
    }

    /// 404: no such endpoint.
    pub fn not_found(path: &str) -> Self {
        let message = format!("Requested resource is not found, please refer to API document: {path}");
        Self::new(StatusCode::NOT_FOUND, "ResourceNotFoundException", message)
    }

    /// 405: the endpoint exists, the method does not.
    pub fn method_not_allowed() -> Self {
        let message = "Requested method is not allowed, please refer to API document.".into();
        Self::new(StatusCode::METHOD_NOT_ALLOWED, "MethodNotAllowedException", message)
    }

    /// 409: the model (version) exists already.
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "ConflictStatusException", message.into())
    }

    /// 413: the body is larger than `max_request_size`.
    pub fn too_large(limit: usize) -> Self {
        let message = format!("request body is larger than max_request_size ({limit} bytes)");
        Self::new(StatusCode::PAYLOAD_TOO_LARGE, "RequestEntityTooLargeException", message)
    }

    /// 408: the client was too slow to send its request.
    pub fn request_timeout(message: impl Into<String>) -> Self {
        Self::new(StatusCode::REQUEST_TIMEOUT, "RequestTimeoutException", message.into())
    }

    /// 429: too many requests in flight.
    pub fn too_many_requests(message: impl Into<String>) -> Self {
        Self::new(StatusCode::TOO_MANY_REQUESTS, "TooManyRequestsException", message.into())
    }

    /// 503: the server cannot take this now.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "ServiceUnavailableException", message.into())
    }

    /// 504: no answer within the request's deadline.
    pub fn gateway_timeout(message: impl Into<String>) -> Self {
        Self::new(StatusCode::GATEWAY_TIMEOUT, "RequestTimeoutException", message.into())
    }

    /// 500: something failed on the server's side.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "InternalServerException", message.into())
    }

    /// The JSON body in `protocol`'s shape.
    #[must_use]
    pub fn body(&self, protocol: Protocol) -> Vec<u8> {
        let body = match protocol {
            Protocol::TorchServe => serde_json::to_vec(&TorchServeBody {
                code: self.status.as_u16(),
                kind: self.kind,
                message: &self.message,
            }),
            Protocol::KServeV2 => serde_json::to_vec(&KServeBody { error: &self.message }),
        };
        body.unwrap_or_else(|_| b"{}".to_vec())
    }
}

/// The JSON body of an error, KServe v2's shape.
#[derive(Serialize)]
struct KServeBody<'a> {
    error: &'a str,
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        let message = e.to_string();
        let (status, kind) = match e {
            EngineError::QueueFull { .. }
            | EngineError::Shed { .. }
            | EngineError::ShuttingDown(_)
            | EngineError::NoWorkers(_) => (StatusCode::SERVICE_UNAVAILABLE, "ServiceUnavailableException"),
            // A shape the model rejected (libtorch's message) is the client's, like any input that does not fit.
            EngineError::InvalidInput(_) | EngineError::Backend(BackendError::Input(_)) => {
                (StatusCode::BAD_REQUEST, "BadRequestException")
            }
            EngineError::Timeout { .. } => (StatusCode::GATEWAY_TIMEOUT, "RequestTimeoutException"),
            // A Python worker's status for the whole batch (503 `Prediction failed` when the handler raised), under
            // the exception name TorchServe's front end answers it with.
            EngineError::Backend(BackendError::Status { code, .. }) => {
                (StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR), "InternalServerException")
            }
            EngineError::Backend(_) => (StatusCode::INTERNAL_SERVER_ERROR, "InternalServerException"),
        };
        Self::new(status, kind, message)
    }
}

impl From<CanaryError> for ApiError {
    fn from(e: CanaryError) -> Self {
        match &e {
            CanaryError::NoModel(_) => Self::model_not_found(e.to_string()),
            CanaryError::NoVersion { name, version } => Self::version_not_found(name, version),
            CanaryError::IsDefault { .. } | CanaryError::NotCanary { .. } => Self::bad_request(e.to_string()),
        }
    }
}

impl From<LoadError> for ApiError {
    fn from(e: LoadError) -> Self {
        let message = e.to_string();
        match e {
            LoadError::Store(StoreError::NotFound { .. }) => Self::model_not_found(message),
            LoadError::Duplicate(_) => Self::conflict(message),
            LoadError::Store(StoreError::Labels { .. } | StoreError::Archive { .. }) | LoadError::Mismatch { .. } => {
                Self::bad_request(message)
            }
            LoadError::Backend { .. } => Self::internal(message),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_error_has_a_body_per_protocol() {
        let e = ApiError::model_not_found("Model not found: m");
        let torchserve: serde_json::Value = serde_json::from_slice(&e.body(Protocol::TorchServe)).expect("JSON");
        assert_eq!(
            torchserve,
            serde_json::json!({"code": 404, "type": "ModelNotFoundException", "message": "Model not found: m"})
        );
        let v2: serde_json::Value = serde_json::from_slice(&e.body(Protocol::KServeV2)).expect("JSON");
        assert_eq!(v2, serde_json::json!({"error": "Model not found: m"}));
    }
}
