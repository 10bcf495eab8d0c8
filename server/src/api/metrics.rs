//! The metrics API: `GET /metrics[?name[]=family...]`, the Prometheus text exposition of every family, or of
//! those named (TorchServe's filter).

use std::sync::Arc;

use hyper::{body::Incoming, Method, Request, StatusCode};

use crate::{
    error::ApiError,
    reply::{query, with_type, Reply},
    state::AppState,
};

/// Answers one metrics-API request.
///
/// # Errors
/// 404 for another path, 405 for another method.
pub fn handle(req: &Request<Incoming>, state: &Arc<AppState>) -> Result<Reply, ApiError> {
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/metrics") => {
            state.metrics.refresh(&state.registry);
            let params = query(req);
            let names: Vec<&str> = params.get("name[]").map(|n| n.split(',').collect()).unwrap_or_default();
            Ok(with_type(StatusCode::OK, state.metrics.render(&names), "text/plain; version=0.0.4"))
        }
        (_, "/metrics") => Err(ApiError::method_not_allowed()),
        (_, path) => Err(ApiError::not_found(path)),
    }
}
