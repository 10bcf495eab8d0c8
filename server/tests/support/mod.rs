//! Helpers shared by the server's integration tests: a real server on 127.0.0.1 port 0 over a registry the test
//! builds (fake or ONNX models), and a small HTTP client.

#![allow(dead_code, unreachable_pub)]

use std::{net::SocketAddr, sync::Arc, time::Duration};

use bytes::Bytes;
use ferroserve::AppState;
use ferroserve_engine::{
    backend::{FakeBackend, FakeMode},
    BatchPolicy, Model, ModelOptions, ModelSpec, Registry,
};
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::{client::legacy::Client, rt::TokioExecutor};
use tokio::sync::oneshot;

/// A server running in the test's runtime; it stops when dropped.
pub struct TestServer {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its models.
    pub registry: Arc<Registry>,
    stop: Option<oneshot::Sender<()>>,
    client: Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
}

/// A response as the tests look at it.
pub struct Reply {
    /// Status.
    pub status: StatusCode,
    /// Headers.
    pub headers: hyper::HeaderMap,
    /// Body parsed as JSON (Null when it is not JSON).
    pub json: serde_json::Value,
}

impl Reply {
    /// The `x-batch-size` header: how many requests shared this one's batch.
    pub fn batch_size(&self) -> usize {
        let value = self
            .headers
            .get("x-batch-size")
            .expect("x-batch-size header");
        value.to_str().expect("ASCII").parse().expect("a number")
    }
}

impl TestServer {
    /// Starts a server on 127.0.0.1:0 over `registry`.
    pub async fn start(registry: Arc<Registry>, max_request_size: usize) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local addr");
        let state = Arc::new(AppState {
            registry: Arc::clone(&registry),
            max_request_size,
        });
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(async move {
            ferroserve::run(listener, state, async {
                let _ = stopped.await;
            })
            .await
            .expect("server runs");
        });
        let client = Client::builder(TokioExecutor::new()).build_http();
        Self {
            addr,
            registry,
            stop: Some(stop),
            client,
        }
    }

    /// Sends a request and reads the whole answer.
    pub async fn send(&self, method: Method, path: &str, body: impl Into<Bytes>) -> Reply {
        let req = Request::builder()
            .method(method)
            .uri(format!("http://{}{path}", self.addr))
            .header("content-type", "application/json")
            .body(Full::new(body.into()))
            .expect("request");
        let response = tokio::time::timeout(Duration::from_secs(60), self.client.request(req))
            .await
            .expect("the server answers within 60 s")
            .expect("HTTP exchange");
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        let json = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
        Reply {
            status,
            headers,
            json,
        }
    }

    /// POSTs `body` to `/predictions/{model}`.
    pub async fn predict(&self, model: &str, body: impl Into<Bytes>) -> Reply {
        self.send(Method::POST, &format!("/predictions/{model}"), body)
            .await
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// The fake landmark model: [2 frames, 3 points, 3 coords] in, 10 classes out.
pub fn fake_spec() -> ModelSpec {
    ModelSpec {
        input_name: "landmarks".into(),
        input_shape: vec![2, 3, 3],
        output_name: "probabilities".into(),
        output_shape: vec![10],
    }
}

/// Run options for a test model.
pub fn options(
    name: &str,
    workers: usize,
    queue_size: usize,
    batch: usize,
    delay: Duration,
) -> ModelOptions {
    ModelOptions {
        name: name.into(),
        version: "1.0".into(),
        workers,
        queue_size,
        policy: BatchPolicy {
            max_batch_size: batch,
            max_delay: delay,
        },
        response_timeout: Duration::from_secs(120),
    }
}

/// Registers a fake model, labelled `c0`..`c9`, and returns the fake (to script it).
pub fn add_fake(registry: &Registry, mode: FakeMode, options: ModelOptions) -> FakeBackend {
    let fake = FakeBackend::new(fake_spec(), mode);
    let labels = (0..10).map(|i| format!("c{i}")).collect();
    let model = Model::start(&fake, options)
        .expect("fake model starts")
        .with_labels(labels);
    assert!(registry.register(model).is_ok(), "registered once");
    fake
}

/// A landmark body for the fake model whose flattened values are `values` (18 of them).
pub fn landmark_body(values: &[f32]) -> String {
    let frames: Vec<Vec<&[f32]>> = values
        .chunks(9)
        .map(|frame| frame.chunks(3).collect())
        .collect();
    serde_json::json!({ "landmarks": frames }).to_string()
}
