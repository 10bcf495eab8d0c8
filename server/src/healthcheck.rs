//! `ferroserve healthcheck`: asks a running server's `GET /ping` whether it is healthy, for a container's
//! `HEALTHCHECK` and compose's `healthcheck:`. The images have no shell and no curl, so the binary checks itself.
//! An `https://` inference address is asked over TLS ([`Trust`]): trusting the CAs of `--ca-cert`, or else exactly
//! the certificate the configuration serves (`certificate_file`), whatever host names it holds.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use http_body_util::{BodyExt, Empty};
use hyper::{body::Bytes, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use rustls::{
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    crypto::{verify_tls12_signature, verify_tls13_signature, WebPkiSupportedAlgorithms},
    pki_types::{pem::PemObject, CertificateDer, ServerName, UnixTime},
    ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};

use crate::config::{Api, Config};

/// Which server certificate an `https://` check accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trust {
    /// One signed by a CA of this PEM file (`--ca-cert`), for the URL's host.
    Ca(PathBuf),
    /// Exactly the first certificate of this PEM file (the configured `certificate_file`): the server asked is
    /// the one configured on this machine, so its certificate is known, and its names need not match the
    /// loopback address asked.
    Pinned(PathBuf),
    /// None: an `https://` URL is refused.
    Nothing,
}

impl Trust {
    /// `--ca-cert` when given, else the `certificate_file` of `config`, else nothing.
    #[must_use]
    pub fn from(config: &Config, ca_cert: Option<&Path>) -> Self {
        match (ca_cert, &config.tls.certificate_file) {
            (Some(ca), _) => Self::Ca(ca.to_path_buf()),
            (None, Some(cert)) => Self::Pinned(cert.clone()),
            (None, None) => Self::Nothing,
        }
    }
}

