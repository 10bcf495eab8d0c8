//! What an operator sees of each request, over real sockets on 127.0.0.1: the access log (one JSON line per HTTP
//! and gRPC request, each under its own `x-request-id`, with status, path, model and batch, under concurrency),
//! the JSON log (valid JSON lines that carry the request's id, model and worker), and OpenTelemetry traces sent to
//! an OTLP receiver inside the test (the client's `traceparent` continued, with queue and inference spans that
//! name the model and batch), none without an endpoint, and none that holds up a request when the collector is
//! down, its lost spans counted; a gRPC stream's line names its model and batch; the binary's access log holds
//! every line of the requests answered before SIGTERM.

mod support;

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::{Arc, Mutex, OnceLock},
    time::Duration,
};

use ferroserve::{
    access_log::AccessLog,
    logging,
    obs_config::ObsConfig,
    observe::Observer,
    proto::torchserve_inference::{self as ts, inference_ap_is_service_client::InferenceApIsServiceClient},
    traces::{ExportFailures, Traces},
    AppState,
};
use ferroserve_engine::{backend::FakeMode, Registry};
use hyper::{Method, StatusCode};
use opentelemetry_proto::tonic::{
    collector::trace::v1::{
        trace_service_server::{TraceService, TraceServiceServer},
        ExportTraceServiceRequest, ExportTraceServiceResponse,
    },
    common::v1::any_value::Value,
    trace::v1::Span,
};
use support::{add_fake, captured::Captured, landmark_body, metrics_for, options, test_config, TestServer};

/// A server over the echo fake `m` (batches of up to 8, gathered for 20 ms) observed by `observer`.
async fn server(observer: Observer) -> TestServer {
    let registry = Arc::new(Registry::new());
    add_fake(&registry, FakeMode::Echo, options("m", 1, 256, 8, Duration::from_millis(20)));
    let config = test_config(1 << 20);
    let metrics = metrics_for(&config);
    TestServer::start_state(Arc::new(AppState::new(registry, config, metrics).with_observer(observer))).await
}

fn counter() -> prometheus::IntCounter {
    prometheus::IntCounter::new("dropped", "dropped lines").expect("a counter")
}

