//! The TLS keys of `config.properties`, as TorchServe names them: which listeners serve TLS (an `https://`
//! address, `enable_grpc_ssl`), and where the key and certificate are (`private_key_file`, `certificate_file`,
//! or a PKCS#12 `keystore`, which ferroserve refuses). Only the settings: `crate::tls` reads the files.

use std::path::PathBuf;

/// The TLS settings, off by default.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsConfig {
    /// Whether each HTTP API (in the order of `Api::ALL`) has an `https://` address.
    pub https: [bool; 3],
    /// Whether the gRPC services serve TLS (`enable_grpc_ssl`, TorchServe's key, default false).
    pub grpc: bool,
    /// The private key, PEM: PKCS#8, RSA (PKCS#1) or EC (SEC1) (`private_key_file`).
    pub private_key_file: Option<PathBuf>,
    /// The certificate chain, PEM, the server's certificate first (`certificate_file`).
    pub certificate_file: Option<PathBuf>,
    /// TorchServe's PKCS#12 key store (`keystore`): refused at start-up, naming the PEM keys to use instead.
    pub keystore: Option<PathBuf>,
}

impl TlsConfig {
    /// Whether any listener serves TLS.
    #[must_use]
    pub fn enabled(&self) -> bool {
        self.grpc || self.https.iter().any(|on| *on)
    }
}
