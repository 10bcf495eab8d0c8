//! Token authorisation, compatible with TorchServe's: at start-up the server writes `key_file.json` (owner-only)
//! with a management key and an inference key, and a request must carry `Authorization: Bearer <key>`. On by
//! default for the management API; the inference API asks for its key only with
//! `inference_token_authorization=true`; `disable_token_authorization=true` turns it off. Keys are compared in
//! constant time and never logged.

use std::{io::Write, path::Path};

use hyper::{body::Incoming, header::AUTHORIZATION, Request};
use serde_json::json;
use subtle::ConstantTimeEq;

use crate::{error::ApiError, http::Api};

/// The keys in force.
#[derive(Clone, PartialEq, Eq)]
pub struct Keys {
    /// For the management API.
    pub management: String,
    /// For the inference API.
    pub inference: String,
    /// Whether the inference API asks for its key.
    pub inference_required: bool,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keys").field("inference_required", &self.inference_required).finish_non_exhaustive()
    }
}

/// A fresh random key: 24 bytes from the operating system, as 48 hex digits.
///
/// # Errors
/// When the operating system gives no randomness.
pub fn random_key() -> std::io::Result<String> {
    let mut bytes = [0u8; 24];
    getrandom::fill(&mut bytes).map_err(|e| std::io::Error::other(e.to_string()))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

impl Keys {
    /// New random keys.
    ///
    /// # Errors
    /// When the operating system gives no randomness.
    pub fn generate(inference_required: bool) -> std::io::Result<Self> {
        Ok(Self { management: random_key()?, inference: random_key()?, inference_required })
    }

    /// Writes TorchServe's `key_file.json` at `path`, readable by its owner only.
    ///
    /// # Errors
    /// When the file cannot be written.
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        let body = json!({
            "management": { "key": self.management },
            "inference": { "key": self.inference },
        });
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options.open(path)?;
        file.write_all(serde_json::to_string_pretty(&body).unwrap_or_default().as_bytes())
    }

    /// Checks a request to `api`; health checks and the metrics API need no key.
    ///
    /// # Errors
    /// 401 when the key is missing or wrong.
    pub fn check(&self, api: Api, req: &Request<Incoming>) -> Result<(), ApiError> {
        let path = req.uri().path();
        let expected = match api {
            Api::Management => &self.management,
            Api::Inference if self.inference_required && !is_health(path) => &self.inference,
            Api::Inference | Api::Metrics => return Ok(()),
        };
        let given = req
            .headers()
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        match given {
            Some(token) if bool::from(token.as_bytes().ct_eq(expected.as_bytes())) => Ok(()),
            Some(_) => Err(ApiError::unauthorized(format!("Token Authorization failed: wrong {} key", api.name()))),
            None => Err(ApiError::unauthorized(format!(
                "Token Authorization failed: send `Authorization: Bearer <{} key>` (see key_file.json)",
                api.name()
            ))),
        }
    }
}

fn is_health(path: &str) -> bool {
    path == "/ping" || path.starts_with("/v2/health/")
}
