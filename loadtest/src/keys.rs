//! Token authorisation keys, as TorchServe (and ferroserve) issue them: `Authorization: Bearer <key>`, with
//! the keys in `key_file.json` (`{"management": {"key": ...}, "inference": {"key": ...}}`) or given on the
//! command line.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use thiserror::Error;

/// The key file cannot be used.
#[derive(Debug, Error)]
pub enum KeyError {
    /// It cannot be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// It is not TorchServe's key file format.
    #[error("{path} is not a key_file.json: {reason}")]
    Format {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

/// The keys a run sends; `None` sends no `Authorization` header.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Keys {
    /// For the management API.
    pub management: Option<String>,
    /// For the inference API.
    pub inference: Option<String>,
}

#[derive(Deserialize)]
struct KeyFile {
    management: Option<Entry>,
    inference: Option<Entry>,
}

#[derive(Deserialize)]
struct Entry {
    key: String,
}

impl Keys {
    /// Reads `key_file.json`.
    ///
    /// # Errors
    /// [`KeyError`] when the file cannot be read or is not in the format.
    pub fn from_file(path: &Path) -> Result<Self, KeyError> {
        let text = std::fs::read(path).map_err(|source| KeyError::Io { path: path.to_path_buf(), source })?;
        let file: KeyFile = serde_json::from_slice(&text)
            .map_err(|e| KeyError::Format { path: path.to_path_buf(), reason: e.to_string() })?;
        Ok(Self { management: file.management.map(|e| e.key), inference: file.inference.map(|e| e.key) })
    }

    /// The keys from an optional file, overridden by keys given one by one.
    ///
    /// # Errors
    /// [`KeyError`] from the file.
    pub fn resolve(file: Option<&Path>, management: Option<&str>, inference: Option<&str>) -> Result<Self, KeyError> {
        let base = file.map(Self::from_file).transpose()?.unwrap_or_default();
        Ok(Self {
            management: management.map(str::to_string).or(base.management),
            inference: inference.map(str::to_string).or(base.inference),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_files_and_flags() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("key_file.json");
        std::fs::write(&path, r#"{"management": {"key": "m1"}, "inference": {"key": "i1"}, "API": {"key": "a"}}"#)
            .expect("write");
        let keys = Keys::resolve(Some(&path), None, Some("i2")).expect("keys");
        assert_eq!(keys, Keys { management: Some("m1".into()), inference: Some("i2".into()) });
        assert_eq!(Keys::resolve(None, None, None).expect("keys"), Keys::default());
        std::fs::write(&path, "[]").expect("write");
        assert!(matches!(Keys::from_file(&path), Err(KeyError::Format { .. })));
    }
}
