//! The OpenAPI 3.0.1 descriptions of the inference and management APIs, served as TorchServe serves its own, for
//! swagger codegen and other clients: the whole document, not wrapped, at `OPTIONS /` and at
//! `GET /api-description` (TorchServe's older path; `OPTIONS` there too). The documents are
//! `server/openapi/*.json`, built into the binary; their `info.version` becomes the crate's version once, at the
//! first request, so that each answer shares that one buffer instead of copying it.

use std::sync::OnceLock;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{
    header::{HeaderValue, CONTENT_TYPE},
    Method, Response,
};

use crate::{error::ApiError, reply::Reply};

/// What stands for `info.version` in the documents' sources (with its quotes: it appears nowhere else).
pub const VERSION_PLACEHOLDER: &str = "\"CARGO_PKG_VERSION\"";

/// The APIs that have a description.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Document {
    /// The inference API: `/ping`, `/predictions`, KServe v2.
    Inference,
    /// The management API: `/models`, `/token`.
    Management,
}

impl Document {
    /// The document as written, with [`VERSION_PLACEHOLDER`] for its version.
    #[must_use]
    pub fn source(self) -> &'static str {
        match self {
            Self::Inference => include_str!("../../openapi/inference.json"),
            Self::Management => include_str!("../../openapi/management.json"),
        }
    }

    /// The document as served, with the crate's version.
    #[must_use]
    pub fn served(self) -> &'static Bytes {
        static INFERENCE: OnceLock<Bytes> = OnceLock::new();
        static MANAGEMENT: OnceLock<Bytes> = OnceLock::new();
        let cell = match self {
            Self::Inference => &INFERENCE,
            Self::Management => &MANAGEMENT,
        };
        cell.get_or_init(|| {
            let version = format!("\"{}\"", env!("CARGO_PKG_VERSION"));
            Bytes::from(self.source().replacen(VERSION_PLACEHOLDER, &version, 1))
        })
    }
}

/// The inference API's description at `page`: `""` (the root) or `"api-description"`.
///
/// # Errors
/// 405 for a method the page does not answer (see [`answer`]).
pub fn inference(method: &Method, page: &str) -> Result<Reply, ApiError> {
    answer(Document::Inference, method, page)
}

/// The management API's description at `page`: `""` (the root) or `"api-description"`.
///
/// # Errors
/// 405 for a method the page does not answer (see [`answer`]).
pub fn management(method: &Method, page: &str) -> Result<Reply, ApiError> {
    answer(Document::Management, method, page)
}

/// `document` as JSON for `OPTIONS` on the root (`page` `""`) and `GET` or `OPTIONS` on `api-description`.
///
/// # Errors
/// 405 for any other method, as TorchServe answers `GET /`.
pub fn answer(document: Document, method: &Method, page: &str) -> Result<Reply, ApiError> {
    let allowed = *method == Method::OPTIONS || (*method == Method::GET && page == "api-description");
    if !allowed {
        return Err(ApiError::method_not_allowed());
    }
    let mut reply = Response::new(Full::new(document.served().clone()));
    reply.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    Ok(reply)
}

#[cfg(test)]
mod tests {
    use hyper::StatusCode;

    use super::*;

    const BOTH: [Document; 2] = [Document::Inference, Document::Management];

    #[test]
    fn each_source_has_the_version_placeholder_once_and_serves_the_crate_version() {
        for document in BOTH {
            assert_eq!(document.source().matches(VERSION_PLACEHOLDER).count(), 1, "{document:?}");
            let served: serde_json::Value = serde_json::from_slice(document.served()).expect("JSON");
            assert_eq!(served["openapi"], "3.0.1", "{document:?}");
            assert_eq!(served["info"]["version"], env!("CARGO_PKG_VERSION"), "{document:?}");
        }
    }

    #[test]
    fn every_answer_shares_one_buffer() {
        let first = answer(Document::Inference, &Method::OPTIONS, "").expect("answered");
        let again = answer(Document::Inference, &Method::GET, "api-description").expect("answered");
        let body = |reply: Reply| reply.into_body().into_inner().expect("a body");
        let (first, again) = (body(first), body(again));
        // Only an Arc'd `Bytes` can hand out the same pointer twice: the document is never copied per request.
        assert_eq!(first.as_ptr(), again.as_ptr());
    }

    #[test]
    fn the_root_answers_options_only_and_api_description_get_too() {
        let status = |method: Method, page: &str| match answer(Document::Management, &method, page) {
            Ok(reply) => reply.status(),
            Err(e) => e.status,
        };
        assert_eq!(status(Method::OPTIONS, ""), StatusCode::OK);
        assert_eq!(status(Method::GET, ""), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(status(Method::GET, "api-description"), StatusCode::OK);
        assert_eq!(status(Method::OPTIONS, "api-description"), StatusCode::OK);
        assert_eq!(status(Method::POST, "api-description"), StatusCode::METHOD_NOT_ALLOWED);
    }
}