/// The access log's lines, once there are `n` of them (the writer runs on its own thread).
async fn access_lines(log: &Captured, n: usize) -> Vec<serde_json::Value> {
    for _ in 0..500 {
        let lines = log.lines();
        if lines.len() >= n {
            return lines.iter().map(|l| serde_json::from_str(l).expect("each line is one JSON object")).collect();
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("fewer than {n} access log lines: {:?}", log.lines());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_request_has_exactly_one_access_log_line_with_its_id_status_model_and_batch() {
    let log = Captured::default();
    let access = AccessLog::to_writer(Box::new(log.clone()), counter()).expect("an access log");
    let server = Arc::new(server(Observer::new(Some(access), None)).await);
    let body = landmark_body(&[0.5; 18]);
    let mut sent = tokio::task::JoinSet::new();
    for i in 0..32 {
        let (server, body) = (Arc::clone(&server), body.clone());
        sent.spawn(async move {
            let (path, id) = if i % 8 == 7 {
                ("/predictions/nope", format!("miss-{i}"))
            } else {
                ("/predictions/m", format!("req-{i}"))
            };
            let reply = server.send_with_header(Method::POST, path, body, "x-request-id", &id).await;
            (id, path, reply.status)
        });
    }
    let mut expected = BTreeMap::new();
    while let Some(done) = sent.join_next().await {
        let (id, path, status) = done.expect("a request");
        expected.insert(id, (path, status));
    }
    let mut grpc = InferenceApIsServiceClient::new(channel(server.grpc).await);
    let request = ts::PredictionsRequest {
        model_name: "m".into(),
        input: [("data".to_string(), body.clone().into_bytes())].into(),
        ..Default::default()
    };
    let mut call = tonic::Request::new(request.clone());
    call.metadata_mut().insert("x-request-id", "grpc-1".parse().expect("metadata"));
    grpc.predictions(call).await.expect("a gRPC prediction");
    // A stream of two predictions: one call, one line, naming the model and batch of its answers.
    let mut call = tonic::Request::new(tokio_stream::iter(vec![request.clone(), request]));
    call.metadata_mut().insert("x-request-id", "grpc-stream".parse().expect("metadata"));
    let mut answers = grpc.stream_predictions2(call).await.expect("a gRPC stream").into_inner();
    let mut answered = 0;
    while let Some(answer) = answers.message().await.expect("an answer") {
        assert!(answer.status.is_none() && !answer.prediction.is_empty(), "{answer:?}");
        answered += 1;
    }
    assert_eq!(answered, 2);

    let lines = access_lines(&log, 34).await;
    assert_eq!(lines.len(), 34, "one line per request: {lines:?}");
    for (id, (path, status)) in &expected {
        let mine: Vec<_> = lines.iter().filter(|l| l["request_id"] == id.as_str()).collect();
        assert_eq!(mine.len(), 1, "{id} appears once in {lines:?}");
        let line = mine[0];
        assert_eq!(line["status"], status.as_u16(), "{line}");
        assert_eq!(line["path"], *path);
        assert_eq!(line["method"], "POST");
        assert_eq!(line["protocol"], "HTTP/1.1");
        assert!(line["client"].as_str().is_some_and(|c| c.starts_with("127.0.0.1:")), "{line}");
        assert!(line["latency_ms"].as_f64().is_some_and(|ms| ms > 0.0), "{line}");
        assert!(line["time"].as_str().is_some_and(|t| t.ends_with('Z')), "{line}");
        if *status == StatusCode::OK {
            assert_eq!(line["model"], "m", "{line}");
            assert_eq!(line["version"], "1.0");
            let size = line["batch_size"].as_u64().expect("a batch size");
            assert!((1..=8).contains(&size), "{line}");
            assert!(line["batch_id"].as_u64().is_some() && line["bytes"].as_u64() > Some(0), "{line}");
        } else {
            assert_eq!(*status, StatusCode::NOT_FOUND);
            assert!(line["model"].is_null() && line["batch_size"].is_null(), "{line}");
        }
    }
    let call = lines.iter().find(|l| l["request_id"] == "grpc-1").expect("the gRPC call's line");
    assert_eq!(call["protocol"], "gRPC");
    assert_eq!(call["path"], "/org.pytorch.serve.grpc.inference.InferenceAPIsService/Predictions");
    assert_eq!(call["grpc_status"], 0, "{call}");
    assert_eq!(call["model"], "m");
    assert!(call["bytes"].as_u64() > Some(0), "{call}");
    let stream = lines.iter().find(|l| l["request_id"] == "grpc-stream").expect("the stream's line");
    assert_eq!(stream["path"], "/org.pytorch.serve.grpc.inference.InferenceAPIsService/StreamPredictions2");
    assert_eq!((&stream["grpc_status"], &stream["model"], &stream["version"]), (&0.into(), &"m".into(), &"1.0".into()));
    assert!(stream["batch_size"].as_u64().is_some_and(|n| (1..=8).contains(&n)), "{stream}");
}

async fn channel(addr: SocketAddr) -> tonic::transport::Channel {
    let uri = format!("http://{addr}");
    tonic::transport::Channel::from_shared(uri).expect("uri").connect().await.expect("connect")
}

/// The JSON log of this test binary, at DEBUG for the server's crates.
fn json_log() -> &'static Captured {
    static LOG: OnceLock<Captured> = OnceLock::new();
    LOG.get_or_init(|| {
        let log = Captured::default();
        let filter = tracing_subscriber::EnvFilter::new("info,ferroserve=debug");
        tracing::subscriber::set_global_default(logging::json(filter, log.clone())).expect("the only subscriber");
        log
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_log_lines_are_json_and_a_requests_lines_name_its_id_model_and_worker() {
    let log = json_log();
    let server = server(Observer::default()).await;
    let reply = server
        .send_with_header(Method::POST, "/predictions/m", landmark_body(&[0.5; 18]), "x-request-id", "json-7")
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    let lines: Vec<serde_json::Value> =
        log.lines().iter().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"))).collect();
    let mine: Vec<_> = lines.iter().filter(|l| l["span"]["id"] == "json-7").collect();
    assert!(!mine.is_empty(), "no line of request json-7 in {lines:?}");
    for line in mine {
        assert_eq!(line["span"]["name"], "request", "{line}");
        assert_eq!(line["span"]["model"], "m", "{line}");
        assert!(line["span"]["worker"].is_u64(), "{line}");
        assert!(line["timestamp"].is_string() && line["level"].is_string(), "{line}");
    }
}

/// An OTLP/gRPC receiver on 127.0.0.1 port 0 that keeps the spans it gets.
#[derive(Clone, Default)]
struct Receiver(Arc<Mutex<Vec<Span>>>);

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let spans = request.into_inner().resource_spans.into_iter().flat_map(|r| {
            let service = r.resource.iter().flat_map(|r| &r.attributes).any(|a| {
                a.key == "service.name"
                    && matches!(&a.value, Some(v) if v.value == Some(Value::StringValue("ferroserve".into())))
            });
            assert!(service, "the resource names the service ferroserve");
            r.scope_spans.into_iter().flat_map(|s| s.spans)
        });
        self.0.lock().expect("spans").extend(spans);
        Ok(tonic::Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

impl Receiver {
    /// Serves on a fresh port; the server stops with the test's runtime.
    async fn start(&self) -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let service = TraceServiceServer::new(self.clone());
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        addr
    }

    fn spans(&self) -> Vec<Span> {
        self.0.lock().expect("spans").clone()
    }
}

fn attribute(span: &Span, key: &str) -> Option<Value> {
    span.attributes.iter().find(|a| a.key == key).and_then(|a| a.value.clone()?.value)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Flushes the exporter (a blocking call) off the runtime's threads.
async fn flush(server: &TestServer) -> Result<(), String> {
    let observer = Arc::clone(&server.state.observer);
    tokio::task::spawn_blocking(move || observer.flush_traces()).await.expect("flush")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clients_traceparent_is_continued_by_the_request_queue_and_inference_spans() {
    let receiver = Receiver::default();
    let endpoint = format!("http://{}", receiver.start().await);
    // Nothing of the server's own would be sampled: the client's sampled flag decides.
    let failures = ExportFailures::register(&prometheus::Registry::new()).expect("counters");
    let traces = Traces::start(&endpoint, 0.0, failures.clone()).expect("an exporter");
    let server = server(Observer::new(None, Some(traces))).await;
    let (trace_id, parent) = ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7");
    let headers = [("content-type", "application/json"), ("traceparent", &format!("00-{trace_id}-{parent}-01"))];
    let reply = server.send_raw(Method::POST, "/predictions/m", &headers, landmark_body(&[0.5; 18]).into_bytes()).await;
    assert_eq!(reply.status, StatusCode::OK);
    // Not sampled: no traceparent, and a ratio of 0.
    let unsampled = server.send(Method::POST, "/predictions/m", landmark_body(&[0.5; 18])).await;
    assert_eq!(unsampled.status, StatusCode::OK);
    flush(&server).await.expect("the export reaches the receiver");
    let lost = (failures.exports.get(), failures.failed.get(), failures.queue_full.get());
    assert_eq!(lost, (0, 0, 0), "nothing counted as lost when the export works");

    let spans = receiver.spans();
    assert_eq!(spans.len(), 3, "request, queue and inference of the sampled request only: {spans:?}");
    assert!(spans.iter().all(|s| hex(&s.trace_id) == trace_id), "one trace, the client's: {spans:?}");
    let request = spans.iter().find(|s| s.name == "request").expect("the request span");
    assert_eq!(hex(&request.parent_span_id), parent, "the request span is the client's span's child");
    assert_eq!(attribute(request, "ferroserve.model"), Some(Value::StringValue("m".into())));
    assert_eq!(attribute(request, "http.response.status_code"), Some(Value::IntValue(200)));
    for name in ["queue", "inference"] {
        let child = spans.iter().find(|s| s.name == name).unwrap_or_else(|| panic!("the {name} span"));
        assert_eq!(child.parent_span_id, request.span_id, "{name} is a child of the request");
        assert_eq!(attribute(child, "ferroserve.model"), Some(Value::StringValue("m".into())));
        assert!(matches!(attribute(child, "ferroserve.batch_size"), Some(Value::IntValue(1..=8))), "{child:?}");
        assert!(matches!(attribute(child, "ferroserve.batch_id"), Some(Value::IntValue(1..))), "{child:?}");
        assert!(child.start_time_unix_nano >= request.start_time_unix_nano, "{name} starts within the request");
        assert!(child.end_time_unix_nano <= request.end_time_unix_nano, "{name} ends within the request");
    }
    let queue = spans.iter().find(|s| s.name == "queue").expect("queue");
    let inference = spans.iter().find(|s| s.name == "inference").expect("inference");
    assert_eq!(queue.end_time_unix_nano, inference.start_time_unix_nano, "the batch starts when the wait ends");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_endpoint_nothing_is_exported_and_with_a_dead_one_requests_still_answer() {
    let receiver = Receiver::default();
    receiver.start().await;
    let mut config = ObsConfig::default();
    assert_eq!(config.endpoint(|_| None), None, "no endpoint unless configured");
    let registry = prometheus::Registry::new();
    let off = server(Observer::start(&config, &registry).expect("an observer")).await;
    for _ in 0..4 {
        assert_eq!(off.send(Method::POST, "/predictions/m", landmark_body(&[0.5; 18])).await.status, StatusCode::OK);
    }
    flush(&off).await.expect("nothing to flush");

    // A collector that refuses connections: the exports fail in the background, the requests do not notice.
    let dead = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let dead_addr = dead.local_addr().expect("addr");
    drop(dead);
    config.set("otlp_endpoint", &format!("http://{dead_addr}")).expect("a URL");
    config.set("otlp_sampling_ratio", "1").expect("a ratio");
    let down = server(Observer::start(&config, &registry).expect("an observer")).await;
    let started = std::time::Instant::now();
    for _ in 0..16 {
        assert_eq!(down.send(Method::POST, "/predictions/m", landmark_body(&[0.5; 18])).await.status, StatusCode::OK);
    }
    assert!(flush(&down).await.is_err(), "the export to a closed port fails");
    assert!(started.elapsed() < Duration::from_secs(30), "requests are not held up by the exporter");
    // Counted: each of the 16 requests made 3 spans (request, queue, inference), all in failed exports.
    let text = prometheus::TextEncoder::new().encode_to_string(&registry.gather()).expect("metrics text");
    let exports = support::metric(&text, "ferroserve_otlp_export_failures_total", &[]).expect("the failure counter");
    assert!(exports >= 1.0, "{text}");
    let dropped = |reason| support::metric(&text, "ferroserve_otlp_spans_dropped_total", &[("reason", reason)]);
    assert_eq!((dropped("export_failed"), dropped("queue_full")), (Some(48.0), Some(0.0)), "{text}");
    assert!(receiver.spans().is_empty(), "the receiver got nothing: {:?}", receiver.spans());
}

/// The binary, on port 0 with no model, its access log in a file: SIGTERM right after the last answer, and every
/// request has its line once the process is gone (the log is flushed at shutdown, not left in a buffer).
#[test]
fn access_log_lines_written_just_before_sigterm_are_all_in_the_file() {
    use std::io::BufRead as _;
    let dir = tempfile::tempdir().expect("dir");
    let (config, log) = (dir.path().join("config.properties"), dir.path().join("access.log"));
    std::fs::write(
        &config,
        format!(
            "inference_address=http://127.0.0.1:0\nmanagement_address=http://127.0.0.1:0\n\
             metrics_address=http://127.0.0.1:0\ngrpc_inference_port=0\ngrpc_management_port=0\n\
             access_log={}\n",
            log.display()
        ),
    )
    .expect("config");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_ferroserve"))
        .arg("--ts-config")
        .arg(&config)
        .current_dir(dir.path())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start ferroserve");
    let mut stderr = std::io::BufReader::new(child.stderr.take().expect("stderr")).lines().map_while(Result::ok);
    let port = stderr
        .by_ref()
        .find_map(|line| line.split_once("inference API on http://127.0.0.1:").map(|(_, p)| p.trim().to_string()))
        .expect("the server says where it listens");
    std::thread::spawn(move || stderr.for_each(drop));
    let n = 200;
    let urls: Vec<String> = (0..n).map(|i| format!("http://127.0.0.1:{port}/predictions/none-{i}")).collect();
    let curl = std::process::Command::new("curl").args(["-sS", "-o", "/dev/null"]).args(&urls).status().expect("curl");
    assert!(curl.success(), "curl");
    let term = std::process::Command::new("kill").args(["-TERM", &child.id().to_string()]).status().expect("kill");
    assert!(term.success());
    assert!(child.wait().expect("exit").success(), "a clean exit");
    let text = std::fs::read_to_string(&log).expect("the access log");
    let paths: Vec<String> = text
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("JSON")["path"].as_str().expect("a path").into())
        .collect();
    let expected: Vec<String> = (0..n).map(|i| format!("/predictions/none-{i}")).collect();
    assert_eq!(paths, expected, "every request's line, in order");
}

/// A collector that accepts connections and never answers: the first export hangs (until its 5 s timeout), the
/// spans recorded meanwhile fill the queue, and each one past it is dropped at once and counted, never waited for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_past_a_full_queue_are_dropped_and_counted_while_a_silent_collector_holds_an_export() {
    use ferroserve::exchange::{Exchange, Outcome};
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let failures = ExportFailures::register(&prometheus::Registry::new()).expect("counters");
    let traces = Traces::start(&format!("http://{}", silent.local_addr().expect("addr")), 1.0, failures.clone())
        .expect("an exporter");
    let exchange = Exchange {
        started: std::time::SystemTime::now(),
        start: std::time::Instant::now(),
        peer: None,
        protocol: "HTTP/1.1",
        method: "POST".into(),
        path: "/predictions/m".into(),
        request_id: "r".into(),
        trace_headers: None,
    };
    let outcome = Outcome { status: 200, grpc_status: None, bytes: 0, latency: Duration::from_millis(1), served: None };
    let (queue, sent) = (8192, 9000);
    let started = std::time::Instant::now();
    for _ in 0..sent {
        traces.record(&exchange, &outcome);
    }
    assert!(started.elapsed() < Duration::from_secs(4), "recording waits for no export: {:?}", started.elapsed());
    assert_eq!(failures.queue_full.get(), sent - queue, "one request span each; those past the queue dropped");
    tokio::task::spawn_blocking(move || drop(traces)).await.expect("the exporter stops");
    drop(silent);
}
