//! The token API: `GET /token?type=management|inference` on the management API, with the API key, replaces
//! that key and rewrites the key file (see [`crate::auth`]).

use std::sync::Arc;

use hyper::{body::Incoming, Method, Request, StatusCode};

use crate::{
    auth::{bearer, KeyKind, Tokens},
    error::ApiError,
    reply::{query, status, Reply},
    state::AppState,
};

/// Replaces the key `type` names and answers 200; the new key is in the key file, never in the answer. The
/// renewal runs as a task of its own, so that a client that goes away cannot leave the file and the keys in
/// force apart.
///
/// # Errors
/// 405 for another method, 401 for a missing or wrong API key, 400 for a missing or unknown `type`, 500 when
/// the key file cannot be written (the old key stays in force).
pub async fn handle(req: &Request<Incoming>, state: &Arc<AppState>, tokens: &Arc<Tokens>) -> Result<Reply, ApiError> {
    if req.method() != Method::GET {
        return Err(ApiError::method_not_allowed());
    }
    tokens.check_api_key(bearer(req))?;
    let (kind, which) = match query(req).get("type").map(String::as_str) {
        Some("management") => (KeyKind::Management, "management"),
        Some("inference") => (KeyKind::Inference, "inference"),
        other => {
            return Err(ApiError::bad_request(format!("Parameter type must be management or inference, got {other:?}")))
        }
    };
    let (tokens, lifetime, path) = (Arc::clone(tokens), state.config.token_expiration, state.config.key_file.clone());
    tokio::spawn(async move { tokens.renew(kind, lifetime, &path).await })
        .await
        .map_err(|e| ApiError::internal(e.to_string()))??;
    tracing::info!(key = which, "token key regenerated");
    Ok(status(StatusCode::OK, &format!("A new {which} key is in {}", state.config.key_file.display())))
}
