//! The HTTP side: one hyper-util client with a connection pool for the whole run, over plain HTTP or TLS
//! (rustls, trusting the system's roots or the `--ca-cert` file), the inference endpoint of each protocol, and the
//! timed exchange of one request (status, bytes and the server's timing headers).

use std::{path::Path, sync::Arc, time::Duration};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{header, Method, Request, Uri};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::{
    client::legacy::{connect::HttpConnector, Client},
    rt::{TokioExecutor, TokioTimer},
};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::body::BodySet;
use crate::outcome::server_timing;
pub use crate::outcome::{Outcome, ServerTiming};

/// The pooled client every request goes through, `http://` and `https://` alike.
pub type HttpClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// A control-plane request (metadata, management, metrics) failed.
#[derive(Debug, Error)]
pub enum HttpError {
    /// The CA certificates of `--ca-cert` cannot be used.
    #[error("--ca-cert {}: {message}", path.display())]
    CaCert {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        message: String,
    },
    /// The URL is not a valid `http://` or `https://` URI.
    #[error("bad URL `{url}`: {reason}")]
    Url {
        /// The URL.
        url: String,
        /// Why.
        reason: String,
    },
    /// The connection or the exchange failed.
    #[error("{method} {url}: {source}")]
    Transport {
        /// GET, PUT, ...
        method: Method,
        /// The URL.
        url: String,
        /// Why.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The server answered with an error status.
    #[error("{method} {url}: HTTP {status}: {body}")]
    Status {
        /// GET, PUT, ...
        method: Method,
        /// The URL.
        url: String,
        /// The status code.
        status: u16,
        /// The start of the body, for the message.
        body: String,
    },
}

/// Builds the client: HTTP/1.1, keep-alive, idle connections kept so that they are reused; `https://` URLs
/// trust the system's root certificates.
pub fn http_client() -> HttpClient {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = HttpsConnectorBuilder::new().with_provider_and_native_roots(provider).unwrap_or_else(|error| {
        tracing::debug!(%error, "no system root certificates: https:// needs --ca-cert");
        HttpsConnectorBuilder::new().with_tls_config(tls_config(rustls::RootCertStore::empty()))
    });
    build(tls)
}

/// Builds the client as [`http_client`] does, but `https://` URLs trust only the CA certificates (PEM) in
/// `ca_cert`: a test CA, a private one.
///
/// # Errors
/// [`HttpError::CaCert`] when the file cannot be read or holds no usable certificate.
pub fn http_client_trusting(ca_cert: &Path) -> Result<HttpClient, HttpError> {
    let bad = |message: String| HttpError::CaCert { path: ca_cert.to_path_buf(), message };
    let pem = std::fs::read(ca_cert).map_err(|e| bad(e.to_string()))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pki_types::pem::PemObject::pem_slice_iter(&pem) {
        let cert: rustls_pki_types::CertificateDer<'_> = cert.map_err(|e| bad(format!("not PEM: {e}")))?;
        roots.add(cert).map_err(|e| bad(e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(bad("holds no certificate (`BEGIN CERTIFICATE`)".into()));
    }
    Ok(build(HttpsConnectorBuilder::new().with_tls_config(tls_config(roots))))
}

/// rustls (ring) trusting `roots`, offering HTTP/1.1.
fn tls_config(roots: rustls::RootCertStore) -> rustls::ClientConfig {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap_or_else(|_| rustls::ClientConfig::builder_with_protocol_versions(rustls::DEFAULT_VERSIONS));
    builder.with_root_certificates(roots).with_no_client_auth()
}

fn build(tls: HttpsConnectorBuilder<hyper_rustls::builderstates::WantsSchemes>) -> HttpClient {
    let mut http = HttpConnector::new();
    http.set_nodelay(true);
    http.enforce_http(false);
    let connector = tls.https_or_http().enable_http1().wrap_connector(http);
    Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(usize::MAX)
        .build(connector)
}

/// The inference protocol a server speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Protocol {
    /// TorchServe's `POST /predictions/{model}[/{version}]` (ferroserve's too).
    Torchserve,
    /// KServe v2's `POST /v2/models/{model}[/versions/{version}]/infer` (Triton, ferroserve).
    KserveV2,
}

impl Protocol {
    /// The inference path for a model.
    pub fn infer_path(self, model: &str, version: Option<&str>) -> String {
        match (self, version) {
            (Protocol::Torchserve, None) => format!("/predictions/{model}"),
            (Protocol::Torchserve, Some(v)) => format!("/predictions/{model}/{v}"),
            (Protocol::KserveV2, None) => format!("/v2/models/{model}/infer"),
            (Protocol::KserveV2, Some(v)) => format!("/v2/models/{model}/versions/{v}/infer"),
        }
    }
}

/// Joins a base URL and a path, and checks the result.
///
/// # Errors
/// [`HttpError::Url`] when the result is not an `http://` or `https://` URI.
pub fn join_url(base: &str, path: &str) -> Result<Uri, HttpError> {
    let url = format!("{}{}", base.trim_end_matches('/'), path);
    let uri: Uri = url
        .parse()
        .map_err(|e: hyper::http::uri::InvalidUri| HttpError::Url { url: url.clone(), reason: e.to_string() })?;
    if !matches!(uri.scheme_str(), Some("http" | "https")) {
        return Err(HttpError::Url { url, reason: "give an http:// or https:// URL".into() });
    }
    Ok(uri)
}

/// Sends a control-plane request (with `Authorization: Bearer <key>` when a key is given) and reads the whole
/// answer; a non-2xx status is an error.
///
/// # Errors
/// [`HttpError::Url`], [`HttpError::Transport`] (including a 10 s timeout) or [`HttpError::Status`].
pub async fn fetch(client: &HttpClient, method: Method, uri: &Uri, key: Option<&str>) -> Result<Bytes, HttpError> {
    let url = uri.to_string();
    let transport = |source: Box<dyn std::error::Error + Send + Sync>| HttpError::Transport {
        method: method.clone(),
        url: url.clone(),
        source,
    };
    let mut request = Request::builder().method(method.clone()).uri(uri.clone());
    if let Some(key) = key {
        request = request.header(header::AUTHORIZATION, format!("Bearer {key}"));
    }
    let request = request.body(Full::new(Bytes::new())).map_err(|e| transport(e.into()))?;
    let exchange = async {
        let response = client.request(request).await.map_err(|e| transport(e.into()))?;
        let status = response.status();
        let body = response.into_body().collect().await.map_err(|e| transport(e.into()))?;
        Ok::<_, HttpError>((status, body.to_bytes()))
    };
    let (status, body) =
        tokio::time::timeout(Duration::from_secs(10), exchange).await.map_err(|e| transport(e.into()))??;
    if !status.is_success() {
        let text = String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned();
        return Err(HttpError::Status { method, url, status: status.as_u16(), body: text });
    }
    Ok(body)
}

/// Where and what the load sends: the inference URI, the bodies and the per-request timeout.
#[derive(Debug)]
pub struct Target {
    wire: Wire,
    uri: Uri,
    bodies: BodySet,
    timeout: Duration,
    authorization: Option<header::HeaderValue>,
}

/// How requests travel.
// One per run: its size does not matter, and boxing the client would cost every request an indirection.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
enum Wire {
    /// POSTed by the pooled HTTP/1.1 client.
    Http(HttpClient),
    /// KServe v2 `ModelInfer` calls over HTTP/2 (the bodies are framed requests).
    Grpc(crate::grpc::Channels),
}

impl Target {
    /// A target over an existing client.
    pub fn new(client: HttpClient, uri: Uri, bodies: BodySet, timeout: Duration) -> Self {
        Self { wire: Wire::Http(client), uri, bodies, timeout, authorization: None }
    }

    /// A gRPC target: `bodies` are framed `ModelInfer` requests (see [`crate::grpc::Channels::requests`]) sent to
    /// `uri` over `channels`.
    pub fn grpc(channels: crate::grpc::Channels, uri: Uri, bodies: BodySet, timeout: Duration) -> Self {
        Self { wire: Wire::Grpc(channels), uri, bodies, timeout, authorization: None }
    }

    /// Sends `Authorization: Bearer <key>` with every request (servers with inference token authorisation).
    pub fn with_key(mut self, key: Option<&str>) -> Self {
        self.authorization = key.and_then(|k| header::HeaderValue::from_str(&format!("Bearer {k}")).ok());
        self
    }

    /// The per-request timeout.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The inference URI.
    pub fn uri(&self) -> &Uri {
        &self.uri
    }

    /// How many distinct bodies are sent.
    pub fn body_count(&self) -> usize {
        self.bodies.len()
    }

    /// Sends the next body and reads the whole answer. Returns the outcome and the bytes sent.
    pub async fn send(&self) -> (Outcome, u64) {
        let body = self.bodies.next_body();
        let sent = body.len() as u64;
        let client = match &self.wire {
            Wire::Http(client) => client,
            Wire::Grpc(channels) => {
                let call = channels.send(&self.uri, body, self.authorization.as_ref());
                let outcome = tokio::time::timeout(self.timeout, call).await.unwrap_or(Outcome::Timeout);
                return (outcome, sent);
            }
        };
        let mut request = Request::builder()
            .method(Method::POST)
            .uri(self.uri.clone())
            .header(header::CONTENT_TYPE, "application/json");
        if let Some(authorization) = &self.authorization {
            request = request.header(header::AUTHORIZATION, authorization.clone());
        }
        let request = request.body(Full::new(body));
        let Ok(request) = request else {
            return (Outcome::Io, 0);
        };
        let outcome = match tokio::time::timeout(self.timeout, exchange(client, request)).await {
            Ok(outcome) => outcome,
            Err(_) => Outcome::Timeout,
        };
        (outcome, sent)
    }
}

async fn exchange(client: &HttpClient, request: Request<Full<Bytes>>) -> Outcome {
    let response = match client.request(request).await {
        Ok(response) => response,
        Err(e) if e.is_connect() => return Outcome::Connect,
        Err(_) => return Outcome::Io,
    };
    let status = response.status().as_u16();
    let timing = server_timing(response.headers());
    let mut body = response.into_body();
    let mut bytes = 0u64;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => bytes += frame.data_ref().map_or(0, |d| d.len() as u64),
            Err(_) => return Outcome::Io,
        }
    }
    Outcome::Response { status, bytes, timing }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_per_protocol() {
        assert_eq!(Protocol::Torchserve.infer_path("m", None), "/predictions/m");
        assert_eq!(Protocol::Torchserve.infer_path("m", Some("2")), "/predictions/m/2");
        assert_eq!(Protocol::KserveV2.infer_path("m", None), "/v2/models/m/infer");
        assert_eq!(Protocol::KserveV2.infer_path("m", Some("2")), "/v2/models/m/versions/2/infer");
    }

    #[test]
    fn urls_are_checked() {
        assert_eq!(join_url("http://127.0.0.1:8080/", "/ping").expect("uri").to_string(), "http://127.0.0.1:8080/ping");
        assert_eq!(join_url("https://localhost:1", "/x").expect("uri").to_string(), "https://localhost:1/x");
        assert!(join_url("ftp://example.invalid", "/x").is_err());
        assert!(join_url("not a url", "/x").is_err());
    }
}
