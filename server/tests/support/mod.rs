//! Helpers shared by the server's integration tests: a real server on 127.0.0.1 port 0 over a registry the test
//! builds (fake or ONNX models), and a small HTTP client.

#![allow(dead_code, unreachable_pub)]

pub mod captured;
pub mod signs;

use std::{net::SocketAddr, sync::Arc, time::Duration};

use bytes::Bytes;
use ferroserve::{metrics::ServerMetrics, Api, AppState, Config};
use ferroserve_engine::{
    backend::{FakeBackend, FakeMode},
    metrics::EngineMetrics,
    BatchPolicy, Model, ModelOptions, ModelSpec, Registry,
};
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::{client::legacy::Client, rt::TokioExecutor};

/// A server running in the test's runtime, its three APIs on 127.0.0.1 port 0; it stops when dropped.
pub struct TestServer {
    /// Where the inference API listens.
    pub addr: SocketAddr,
    /// Where the management API listens.
    pub management: SocketAddr,
    /// Where the metrics API listens.
    pub metrics: SocketAddr,
    /// Where the gRPC inference services (TorchServe's and KServe v2's) listen.
    pub grpc: SocketAddr,
    /// Where TorchServe's gRPC management service listens.
    pub grpc_management: SocketAddr,
    /// Its state (models, config, metrics).
    pub state: Arc<AppState>,
    stop: Option<tokio::sync::broadcast::Sender<()>>,
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
    /// Body as text.
    pub text: String,
}

impl Reply {
    /// The `x-batch-size` header: how many requests shared this one's batch.
    pub fn batch_size(&self) -> usize {
        let value = self.headers.get("x-batch-size").expect("x-batch-size header");
        value.to_str().expect("ASCII").parse().expect("a number")
    }
}

/// A configuration for tests: every address on port 0, `max_request_size` as given.
pub fn test_config(max_request_size: usize) -> Config {
    let any = SocketAddr::from(([127, 0, 0, 1], 0));
    Config {
        inference_address: any,
        management_address: any,
        metrics_address: any,
        grpc_inference_address: any,
        grpc_management_address: any,
        max_request_size,
        model_store: models_dir(),
        enable_model_api: true,
        disable_token_authorization: true,
        ..Config::default()
    }
}

/// The repository's model store.
pub fn models_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../models")
}

/// Fresh metrics for `config`.
pub fn metrics_for(config: &Config) -> Arc<ServerMetrics> {
    Arc::new(ServerMetrics::new(config).expect("metrics"))
}

impl TestServer {
    /// Starts a server over `registry` with [`test_config`].
    pub async fn start(registry: Arc<Registry>, max_request_size: usize) -> Self {
        let config = test_config(max_request_size);
        let metrics = metrics_for(&config);
        Self::start_state(Arc::new(AppState::new(registry, config, metrics))).await
    }

    /// Starts the server over `state` as `ferroserve` does ([`ferroserve::bind`], [`ferroserve::run`]), its three
    /// APIs on the addresses of `state.config` (127.0.0.1 port 0 in [`test_config`]).
    pub async fn start_state(state: Arc<AppState>) -> Self {
        let (stop, _) = tokio::sync::broadcast::channel::<()>(1);
        let listeners = ferroserve::bind(&state.config).await.expect("bind the test addresses");
        let addr = |api| listeners.local_addr(api).expect("local addr");
        let (inference, management, metrics) = (addr(Api::Inference), addr(Api::Management), addr(Api::Metrics));
        let grpc_addr = |api| listeners.grpc_addr(api).expect("local addr").expect("a gRPC listener");
        let (grpc, grpc_management) = (grpc_addr(Api::Inference), grpc_addr(Api::Management));
        let mut stopped = stop.subscribe();
        let shutdown = async move {
            let _ = stopped.recv().await;
        };
        tokio::spawn(ferroserve::run(listeners, Arc::clone(&state), shutdown));
        let client = Client::builder(TokioExecutor::new()).build_http();
        Self { addr: inference, management, metrics, grpc, grpc_management, state, stop: Some(stop), client }
    }

    /// Sends a request to `addr` and reads the whole answer.
    pub async fn send_to(&self, addr: SocketAddr, method: Method, path: &str, body: impl Into<Bytes>) -> Reply {
        let req = Request::builder()
            .method(method)
            .uri(format!("http://{addr}{path}"))
            .header("content-type", "application/json")
            .body(Full::new(body.into()))
            .expect("request");
        Reply::from(self.exchange(req).await)
    }

    /// Sends a JSON request with one extra header to the inference API.
    pub async fn send_with_header(
        &self,
        method: Method,
        path: &str,
        body: impl Into<Bytes>,
        name: &str,
        value: &str,
    ) -> Reply {
        let headers = [("content-type", "application/json"), (name, value)];
        Reply::from(self.send_raw(method, path, &headers, body.into().to_vec()).await)
    }

