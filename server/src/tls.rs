//! TLS of the listeners, with rustls (ring): the key and certificate of `private_key_file` and
//! `certificate_file` read and checked at start-up (readable, PEM, the key matching the certificate, the
//! certificate valid now), ALPN `h2` and `http/1.1` so that HTTP/2 and gRPC work, and the handshake of each
//! connection, bounded in time, on the connection's own task. The certificate is held behind a resolver, so that
//! [`Tls::reload`] (on SIGHUP, or when the files change: [`Tls::reload_on_change`]) swaps it for new handshakes
//! while open connections carry on.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use parking_lot::RwLock;
use rustls::{
    crypto::CryptoProvider,
    server::{ClientHello, ResolvesServerCert},
    sign::CertifiedKey,
    ServerConfig,
};
use rustls_pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};
use tokio_rustls::{server::TlsStream, TlsAcceptor};

use crate::tls_config::TlsConfig;

/// How long a client may take to complete the TLS handshake (its first byte included): a silent client must not
/// hold a connection slot for ever.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why TLS cannot be set up. Each names the key of `config.properties` and the file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// TLS is asked for but a file is not named.
    #[error("{key} is not set: an https:// address or enable_grpc_ssl=true needs private_key_file and certificate_file (PEM)")]
    Missing {
        /// The key not set.
        key: &'static str,
    },
    /// `keystore` is set: PKCS#12 is not read.
    #[error(
        "keystore {0} (PKCS#12) is not supported: convert it to PEM (`openssl pkcs12 -in KEYSTORE -nocerts -nodes \
         -out key.pem` and `openssl pkcs12 -in KEYSTORE -nokeys -out cert.pem`) and set private_key_file and \
         certificate_file"
    )]
    Keystore(PathBuf),
    /// A file cannot be read.
    #[error("cannot read {key} {}: {source}", path.display())]
    Read {
        /// The key naming the file.
        key: &'static str,
        /// The file.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// A file holds nothing usable.
    #[error("{key} {}: {message}", path.display())]
    Invalid {
        /// The key naming the file.
        key: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// The private key is not the certificate's.
    #[error("private_key_file {} does not match certificate_file {}: {message}", key.display(), cert.display())]
    Mismatch {
        /// The key file.
        key: PathBuf,
        /// The certificate file.
        cert: PathBuf,
        /// What rustls said.
        message: String,
    },
}

/// The TLS side of the listeners: the server configuration, shared by every TLS listener, and the files it was
/// read from, read again by [`Tls::reload`].
#[derive(Debug, Clone)]
pub struct Tls {
    server: Arc<ServerConfig>,
    resolver: Arc<Resolver>,
    files: Files,
}

/// Where the key and the certificate are.
#[derive(Debug, Clone)]
struct Files {
    key: PathBuf,
    cert: PathBuf,
}

/// Hands every handshake the current certificate; [`Tls::reload`] replaces it.
#[derive(Debug)]
struct Resolver(RwLock<Arc<CertifiedKey>>);

impl ResolvesServerCert for Resolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(&self.0.read()))
    }
}

impl Tls {
    /// Reads and checks the key and certificate when a listener serves TLS; `None` when none does.
    ///
    /// # Errors
    /// [`TlsError`] naming the key and file: not set, a `keystore`, unreadable, not PEM, a key that is not the
    /// certificate's, a certificate that has expired or is not valid yet.
    pub fn from_config(config: &TlsConfig) -> Result<Option<Self>, TlsError> {
        if !config.enabled() {
            return Ok(None);
        }
        if let Some(keystore) = &config.keystore {
            return Err(TlsError::Keystore(keystore.clone()));
        }
        let key = config.private_key_file.clone().ok_or(TlsError::Missing { key: "private_key_file" })?;
        let cert = config.certificate_file.clone().ok_or(TlsError::Missing { key: "certificate_file" })?;
        let files = Files { key, cert };
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let resolver = Arc::new(Resolver(RwLock::new(Arc::new(files.load(&provider)?))));
        let mut server = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| files.invalid_cert(e.to_string()))?
            .with_no_client_auth()
            .with_cert_resolver(Arc::clone(&resolver) as Arc<dyn ResolvesServerCert>);
        server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Some(Self { server: Arc::new(server), resolver, files }))
    }

    /// Reads the key and certificate again and, when they pass the start-up checks, serves them to the next
    /// handshakes; open connections keep theirs. On error the current certificate stays.
    ///
    /// # Errors
    /// [`TlsError`] as [`Tls::from_config`].
    pub fn reload(&self) -> Result<(), TlsError> {
        let provider = rustls::crypto::ring::default_provider();
        let certified = self.files.load(&provider)?;
        *self.resolver.0.write() = Arc::new(certified);
        Ok(())
    }

    /// Reloads the key and certificate ([`Tls::reload`]) whenever either file changes (its modification time,
    /// size or presence), looked at every `every`: a renewal tool that rewrites the files (certbot, cert-manager's
    /// secret volume) needs no SIGHUP. A pair caught half written fails the checks, is logged and not used; the
    /// second file's change brings the whole pair. Runs until the runtime stops.
    pub async fn reload_on_change(self, every: Duration) {
        let mut seen = self.files.stamp();
        let mut ticks = tokio::time::interval(every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            ticks.tick().await;
            let now = self.files.stamp();
            if now == seen {
                continue;
            }
            seen = now;
            match self.reload() {
                Ok(()) => tracing::info!("the TLS key or certificate file changed: reloaded"),
                Err(error) => tracing::error!("the TLS files changed: {error}; the current certificate stays"),
            }
        }
    }

    /// The server certificate the next handshakes get (the first of its chain).
    #[must_use]
    pub fn certificate(&self) -> CertificateDer<'static> {
        self.resolver.0.read().cert.first().cloned().unwrap_or_else(|| CertificateDer::from(Vec::new()))
    }

    /// The TLS handshake of an accepted connection, all within [`HANDSHAKE_TIMEOUT`]. A client that speaks plain
    /// HTTP is answered 400 (saying to use https) and closed; a failed or slow handshake closes the connection.
    /// Each ends with a log line; `None` then.
    pub(crate) async fn handshake(
        &self,
        stream: TcpStream,
        peer: std::net::SocketAddr,
    ) -> Option<TlsStream<TcpStream>> {
        let negotiated = tokio::time::timeout(HANDSHAKE_TIMEOUT, self.negotiate(stream, peer)).await;
        negotiated.unwrap_or_else(|_| {
            tracing::info!(%peer, "no TLS handshake within {HANDSHAKE_TIMEOUT:?}: closed");
            None
        })
    }

    async fn negotiate(&self, stream: TcpStream, peer: std::net::SocketAddr) -> Option<TlsStream<TcpStream>> {
        let mut first = [0u8; 1];
        match stream.peek(&mut first).await {
            Ok(1..) if first[0] != HANDSHAKE_RECORD => {
                tracing::info!(%peer, "plain HTTP on a TLS port: answered 400 and closed");
                refuse_plain(stream).await;
                return None;
            }
            Ok(1..) => {}
            Ok(_) | Err(_) => return None,
        }
        match TlsAcceptor::from(Arc::clone(&self.server)).accept(stream).await {
            Ok(tls) => Some(tls),
            Err(error) => {
                tracing::info!(%peer, %error, "TLS handshake failed");
                None
            }
        }
    }
}

