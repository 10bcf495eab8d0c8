//! `ferroserve healthcheck`: asks a running server's `GET /ping` whether it is healthy, for a container's
//! `HEALTHCHECK` and compose's `healthcheck:`. The images have no shell and no curl, so the binary checks itself.

use std::{net::SocketAddr, time::Duration};

use http_body_util::{BodyExt, Empty};
use hyper::{body::Bytes, StatusCode, Uri};
use hyper_util::rt::TokioIo;

use crate::config::{Api, Config};

/// Why the server is not healthy, or could not be asked.
#[derive(Debug, thiserror::Error)]
pub enum HealthError {
    /// The URL is not an `http://host:port/path` address.
    #[error("{url} is not an http:// URL with a host: {reason}")]
    Url {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
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
    format!("http://{}/ping", SocketAddr::new(ip, addr.port()))
}

/// Sends `GET url` and succeeds when the answer is 200 within `timeout`; returns the body.
///
/// # Errors
/// [`HealthError`] saying what failed: the URL, the connection, the exchange, the time or the status.
pub async fn check(url: &str, timeout: Duration) -> Result<String, HealthError> {
    let bad = |reason: &str| HealthError::Url { url: url.to_string(), reason: reason.to_string() };
    let uri: Uri = url.parse().map_err(|e: hyper::http::uri::InvalidUri| bad(&e.to_string()))?;
    if uri.scheme_str() != Some("http") {
        return Err(bad("only http:// is supported"));
    }
    let authority = uri.authority().ok_or_else(|| bad("no host"))?.clone();
    let port = authority.port_u16().unwrap_or(80);
    let asked = async {
        let stream = tokio::net::TcpStream::connect((authority.host().trim_matches(['[', ']']), port))
            .await
            .map_err(|source| HealthError::Connect { authority: authority.to_string(), source })?;
        let failed = |source| HealthError::Http { url: url.to_string(), source };
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(failed)?;
        tokio::spawn(connection);
        let request = hyper::Request::get(uri.path_and_query().map_or("/", |p| p.as_str()))
            .header(hyper::header::HOST, authority.as_str())
            .body(Empty::<Bytes>::new())
            .map_err(|e| bad(&e.to_string()))?;
        let response = sender.send_request(request).await.map_err(failed)?;
        let status = response.status();
        let body = response.into_body().collect().await.map_err(failed)?.to_bytes();
        let body = String::from_utf8_lossy(&body).trim().to_string();
        if status == StatusCode::OK {
            Ok(body)
        } else {
            Err(HealthError::Unhealthy { url: url.to_string(), status, body })
        }
    };
    tokio::time::timeout(timeout, asked)
        .await
        .unwrap_or_else(|_| Err(HealthError::Timeout { url: url.to_string(), timeout }))
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
    async fn refuses_what_is_not_an_http_url() {
        for url in ["https://127.0.0.1:1/ping", "127.0.0.1:8080", "http:///ping", "not a url"] {
            let error = check(url, Duration::from_secs(1)).await.expect_err(url);
            assert!(matches!(error, HealthError::Url { .. }), "{url}: {error}");
        }
    }

    #[tokio::test]
    async fn a_closed_port_is_a_connection_error() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        drop(listener);
        let error = check(&format!("http://{addr}/ping"), Duration::from_secs(5)).await.expect_err("closed");
        assert!(matches!(error, HealthError::Connect { .. }), "{error}");
    }

    #[tokio::test]
    async fn a_silent_server_times_out() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        // Accepted by the kernel's backlog, never answered.
        let error = check(&format!("http://{addr}/ping"), Duration::from_millis(200)).await.expect_err("silent");
        assert!(matches!(error, HealthError::Timeout { .. }), "{error}");
        drop(listener);
    }
}