    /// Sends a request and reads the whole answer (60 s at most).
    async fn exchange(&self, req: Request<Full<Bytes>>) -> RawReply {
        let response = tokio::time::timeout(Duration::from_secs(60), self.client.request(req))
            .await
            .expect("the server answers within 60 s")
            .expect("HTTP exchange");
        let (status, headers) = (response.status(), response.headers().clone());
        let body = response.into_body().collect().await.expect("body").to_bytes();
        RawReply { status, headers, body }
    }

    /// Sends a request to the inference API.
    pub async fn send(&self, method: Method, path: &str, body: impl Into<Bytes>) -> Reply {
        self.send_to(self.addr, method, path, body).await
    }

    /// Sends a request to the management API.
    pub async fn manage(&self, method: Method, path: &str) -> Reply {
        self.send_to(self.management, method, path, "").await
    }

    /// Reads the metrics API's exposition.
    pub async fn scrape(&self) -> String {
        let reply = self.send_to(self.metrics, Method::GET, "/metrics", "").await;
        assert_eq!(reply.status, StatusCode::OK);
        reply.text
    }

    /// POSTs `body` to `/predictions/{model}`.
    pub async fn predict(&self, model: &str, body: impl Into<Bytes>) -> Reply {
        self.send(Method::POST, &format!("/predictions/{model}"), body).await
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
        input_shape: vec![2, 3, 3].into(),
        output_name: "probabilities".into(),
        output_shape: vec![10].into(),
    }
}

/// Run options for a test model.
pub fn options(name: &str, workers: usize, queue_size: usize, batch: usize, delay: Duration) -> ModelOptions {
    ModelOptions {
        name: name.into(),
        version: "1.0".into(),
        workers,
        queue_size,
        policy: BatchPolicy { max_batch_size: batch, max_delay: delay },
        response_timeout: Duration::from_secs(120),
    }
}

/// Registers a fake model, labelled `c0`..`c9`, and returns the fake (to script it).
pub fn add_fake(registry: &Registry, mode: FakeMode, options: ModelOptions) -> FakeBackend {
    add_fake_metered(registry, &EngineMetrics::detached(), mode, options)
}

/// Registers a fake model that records into `metrics` (a server's `state.metrics.engine`).
pub fn add_fake_metered(
    registry: &Registry,
    metrics: &EngineMetrics,
    mode: FakeMode,
    options: ModelOptions,
) -> FakeBackend {
    let fake = FakeBackend::new(fake_spec(), mode);
    let labels = (0..10).map(|i| format!("c{i}")).collect();
    let model = Model::start_with(Arc::new(fake.clone()), options, metrics).expect("fake model starts");
    assert!(registry.register(model.with_labels(labels)).is_ok(), "registered once");
    fake
}

/// The value of the sample `name{labels...}` in a Prometheus text exposition (labels matched as a subset).
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|line| {
        let (series, value) = line.rsplit_once(' ')?;
        let (metric_name, rest) = series.split_once('{').unwrap_or((series, ""));
        let wanted = metric_name == name && labels.iter().all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")));
        wanted.then(|| value.parse().ok()).flatten()
    })
}

/// A server over an empty registry whose fake models record into its metrics.
pub async fn metered_server(config: Config) -> TestServer {
    let metrics = metrics_for(&config);
    TestServer::start_state(Arc::new(AppState::new(Arc::new(Registry::new()), config, metrics))).await
}

/// A landmark body for the fake model whose flattened values are `values` (18 of them).
pub fn landmark_body(values: &[f32]) -> String {
    let frames: Vec<Vec<&[f32]>> = values.chunks(9).map(|frame| frame.chunks(3).collect()).collect();
    serde_json::json!({ "landmarks": frames }).to_string()
}

/// A response with its body as bytes (for bodies that are not all text, such as binary tensor data).
pub struct RawReply {
    /// Status.
    pub status: StatusCode,
    /// Headers.
    pub headers: hyper::HeaderMap,
    /// The body as sent.
    pub body: Bytes,
}

impl TestServer {
    /// Sends a bodiless request with `headers` to `addr`; returns the status.
    pub async fn send_raw_to(
        &self,
        addr: SocketAddr,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
    ) -> StatusCode {
        let mut builder = Request::builder().method(method).uri(format!("http://{addr}{path}"));
        for &(name, value) in headers {
            builder = builder.header(name, value);
        }
        self.exchange(builder.body(Full::new(Bytes::new())).expect("request")).await.status
    }

    /// Sends a request with `headers` to the inference API and keeps the answer's body as bytes.
    pub async fn send_raw(&self, method: Method, path: &str, headers: &[(&str, &str)], body: Vec<u8>) -> RawReply {
        let mut builder = Request::builder().method(method).uri(format!("http://{}{path}", self.addr));
        for &(name, value) in headers {
            builder = builder.header(name, value);
        }
        let req = builder.body(Full::new(Bytes::from(body))).expect("request");
        self.exchange(req).await
    }
}

