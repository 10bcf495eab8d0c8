//! Token authorisation, compatible with TorchServe's: at start-up the server writes `key_file.json` (owner-only)
//! with a management key and an inference key, each with its expiration time (`token_expiration_min`, 60 minutes
//! by default), and an API key that does not expire; a request must carry `Authorization: Bearer <key>`. On by
//! default for the management API; the inference API asks for its key only with
//! `inference_token_authorization=true`; `disable_token_authorization=true` turns it off.
//!
//! `GET /token?type=management|inference` on the management API, with the API key, replaces that key with a new
//! one that lives `token_expiration_min` more minutes, and rewrites the key file. Keys are compared in constant
//! time and never logged.

use std::{
    io::Write,
    path::Path,
    time::{Duration, SystemTime},
};

use hyper::{body::Incoming, header::AUTHORIZATION, Request};
use parking_lot::RwLock;
use serde_json::json;
use subtle::ConstantTimeEq;

use crate::{
    config::{Api, Config},
    error::ApiError,
};

/// The keys in force.
#[derive(Clone, PartialEq, Eq)]
pub struct Keys {
    /// For the management API.
    pub management: String,
    /// For the inference API.
    pub inference: String,
    /// For the token API (`GET /token`): it never expires.
    pub api: String,
    /// Whether the inference API asks for its key.
    pub inference_required: bool,
    /// When the management key stops being accepted.
    pub management_expires: SystemTime,
    /// When the inference key stops being accepted.
    pub inference_expires: SystemTime,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keys")
            .field("inference_required", &self.inference_required)
            .field("management_expires", &self.management_expires)
            .field("inference_expires", &self.inference_expires)
            .finish_non_exhaustive()
    }
}

/// Which key the token API replaces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    /// The management key.
    Management,
    /// The inference key.
    Inference,
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

fn expiry(lifetime: Duration) -> SystemTime {
    SystemTime::now().checked_add(lifetime).unwrap_or(SystemTime::UNIX_EPOCH + Duration::from_secs(u64::from(u32::MAX)))
}

impl Keys {
    /// New random keys; the management and inference keys live `lifetime`.
    ///
    /// # Errors
    /// When the operating system gives no randomness.
    pub fn generate(inference_required: bool, lifetime: Duration) -> std::io::Result<Self> {
        Ok(Self {
            management: random_key()?,
            inference: random_key()?,
            api: random_key()?,
            inference_required,
            management_expires: expiry(lifetime),
            inference_expires: expiry(lifetime),
        })
    }

    /// Replaces the `kind` key with a new one that lives `lifetime`.
    ///
    /// # Errors
    /// When the operating system gives no randomness.
    pub fn regenerate(&mut self, kind: KeyKind, lifetime: Duration) -> std::io::Result<()> {
        let (key, expires) = match kind {
            KeyKind::Management => (&mut self.management, &mut self.management_expires),
            KeyKind::Inference => (&mut self.inference, &mut self.inference_expires),
        };
        *key = random_key()?;
        *expires = expiry(lifetime);
        Ok(())
    }

    /// Writes TorchServe's `key_file.json` at `path`, readable by its owner only: a new file (created owner-only)
    /// renamed over the old one, so that a reader never sees half a file and an old file's looser permissions do
    /// not carry over.
    ///
    /// # Errors
    /// When the file cannot be written.
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        let when = |t: SystemTime| humantime::format_rfc3339_millis(t).to_string();
        let body = json!({
            "management": { "key": self.management, "expiration time": when(self.management_expires) },
            "inference": { "key": self.inference, "expiration time": when(self.inference_expires) },
            "API": { "key": self.api },
        });
        let folder = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        let mut file = tempfile::NamedTempFile::new_in(folder)?;
        file.write_all(serde_json::to_string_pretty(&body).unwrap_or_default().as_bytes())?;
        file.as_file().sync_all()?;
        file.persist(path).map(drop).map_err(|e| e.error)
    }

    /// Checks a request to `api` now; health checks and the metrics API need no key.
    ///
    /// # Errors
    /// 401 when the key is missing, wrong or expired.
    pub fn check(&self, api: Api, req: &Request<Incoming>) -> Result<(), ApiError> {
        self.check_at(api, req.uri().path(), bearer(req), SystemTime::now())
    }

    /// Checks a request to `api` for `path` that carries the `Authorization: Bearer` token `given`, at `now`.
    ///
    /// # Errors
    /// 401 when the key is missing, wrong or expired.
    pub fn check_at(&self, api: Api, path: &str, given: Option<&str>, now: SystemTime) -> Result<(), ApiError> {
        let (expected, expires) = match api {
            Api::Management => (&self.management, self.management_expires),
            Api::Inference if self.inference_required && !is_health(path) => (&self.inference, self.inference_expires),
            Api::Inference | Api::Metrics => return Ok(()),
        };
        let which = format!("{} key", api.name());
        check_key(expected, given, &which)?;
        if now >= expires {
            let renew = if api == Api::Management { "management" } else { "inference" };
            return Err(ApiError::unauthorized(format!(
                "Token Authorization failed: the {which} expired at {}; get a new one with \
                 GET /token?type={renew} on the management API and the API key (see key_file.json)",
                humantime::format_rfc3339_seconds(expires)
            )));
        }
        Ok(())
    }
}

