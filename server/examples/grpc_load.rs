//! Closed-loop load on KServe v2 inference, over gRPC with raw tensors or over HTTP with JSON, with the same loop
//! for both: `--concurrency` clients, each sending its next request when the previous answer arrives, for
//! `--seconds`; prints the throughput and the latency percentiles. The body is the bundled example
//! (`models/signnet/example.json`, one sample [1, 30, 21, 3]). `benches/grpc.sh` runs it against a release
//! server; ghz and perf_analyzer are not on this machine's registries.
//!
//! ```sh
//! cargo run --release --example grpc_load -- grpc 127.0.0.1:7070 signnet 64 10
//! cargo run --release --example grpc_load -- http 127.0.0.1:8080 signnet 64 10
//! ```

use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::{Duration, Instant},
};

use bytes::Bytes;
use ferroserve::proto::inference::{
    grpc_inference_service_client::GrpcInferenceServiceClient, model_infer_request::InferInputTensor, ModelInferRequest,
};
use http_body_util::{BodyExt as _, Full};
use hyper_util::{client::legacy::Client, rt::TokioExecutor};

/// One HTTP/2 connection as tonic's client transport, without the request queue and its task that tonic's
/// `Channel` puts in front of it: the client's own cost per call stays close to the HTTP client's.
#[derive(Clone)]
struct H2(hyper::client::conn::http2::SendRequest<tonic::body::Body>);

type H2Future = Pin<Box<dyn Future<Output = Result<hyper::Response<hyper::body::Incoming>, hyper::Error>> + Send>>;

impl tonic::codegen::Service<hyper::Request<tonic::body::Body>> for H2 {
    type Response = hyper::Response<hyper::body::Incoming>;
    type Error = hyper::Error;
    type Future = H2Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, request: hyper::Request<tonic::body::Body>) -> Self::Future {
        Box::pin(self.0.send_request(request))
    }
}

/// A client of KServe v2's gRPC service over one HTTP/2 connection to `addr`.
async fn grpc_client(addr: &str) -> GrpcInferenceServiceClient<H2> {
    let stream = tokio::net::TcpStream::connect(addr).await.expect("connected");
    stream.set_nodelay(true).expect("TCP_NODELAY");
    let (sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), hyper_util::rt::TokioIo::new(stream))
            .await
            .expect("HTTP/2");
    tokio::spawn(connection);
    let origin = format!("http://{addr}").parse().expect("an address");
    GrpcInferenceServiceClient::with_origin(H2(sender), origin).max_decoding_message_size(64 << 20)
}

/// What one client's loop does per request.
enum Mode {
    /// `ModelInfer` with `raw_input_contents`.
    Grpc(GrpcInferenceServiceClient<H2>, ModelInferRequest),
    /// `POST /v2/models/{m}/infer` with the values in JSON.
    Http(Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>, String, Bytes),
}

impl Mode {
    /// Sends one request; whether it was answered with success.
    async fn send(&mut self) -> bool {
        match self {
            Self::Grpc(client, request) => client.model_infer(request.clone()).await.is_ok(),
            Self::Http(client, url, body) => {
                let request = hyper::Request::post(url.as_str())
                    .header("content-type", "application/json")
                    .body(Full::new(body.clone()))
                    .expect("a request");
                match client.request(request).await {
                    Ok(response) => {
                        let ok = response.status().is_success();
                        ok && response.into_body().collect().await.is_ok()
                    }
                    Err(_) => false,
                }
            }
        }
    }
}

/// The example's 630 values.
fn example() -> Vec<f32> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../models/signnet/example.json");
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(path).expect("example.json")).expect("JSON");
    let mut values = Vec::new();
    let mut stack = vec![&json["landmarks"]];
    while let Some(v) = stack.pop() {
        match v {
            serde_json::Value::Array(items) => stack.extend(items.iter().rev()),
            other => values.push(other.as_f64().expect("a number") as f32),
        }
    }
    values
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [mode, addr, model, concurrency, seconds] = args.as_slice() else {
        eprintln!("usage: grpc_load grpc|http HOST:PORT MODEL CONCURRENCY SECONDS");
        std::process::exit(2);
    };
    let concurrency: usize = concurrency.parse().expect("a concurrency");
    let duration = Duration::from_secs(seconds.parse().expect("seconds"));
    let values = example();
    let shape = vec![1, 30, 21, 3];
    let mut clients = Vec::new();
    for _ in 0..concurrency {
        clients.push(match mode.as_str() {
            "grpc" => {
                let request = ModelInferRequest {
                    model_name: model.clone(),
                    inputs: vec![InferInputTensor {
                        name: "landmarks".into(),
                        datatype: "FP32".into(),
                        shape: shape.clone(),
                        ..Default::default()
                    }],
                    raw_input_contents: vec![values.iter().flat_map(|x| x.to_le_bytes()).collect()],
                    ..Default::default()
                };
                Mode::Grpc(grpc_client(addr).await, request)
            }
            "http" => {
                let body = serde_json::json!({"inputs": [{"name": "landmarks", "datatype": "FP32", "shape": shape,
                    "data": values}]});
                let client = Client::builder(TokioExecutor::new()).build_http();
                Mode::Http(client, format!("http://{addr}/v2/models/{model}/infer"), Bytes::from(body.to_string()))
            }
            other => panic!("unknown mode {other}: grpc or http"),
        });
    }
    // One warm-up request per client, then the measured window.
    for client in &mut clients {
        assert!(client.send().await, "the warm-up request failed");
    }
    let start = Instant::now();
    let end = start + duration;
    let errors = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for mut client in clients {
        let errors = Arc::clone(&errors);
        tasks.spawn(async move {
            let mut latencies = Vec::new();
            while Instant::now() < end {
                let sent = Instant::now();
                if client.send().await {
                    latencies.push(sent.elapsed());
                } else {
                    errors.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
            latencies
        });
    }
    let mut latencies: Vec<Duration> = Vec::new();
    while let Some(done) = tasks.join_next().await {
        latencies.extend(done.expect("a client task"));
    }
    let elapsed = start.elapsed().as_secs_f64();
    latencies.sort_unstable();
    let at = |q: f64| latencies.get(((latencies.len() as f64 * q) as usize).min(latencies.len().saturating_sub(1)));
    let ms = |d: Option<&Duration>| d.map_or(f64::NAN, |d| d.as_secs_f64() * 1000.0);
    println!(
        "mode={mode} concurrency={concurrency} requests={} errors={} throughput={:.1}/s p50={:.2}ms p90={:.2}ms p99={:.2}ms",
        latencies.len(),
        errors.load(std::sync::atomic::Ordering::Relaxed),
        latencies.len() as f64 / elapsed,
        ms(at(0.5)),
        ms(at(0.9)),
        ms(at(0.99)),
    );
}