/// Why the server is not healthy, or could not be asked.
#[derive(Debug, thiserror::Error)]
pub enum HealthError {
    /// The URL is not an `http://` or `https://` address with a host.
    #[error("{url} is not an http:// or https:// URL with a host: {reason}")]
    Url {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// An `https://` URL, but no certificate to trust, or one that cannot be read.
    #[error("cannot check {url} over TLS: {reason}")]
    Trust {
        /// The URL as given.
        url: String,
        /// What is missing or wrong.
        reason: String,
    },
    /// No connection could be made.
    #[error("cannot connect to {authority}: {source}")]
    Connect {
        /// `host:port`.
        authority: String,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// The TLS handshake failed (a certificate not trusted, a server that does not speak TLS).
    #[error("the TLS handshake with {authority} failed: {source}")]
    Tls {
        /// `host:port`.
        authority: String,
        /// rustls's error, as an I/O error.
        source: std::io::Error,
    },
    /// The exchange failed after the connection was made.
    #[error("the request to {url} failed: {source}")]
    Http {
        /// The URL asked.
        url: String,
        /// hyper's error.
        source: hyper::Error,
    },
    /// No answer within the time allowed.
    #[error("no answer from {url} within {timeout:?}")]
    Timeout {
        /// The URL asked.
        url: String,
        /// The time allowed.
        timeout: Duration,
    },
    /// The server answered, but not 200 (a server that is starting or stopping answers 503).
    #[error("{url} answered {status}: {body}")]
    Unhealthy {
        /// The URL asked.
        url: String,
        /// The status it answered.
        status: StatusCode,
        /// Its body, as text.
        body: String,
    },
}

/// The `/ping` URL of the inference API that `config` describes, asked from the same machine: a wildcard address
/// (`0.0.0.0`, `[::]`) becomes the loopback address of its family.
#[must_use]
pub fn ping_url(config: &Config) -> String {
    let addr = config.address(Api::Inference);
    let ip = match addr.ip() {
        ip if !ip.is_unspecified() => ip,
        std::net::IpAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
        std::net::IpAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
    };
    let scheme = if config.tls.https[Api::Inference.index()] { "https" } else { "http" };
    format!("{scheme}://{}/ping", SocketAddr::new(ip, addr.port()))
}

/// Sends `GET url` and succeeds when the answer is 200 within `timeout`; returns the body. An `https://` URL is
/// asked over TLS, accepting the certificates `trust` says.
///
/// # Errors
/// [`HealthError`] saying what failed: the URL, the trust, the connection, the handshake, the exchange, the time
/// or the status.
pub async fn check(url: &str, trust: &Trust, timeout: Duration) -> Result<String, HealthError> {
    let bad = |reason: &str| HealthError::Url { url: url.to_string(), reason: reason.to_string() };
    let uri: Uri = url.parse().map_err(|e: hyper::http::uri::InvalidUri| bad(&e.to_string()))?;
    let tls = match uri.scheme_str() {
        Some("http") => None,
        Some("https") => Some(connector(url, trust)?),
        _ => return Err(bad("only http:// and https:// are supported")),
    };
    let authority = uri.authority().ok_or_else(|| bad("no host"))?.clone();
    let host = authority.host().trim_matches(['[', ']']).to_string();
    let port = authority.port_u16().unwrap_or(if tls.is_some() { 443 } else { 80 });
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let asked = async {
        let stream = tokio::net::TcpStream::connect((host.as_str(), port))
            .await
            .map_err(|source| HealthError::Connect { authority: authority.to_string(), source })?;
        let Some(tls) = tls else {
            return ask(stream, url, authority.as_str(), path).await;
        };
        let name = ServerName::try_from(host.clone()).map_err(|e| bad(&e.to_string()))?;
        let stream = tls
            .connect(name, stream)
            .await
            .map_err(|source| HealthError::Tls { authority: authority.to_string(), source })?;
        ask(stream, url, authority.as_str(), path).await
    };
    tokio::time::timeout(timeout, asked)
        .await
        .unwrap_or_else(|_| Err(HealthError::Timeout { url: url.to_string(), timeout }))
}

/// `GET path` over `stream` (HTTP/1.1): the body when the answer is 200.
async fn ask<S>(stream: S, url: &str, authority: &str, path: &str) -> Result<String, HealthError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let failed = |source| HealthError::Http { url: url.to_string(), source };
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(failed)?;
    tokio::spawn(connection);
    let request = hyper::Request::get(path)
        .header(hyper::header::HOST, authority)
        .body(Empty::<Bytes>::new())
        .map_err(|e| HealthError::Url { url: url.to_string(), reason: e.to_string() })?;
    let response = sender.send_request(request).await.map_err(failed)?;
    let status = response.status();
    let body = response.into_body().collect().await.map_err(failed)?.to_bytes();
    let body = String::from_utf8_lossy(&body).trim().to_string();
    if status == StatusCode::OK {
        Ok(body)
    } else {
        Err(HealthError::Unhealthy { url: url.to_string(), status, body })
    }
}

/// The TLS client that accepts what `trust` says, speaking HTTP/1.1.
fn connector(url: &str, trust: &Trust) -> Result<tokio_rustls::TlsConnector, HealthError> {
    let failed = |reason: String| HealthError::Trust { url: url.to_string(), reason };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let algorithms = provider.signature_verification_algorithms;
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| failed(e.to_string()))?;
    let certificates = |path: &Path| {
        CertificateDer::pem_file_iter(path)
            .and_then(Iterator::collect::<Result<Vec<_>, _>>)
            .map_err(|e| failed(format!("cannot read the certificates of {}: {e}", path.display())))
    };
    let mut config = match trust {
        Trust::Nothing => {
            return Err(failed(
                "no certificate to trust: give --ca-cert, or certificate_file in the configuration".into(),
            ))
        }
        Trust::Ca(path) => {
            let mut roots = RootCertStore::empty();
            let (added, _) = roots.add_parsable_certificates(certificates(path)?);
            if added == 0 {
                return Err(failed(format!("{} holds no CA certificate", path.display())));
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        Trust::Pinned(path) => {
            let Some(leaf) = certificates(path)?.into_iter().next() else {
                return Err(failed(format!("{} holds no certificate", path.display())));
            };
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(Pinned { leaf, algorithms }))
                .with_no_client_auth()
        }
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

/// Accepts exactly one server certificate, whatever its names and issuer; the handshake's signatures are still
/// checked, so the server must hold its key.
#[derive(Debug)]
struct Pinned {
    leaf: CertificateDer<'static>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if end_entity.as_ref() == self.leaf.as_ref() {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General("the server's certificate is not the configured certificate_file".into()))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        signature: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, signature, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        signature: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, signature, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(inference: &str) -> Config {
        let mut config = Config::default();
        config.apply(vec![("inference_address".into(), inference.into(), None)]).expect("address");
        config
    }

    #[test]
    fn ping_url_asks_loopback_for_a_wildcard_address() {
        assert_eq!(ping_url(&config("http://0.0.0.0:8080")), "http://127.0.0.1:8080/ping");
        assert_eq!(ping_url(&config("http://[::]:9000")), "http://[::1]:9000/ping");
        assert_eq!(ping_url(&config("http://10.1.2.3:7")), "http://10.1.2.3:7/ping");
        assert_eq!(ping_url(&Config::default()), "http://127.0.0.1:8080/ping");
    }

    #[tokio::test]
    async fn refuses_what_is_not_an_http_url_and_https_with_nothing_to_trust() {
        for url in ["ftp://127.0.0.1:1/ping", "127.0.0.1:8080", "http:///ping", "not a url"] {
            let error = check(url, &Trust::Nothing, Duration::from_secs(1)).await.expect_err(url);
            assert!(matches!(error, HealthError::Url { .. }), "{url}: {error}");
        }
        let error = check("https://127.0.0.1:1/ping", &Trust::Nothing, Duration::from_secs(1)).await.expect_err("");
        assert!(matches!(error, HealthError::Trust { .. }) && error.to_string().contains("--ca-cert"), "{error}");
        let missing = Trust::Ca("/nonexistent/ca.pem".into());
        let error = check("https://127.0.0.1:1/ping", &missing, Duration::from_secs(1)).await.expect_err("");
        assert!(error.to_string().contains("/nonexistent/ca.pem"), "{error}");
    }

    #[test]
    fn an_https_address_is_asked_over_https_trusting_ca_cert_else_the_configured_certificate() {
        let mut https = config("https://0.0.0.0:8443");
        assert_eq!(ping_url(&https), "https://127.0.0.1:8443/ping");
        assert_eq!(Trust::from(&https, None), Trust::Nothing);
        https.apply(vec![("certificate_file".into(), "/etc/cert.pem".into(), None)]).expect("a path");
        assert_eq!(Trust::from(&https, None), Trust::Pinned("/etc/cert.pem".into()));
        assert_eq!(Trust::from(&https, Some(Path::new("ca.pem"))), Trust::Ca("ca.pem".into()));
    }

    #[tokio::test]
    async fn a_closed_port_is_a_connection_error() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        drop(listener);
        let error =
            check(&format!("http://{addr}/ping"), &Trust::Nothing, Duration::from_secs(5)).await.expect_err("closed");
        assert!(matches!(error, HealthError::Connect { .. }), "{error}");
    }

    #[tokio::test]
    async fn a_silent_server_times_out() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        // Accepted by the kernel's backlog, never answered.
        let error = check(&format!("http://{addr}/ping"), &Trust::Nothing, Duration::from_millis(200))
            .await
            .expect_err("silent");
        assert!(matches!(error, HealthError::Timeout { .. }), "{error}");
        drop(listener);
    }
}