/// The token of `Authorization: Bearer <token>`.
#[must_use]
pub fn bearer(req: &Request<Incoming>) -> Option<&str> {
    req.headers().get(AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(bearer_token)
}

/// The token of an `Authorization` value (a header, or gRPC metadata): `Bearer <token>`.
#[must_use]
pub fn bearer_token(value: &str) -> Option<&str> {
    value.strip_prefix("Bearer ").map(str::trim)
}

/// Compares `given` with `expected` in constant time.
fn check_key(expected: &str, given: Option<&str>, which: &str) -> Result<(), ApiError> {
    match given {
        Some(token) if bool::from(token.as_bytes().ct_eq(expected.as_bytes())) => Ok(()),
        Some(_) => Err(ApiError::unauthorized(format!("Token Authorization failed: wrong {which}"))),
        None => Err(ApiError::unauthorized(format!(
            "Token Authorization failed: send `Authorization: Bearer <{which}>` (see key_file.json)"
        ))),
    }
}

fn is_health(path: &str) -> bool {
    path == "/ping" || path.starts_with("/v2/health/")
}

/// The keys `config` asks for, new, written to its `key_file`; `None` when token authorisation is disabled.
///
/// # Errors
/// When the operating system gives no randomness, or the key file cannot be written.
pub fn keys_for(config: &Config) -> Result<Option<Keys>, AuthError> {
    if config.disable_token_authorization {
        tracing::warn!("token authorisation is disabled: anyone who reaches the management API controls the models");
        return Ok(None);
    }
    let keys =
        Keys::generate(config.inference_token_authorization, config.token_expiration).map_err(AuthError::Random)?;
    keys.write(&config.key_file).map_err(|source| AuthError::KeyFile { path: config.key_file.clone(), source })?;
    tracing::info!("token authorisation is on; the keys are in {}", config.key_file.display());
    Ok(Some(keys))
}

/// Why the keys could not be put in place at start-up.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The operating system gave no randomness.
    #[error("cannot generate the token keys: {0}")]
    Random(std::io::Error),
    /// The key file could not be written.
    #[error("cannot write {} (key_file): {source}", path.display())]
    KeyFile {
        /// The key file.
        path: std::path::PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
}

/// The keys in force, and the lock that makes renewals one at a time.
pub struct Tokens {
    current: RwLock<Keys>,
    renewing: tokio::sync::Mutex<()>,
}

impl Tokens {
    /// Puts `keys` in force.
    #[must_use]
    pub fn new(keys: Keys) -> Self {
        Self { current: RwLock::new(keys), renewing: tokio::sync::Mutex::new(()) }
    }

    fn read(&self) -> parking_lot::RwLockReadGuard<'_, Keys> {
        self.current.read()
    }

    /// Checks `given` against the API key (for the token API).
    ///
    /// # Errors
    /// 401 when it is missing or wrong.
    pub fn check_api_key(&self, given: Option<&str>) -> Result<(), ApiError> {
        check_key(&self.read().api, given, "API key")
    }

    /// Checks `req` against the keys in force (see [`Keys::check`]).
    ///
    /// # Errors
    /// 401 when the key is missing, wrong or expired.
    pub fn check(&self, api: Api, req: &Request<Incoming>) -> Result<(), ApiError> {
        self.read().check(api, req)
    }

    /// Checks a call to `api` for `path` (what stands for it among the HTTP paths: health checks need no key)
    /// that carries the token `given`, now.
    ///
    /// # Errors
    /// 401 when the key is missing, wrong or expired.
    pub fn check_token(&self, api: Api, path: &str, given: Option<&str>) -> Result<(), ApiError> {
        self.read().check_at(api, path, given, SystemTime::now())
    }

    /// Replaces the `kind` key: the new keys are written to `path` (on the blocking pool) before they are put in
    /// force, so that the file never holds a key the server refuses; the keys stay readable meanwhile.
    ///
    /// # Errors
    /// When the key file cannot be written: the old key stays in force.
    pub async fn renew(&self, kind: KeyKind, lifetime: Duration, path: &Path) -> Result<(), ApiError> {
        let _one_at_a_time = self.renewing.lock().await;
        let mut renewed = self.read().clone();
        renewed.regenerate(kind, lifetime).map_err(|e| ApiError::internal(e.to_string()))?;
        let (written, path) = (renewed.clone(), path.to_path_buf());
        tokio::task::spawn_blocking(move || written.write(&path).map_err(|e| format!("{}: {e}", path.display())))
            .await
            .map_err(|e| ApiError::internal(e.to_string()))?
            .map_err(|e| ApiError::internal(format!("cannot write the key file {e}")))?;
        *self.current.write() = renewed;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use hyper::StatusCode;

    use super::*;

    const HOUR: Duration = Duration::from_secs(3600);

    #[test]
    fn keys_expire_after_their_lifetime_and_a_new_one_lives_on() {
        let mut keys = Keys::generate(true, HOUR).expect("keys");
        let now = SystemTime::now();
        let management = keys.management.clone();
        assert!(keys.check_at(Api::Management, "/models", Some(&management), now).is_ok());
        let later = now + HOUR + Duration::from_secs(1);
        let expired = keys.check_at(Api::Management, "/models", Some(&management), later).expect_err("expired");
        assert_eq!(expired.status, StatusCode::UNAUTHORIZED);
        assert!(expired.message.contains("expired") && expired.message.contains("type=management"), "{expired:?}");
        assert!(!expired.message.contains(&management), "the key is never echoed");
        // A wrong key is refused as wrong, whether or not the right one has expired.
        let wrong = keys.check_at(Api::Management, "/models", Some("nope"), later).expect_err("wrong");
        assert!(wrong.message.contains("wrong management key"), "{wrong:?}");

        let inference = keys.inference.clone();
        keys.regenerate(KeyKind::Management, 2 * HOUR).expect("regenerated");
        assert_ne!(keys.management, management);
        assert!(keys.check_at(Api::Management, "/models", Some(&keys.management), later).is_ok());
        assert!(keys.check_at(Api::Management, "/models", Some(&management), now).is_err(), "the old key is gone");
        assert_eq!(keys.inference, inference, "only the key asked for changes");
        assert!(keys.check_at(Api::Inference, "/predictions/m", Some(&inference), later).is_err());
        assert!(keys.check_at(Api::Inference, "/ping", None, later).is_ok(), "health checks need no key");
        assert!(keys.check_at(Api::Metrics, "/metrics", None, later).is_ok());
    }

    #[test]
    fn the_key_file_has_torchserves_fields() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("key_file.json");
        let keys = Keys::generate(false, HOUR).expect("keys");
        keys.write(&path).expect("written");
        let file: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).expect("read")).expect("JSON");
        assert_eq!(file["management"]["key"], keys.management.as_str());
        assert_eq!(file["inference"]["key"], keys.inference.as_str());
        assert_eq!(file["API"]["key"], keys.api.as_str());
        let expires = file["management"]["expiration time"].as_str().expect("expiration time");
        let parsed = humantime::parse_rfc3339(expires).expect("RFC 3339");
        let lifetime = parsed.duration_since(SystemTime::now()).expect("in the future");
        assert!(lifetime <= HOUR && lifetime > HOUR - Duration::from_secs(600), "{expires}");
    }
}