/// The first byte of a TLS connection: a handshake record.
const HANDSHAKE_RECORD: u8 = 0x16;

/// Tells a plain-HTTP client to use https, then closes after reading what it still sends for a moment (closing
/// with unread data would reset the connection before the client reads the answer).
async fn refuse_plain(mut stream: TcpStream) {
    const BODY: &str = "this port serves TLS: use https://\n";
    let answer = format!(
        "HTTP/1.1 400 Bad Request\r\ncontent-type: text/plain\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{BODY}",
        BODY.len()
    );
    if stream.write_all(answer.as_bytes()).await.is_err() {
        return;
    }
    let _ = stream.shutdown().await;
    let mut sink = [0u8; 4096];
    let drain = async { while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {} };
    let _ = tokio::time::timeout(Duration::from_secs(1), drain).await;
}

/// What tells that a file changed: its modification time and size, `None` while it cannot be read.
type Stamp = Option<(std::time::SystemTime, u64)>;

impl Files {
    /// The stamps of the key and the certificate (following symbolic links, as a secret volume swaps them).
    fn stamp(&self) -> [Stamp; 2] {
        let stamp = |path: &Path| std::fs::metadata(path).ok().and_then(|m| Some((m.modified().ok()?, m.len())));
        [stamp(&self.key), stamp(&self.cert)]
    }

    /// The key and certificate, read and checked.
    fn load(&self, provider: &CryptoProvider) -> Result<CertifiedKey, TlsError> {
        let key_pem = read(&self.key, "private_key_file")?;
        let cert_pem = read(&self.cert, "certificate_file")?;
        let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
            self.invalid_key(format!(
                "no private key in PEM ({e}): give a PKCS#8 (`PRIVATE KEY`), RSA (`RSA PRIVATE KEY`) or EC \
                 (`EC PRIVATE KEY`) key, not encrypted"
            ))
        })?;
        let certs = CertificateDer::pem_slice_iter(&cert_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| self.invalid_cert(format!("not a PEM certificate chain: {e}")))?;
        let Some(leaf) = certs.first() else {
            return Err(self.invalid_cert("holds no certificate (`BEGIN CERTIFICATE`)".into()));
        };
        check_validity(leaf).map_err(|message| self.invalid_cert(message))?;
        let signing = provider.key_provider.load_private_key(key).map_err(|e| self.invalid_key(e.to_string()))?;
        let certified = CertifiedKey::new(certs, signing);
        match certified.keys_match() {
            Ok(()) => Ok(certified),
            Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {
                tracing::warn!(key = %self.key.display(), "cannot check that the private key matches the certificate");
                Ok(certified)
            }
            Err(error) => {
                Err(TlsError::Mismatch { key: self.key.clone(), cert: self.cert.clone(), message: error.to_string() })
            }
        }
    }

    fn invalid_key(&self, message: String) -> TlsError {
        TlsError::Invalid { key: "private_key_file", path: self.key.clone(), message }
    }

    fn invalid_cert(&self, message: String) -> TlsError {
        TlsError::Invalid { key: "certificate_file", path: self.cert.clone(), message }
    }
}

fn read(path: &Path, key: &'static str) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read { key, path: path.to_path_buf(), source })
}

/// The server's certificate must be valid now: clients refuse an expired one, so a server that starts with it
/// would fail every handshake while looking healthy.
fn check_validity(leaf: &CertificateDer<'_>) -> Result<(), String> {
    let (_, cert) = x509_parser::parse_x509_certificate(leaf).map_err(|e| format!("not an X.509 certificate: {e}"))?;
    let validity = cert.validity();
    let now = x509_parser::time::ASN1Time::now();
    if now > validity.not_after {
        return Err(format!("the certificate expired on {}", validity.not_after));
    }
    if now < validity.not_before {
        return Err(format!("the certificate is not valid before {}", validity.not_before));
    }
    Ok(())
}
