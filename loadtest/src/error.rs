//! The error of a command: each layer's error, plus the few that belong to the commands themselves.

use std::path::PathBuf;

use thiserror::Error;

use crate::{body::BodyError, client::HttpError, grpc::GrpcError, keys::KeyError, tune::properties::PropertiesError};

/// Why a command failed.
#[derive(Debug, Error)]
pub enum Error {
    /// Bodies could not be prepared.
    #[error(transparent)]
    Body(#[from] BodyError),
    /// A control-plane request failed (model metadata, management API).
    #[error(transparent)]
    Http(#[from] HttpError),
    /// The gRPC target cannot be reached or described (`--grpc`).
    #[error(transparent)]
    Grpc(#[from] GrpcError),
    /// `--key-file` cannot be used.
    #[error(transparent)]
    Keys(#[from] KeyError),
    /// `--write-config` could not rewrite the file.
    #[error(transparent)]
    Properties(#[from] PropertiesError),
    /// A report, log, plot or config file could not be written or read.
    #[error("{path}: {source}")]
    File {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A report could not be serialised.
    #[error("JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// The plot could not be drawn.
    #[error("plot {path}: {message}")]
    Plot {
        /// The file.
        path: PathBuf,
        /// Why.
        message: String,
    },
    /// Flags that make no sense together or out of range.
    #[error("{0}")]
    Usage(String),
}

impl Error {
    /// Wraps an I/O error with the file it concerns.
    pub fn file(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> Self + '_ {
        move |source| Error::File { path: path.to_path_buf(), source }
    }
}