impl From<RawReply> for Reply {
    fn from(raw: RawReply) -> Self {
        let json = serde_json::from_slice(&raw.body).unwrap_or(serde_json::Value::Null);
        Reply { status: raw.status, headers: raw.headers, json, text: String::from_utf8_lossy(&raw.body).into_owned() }
    }
}

/// The bundled signnet model's reference inputs and outputs (`models/signnet/reference.json`).
pub fn signnet_reference() -> serde_json::Value {
    let text = std::fs::read_to_string(models_dir().join("signnet/reference.json")).expect("reference.json");
    serde_json::from_str(&text).expect("reference JSON")
}

/// A server with the bundled signnet model loaded as `ferroserve` loads it: two workers of one intra-op thread,
/// `batch_size` and a 5 ms batch delay.
pub async fn signnet_server(batch_size: &str) -> TestServer {
    let settings = [
        ("default_workers_per_model", "2"),
        ("intra_op_threads", "1"),
        ("batch_size", batch_size),
        ("max_batch_delay", "5"),
    ];
    signnet_server_with(&settings).await
}

/// A server with the bundled signnet model loaded at start-up as `ferroserve` loads it, with these
/// `config.properties` keys.
pub async fn signnet_server_with(settings: &[(&str, &str)]) -> TestServer {
    let mut config = test_config(1 << 20);
    config
        .apply(settings.iter().map(|&(key, value)| (key.to_string(), value.to_string(), None)).collect())
        .expect("valid settings");
    let metrics = metrics_for(&config);
    let model =
        ferroserve::load::load_model(&config, ("signnet", "1.0"), "signnet", &metrics.engine).expect("signnet loads");
    let registry = Arc::new(Registry::new());
    assert!(registry.register(model).is_ok());
    TestServer::start_state(Arc::new(AppState::new(registry, config, metrics))).await
}

/// The class a prediction's label names: its index when the model has no labels, else its index in signnet's
/// `index_to_name.json`.
fn signnet_class(label: &str) -> usize {
    if let Ok(index) = label.parse() {
        return index;
    }
    let text = std::fs::read_to_string(models_dir().join("signnet/index_to_name.json")).expect("labels");
    let labels: std::collections::BTreeMap<String, String> = serde_json::from_str(&text).expect("label map");
    labels.iter().find(|(_, name)| *name == label).and_then(|(index, _)| index.parse().ok()).expect("a known label")
}

/// Checks that `model` on `server` answers signnet's reference inputs with its reference probabilities (within
/// `1e-4`), through `/predictions` (every class, by label or index) and through KServe v2 (one request of all
/// eight, its input named as the model's metadata says).
pub async fn assert_answers_signnet_reference(server: &TestServer, model: &str) {
    let reference = signnet_reference();
    let inputs = reference["landmarks"].as_array().expect("inputs");
    let expected: Vec<Vec<f64>> = serde_json::from_value(reference["probabilities"].clone()).expect("numbers");
    for (i, input) in inputs.iter().enumerate() {
        let answer = server.predict(model, serde_json::json!({ "landmarks": input, "topk": 10 }).to_string()).await;
        assert_eq!(answer.status, StatusCode::OK, "input {i}: {}", answer.json);
        let predictions = answer.json["predictions"].as_array().expect("predictions");
        assert_eq!(predictions.len(), expected[i].len(), "input {i}: every class");
        for prediction in predictions {
            let class = signnet_class(prediction["label"].as_str().expect("a label"));
            let p = prediction["confidence"].as_f64().expect("a number");
            assert!(
                (p - expected[i][class]).abs() < 1e-4,
                "input {i} class {class}: {p}, reference {}",
                expected[i][class]
            );
        }
    }
    let metadata = server.send(Method::GET, &format!("/v2/models/{model}"), "").await;
    let name = metadata.json["inputs"][0]["name"].as_str().expect("the input's name").to_string();
    let request = serde_json::json!({ "inputs": [{ "name": name, "shape": [8, 30, 21, 3], "datatype": "FP32", "data": inputs }] });
    let reply = server.send(Method::POST, &format!("/v2/models/{model}/infer"), request.to_string()).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.json);
    assert_eq!(reply.json["outputs"][0]["shape"], serde_json::json!([8, 10]));
    let got: Vec<f64> = serde_json::from_value(reply.json["outputs"][0]["data"].clone()).expect("numbers");
    for (k, (g, w)) in got.iter().zip(expected.iter().flatten()).enumerate() {
        assert!((g - w).abs() < 1e-4, "KServe v2 value {k}: {g}, reference {w}");
    }
}

/// Runs `promtool check metrics` on `text`; `None` when promtool is not installed.
pub fn promtool(text: &str) -> Option<(i32, String)> {
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .ok()?;
    std::io::Write::write_all(&mut child.stdin.take().expect("stdin"), text.as_bytes()).expect("write");
    let out = child.wait_with_output().expect("promtool runs");
    let said = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    Some((out.status.code().unwrap_or(-1), said))
}
