//! The one place where an [`ApiError`] becomes a gRPC status: the code with the meaning of its HTTP status, its
//! message, and the model version that answered in `x-model-version` metadata.

use hyper::StatusCode;
use tonic::{metadata::MetadataValue, Code, Status};

use crate::{error::ApiError, reply::MODEL_VERSION};

/// The gRPC code of an HTTP status.
pub(crate) fn code(status: StatusCode) -> Code {
    match status {
        StatusCode::BAD_REQUEST | StatusCode::UNPROCESSABLE_ENTITY => Code::InvalidArgument,
        StatusCode::UNAUTHORIZED => Code::Unauthenticated,
        // The model API is disabled (405 over HTTP), or forbidden.
        StatusCode::FORBIDDEN | StatusCode::METHOD_NOT_ALLOWED => Code::PermissionDenied,
        StatusCode::NOT_FOUND => Code::NotFound,
        StatusCode::CONFLICT => Code::AlreadyExists,
        StatusCode::REQUEST_TIMEOUT | StatusCode::GATEWAY_TIMEOUT => Code::DeadlineExceeded,
        StatusCode::PAYLOAD_TOO_LARGE | StatusCode::TOO_MANY_REQUESTS => Code::ResourceExhausted,
        StatusCode::SERVICE_UNAVAILABLE => Code::Unavailable,
        StatusCode::NOT_IMPLEMENTED => Code::Unimplemented,
        s if s.is_server_error() => Code::Internal,
        _ => Code::Unknown,
    }
}

/// `e` as a gRPC status.
pub(crate) fn of(e: &ApiError) -> Status {
    let mut status = Status::new(code(e.status), e.message.clone());
    if let Some(version) = e.model_version.as_deref().and_then(|v| MetadataValue::try_from(v).ok()) {
        status.metadata_mut().insert(MODEL_VERSION, version);
    }
    status
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_http_status_has_the_grpc_code_of_the_same_meaning() {
        for (error, expected) in [
            (ApiError::bad_request("x"), Code::InvalidArgument),
            (ApiError::unauthorized("x"), Code::Unauthenticated),
            (ApiError::model_not_found("x"), Code::NotFound),
            (ApiError::version_not_found("m", "2"), Code::NotFound),
            (ApiError::method_not_allowed(), Code::PermissionDenied),
            (ApiError::conflict("x"), Code::AlreadyExists),
            (ApiError::too_large(1), Code::ResourceExhausted),
            (ApiError::too_many_requests("x"), Code::ResourceExhausted),
            (ApiError::unavailable("x"), Code::Unavailable),
            (ApiError::gateway_timeout("x"), Code::DeadlineExceeded),
            (ApiError::internal("x"), Code::Internal),
        ] {
            assert_eq!(of(&error).code(), expected, "{error:?}");
        }
        let answered = of(&ApiError::internal("boom").answered_by("2.0"));
        assert_eq!(answered.message(), "boom");
        assert_eq!(answered.metadata().get(MODEL_VERSION).and_then(|v| v.to_str().ok()), Some("2.0"));
    }
}
