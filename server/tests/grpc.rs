//! The gRPC services over real HTTP/2 on 127.0.0.1, with tonic clients generated from the same protos: KServe
//! v2's health, metadata and infer (raw and typed tensors, answers equal to the HTTP path's), its errors as gRPC
//! codes (unknown model, shape and data mismatch, a huge claimed shape, malformed protobuf, the deadline);
//! Triton's model configuration and statistics; a connection past `max_connections` refused `UNAVAILABLE`;
//! TorchServe's ping, predictions and management calls; the management key in metadata.

mod support;

use std::{sync::Arc, time::Duration};

use bytes::Bytes;
use ferroserve::{
    proto::{
        inference::{
            self as pb, grpc_inference_service_client::GrpcInferenceServiceClient,
            model_infer_request::InferInputTensor,
        },
        torchserve_inference::{self as ts, inference_ap_is_service_client::InferenceApIsServiceClient},
        torchserve_management::{self as tsm, management_ap_is_service_client::ManagementApIsServiceClient},
    },
    AppState, Config,
};
use ferroserve_engine::{
    backend::{FakeMode, FakeStep},
    Registry,
};
use hyper::Method;
use support::{add_fake, landmark_body, metrics_for, options, test_config, TestServer};
use tonic::{transport::Channel, Code};

const MB: usize = 1 << 20;

/// A server with the echo fake `echo` ([2, 3, 3] in, [10] out: the first 10 input values) and `other`.
async fn server_with(config: Config) -> (TestServer, ferroserve_engine::backend::FakeBackend) {
    let registry = Arc::new(Registry::new());
    let fake = add_fake(&registry, FakeMode::Echo, options("echo", 1, 100, 8, Duration::from_millis(1)));
    add_fake(&registry, FakeMode::BatchSize, options("other", 1, 100, 8, Duration::from_millis(1)));
    let metrics = metrics_for(&config);
    (TestServer::start_state(Arc::new(AppState::new(registry, config, metrics))).await, fake)
}

async fn channel(addr: std::net::SocketAddr) -> Channel {
    Channel::from_shared(format!("http://{addr}")).expect("uri").connect().await.expect("connect")
}

async fn kserve(server: &TestServer) -> GrpcInferenceServiceClient<Channel> {
    GrpcInferenceServiceClient::new(channel(server.grpc).await)
}

/// Sample `j`: 18 values no other sample has.
#[allow(clippy::cast_precision_loss)]
fn sample(j: usize) -> Vec<f32> {
    (0..18).map(|k| j as f32 + k as f32 / 64.0).collect()
}

/// An FP32 input of `samples` samples with `shape`, no values.
fn input(datatype: &str, shape: &[i64]) -> InferInputTensor {
    InferInputTensor {
        name: "landmarks".into(),
        datatype: datatype.into(),
        shape: shape.to_vec(),
        ..Default::default()
    }
}

/// A raw FP32 request of the samples `js` to `model`.
fn raw_request(model: &str, js: &[usize]) -> pb::ModelInferRequest {
    let values: Vec<f32> = js.iter().flat_map(|&j| sample(j)).collect();
    pb::ModelInferRequest {
        model_name: model.into(),
        id: "r-1".into(),
        inputs: vec![input("FP32", &[js.len() as i64, 2, 3, 3])],
        raw_input_contents: vec![values.iter().flat_map(|x| x.to_le_bytes()).collect()],
        ..Default::default()
    }
}

/// The FP32 output of a response.
fn output(response: &pb::ModelInferResponse) -> Vec<f32> {
    let raw = response.raw_output_contents.first().expect("raw output");
    raw.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()
}

#[tokio::test]
async fn kserve_health_metadata_and_infer_answer_as_the_http_path() {
    let (server, _fake) = server_with(test_config(MB)).await;
    let mut client = kserve(&server).await;
    assert!(client.server_live(pb::ServerLiveRequest {}).await.expect("live").into_inner().live);
    assert!(client.server_ready(pb::ServerReadyRequest {}).await.expect("ready").into_inner().ready);
    let metadata = client.server_metadata(pb::ServerMetadataRequest {}).await.expect("metadata").into_inner();
    assert_eq!(metadata.name, "ferroserve");
    let ready = |name: &str| pb::ModelReadyRequest { name: name.into(), version: String::new() };
    assert!(client.model_ready(ready("echo")).await.expect("ready").into_inner().ready);
    assert!(!client.model_ready(ready("nope")).await.expect("answered").into_inner().ready, "Triton's answer");
    let model = client
        .model_metadata(pb::ModelMetadataRequest { name: "echo".into(), version: String::new() })
        .await
        .expect("model metadata")
        .into_inner();
    assert_eq!((model.name.as_str(), model.versions.as_slice()), ("echo", ["1.0".to_string()].as_slice()));
    assert_eq!(model.inputs[0].shape, [-1, 2, 3, 3]);
    assert_eq!(
        (model.outputs[0].name.as_str(), model.outputs[0].shape.as_slice()),
        ("probabilities", [-1, 10].as_slice())
    );

    let response = client.model_infer(raw_request("echo", &[1, 2])).await.expect("infer").into_inner();
    assert_eq!(
        (response.model_name.as_str(), response.model_version.as_str(), response.id.as_str()),
        ("echo", "1.0", "r-1")
    );
    assert_eq!(response.outputs[0].shape, [2, 10]);
    assert_eq!(response.outputs[0].datatype, "FP32");
    let expected: Vec<f32> = [1, 2].iter().flat_map(|&j| sample(j)[..10].to_vec()).collect();
    assert_eq!(output(&response), expected);

    // The same samples over HTTP/JSON answer the same values.
    let values: Vec<f32> = [1, 2].iter().flat_map(|&j| sample(j)).collect();
    let body = serde_json::json!({"inputs": [{"name": "landmarks", "datatype": "FP32", "shape": [2, 2, 3, 3], "data": values}]});
    let http = server.send(Method::POST, "/v2/models/echo/infer", body.to_string()).await;
    let http_values: Vec<f32> = http.json["outputs"][0]["data"]
        .as_array()
        .expect("data")
        .iter()
        .map(|v| v.as_f64().expect("number") as f32)
        .collect();
    assert_eq!(http_values, output(&response));

    // Typed contents, FP32 and INT32.
    let mut typed = raw_request("echo", &[3]);
    typed.raw_input_contents.clear();
    typed.inputs[0].contents = Some(pb::InferTensorContents { fp32_contents: sample(3), ..Default::default() });
    let response = client.model_infer(typed).await.expect("typed infer").into_inner();
    assert_eq!(output(&response), sample(3)[..10]);
    let mut ints = pb::ModelInferRequest {
        model_name: "echo".into(),
        inputs: vec![input("INT32", &[1, 2, 3, 3])],
        ..Default::default()
    };
    ints.inputs[0].contents = Some(pb::InferTensorContents { int_contents: (0..18).collect(), ..Default::default() });
    let response = client.model_infer(ints).await.expect("INT32 infer").into_inner();
    assert_eq!(output(&response), (0..10).map(|i| i as f32).collect::<Vec<_>>());

    // Several models on one connection.
    let other = client.model_infer(raw_request("other", &[1])).await.expect("other").into_inner();
    assert_eq!((other.model_name.as_str(), output(&other)[0]), ("other", 1.0));
}

#[tokio::test]
async fn bad_requests_get_the_grpc_code_of_their_http_status() {
    let (server, fake) = server_with(test_config(MB)).await;
    let mut client = kserve(&server).await;
    let code = |r: Result<tonic::Response<pb::ModelInferResponse>, tonic::Status>| {
        let status = r.expect_err("refused");
        (status.code(), status.message().to_string())
    };
    let (c, m) = code(client.model_infer(raw_request("nope", &[1])).await);
    assert_eq!(c, Code::NotFound, "{m}");
    assert!(m.contains("Model not found: nope"), "{m}");

    let mut wrong_shape = raw_request("echo", &[1]);
    wrong_shape.inputs[0].shape = vec![1, 3, 3, 2];
    let (c, m) = code(client.model_infer(wrong_shape).await);
    assert_eq!(c, Code::InvalidArgument);
    assert!(m.contains("the model takes [N, 2, 3, 3]"), "{m}");

    let mut short = raw_request("echo", &[1]);
    short.raw_input_contents[0].truncate(70);
    let (c, m) = code(client.model_infer(short).await);
    assert_eq!(c, Code::InvalidArgument);
    assert!(m.contains("raw_input_contents[0] has 70 bytes, inputs[0].shape needs 18 x 4 bytes"), "{m}");

    // A billion claimed samples with one sample's bytes: refused from the byte count, nothing allocated for it.
    let mut huge = raw_request("echo", &[1]);
    huge.inputs[0].shape = vec![1_000_000_000, 2, 3, 3];
    let (c, m) = code(client.model_infer(huge).await);
    assert_eq!(c, Code::InvalidArgument);
    assert!(m.contains("needs 18000000000 x 4 bytes"), "{m}");
    let mut overflow = raw_request("echo", &[1]);
    overflow.inputs[0].shape = vec![i64::MAX, 2, 3, 3];
    assert_eq!(code(client.model_infer(overflow).await).0, Code::InvalidArgument);

    let mut typed_short = raw_request("echo", &[1]);
    typed_short.raw_input_contents.clear();
    typed_short.inputs[0].contents =
        Some(pb::InferTensorContents { fp32_contents: vec![1.0; 17], ..Default::default() });
    let (c, m) = code(client.model_infer(typed_short).await);
    assert_eq!(c, Code::InvalidArgument);
    assert!(m.contains("inputs[0].contents.fp32_contents has 17"), "{m}");

    // The deadline: a batch that sleeps past the client's grpc-timeout.
    fake.script.push(FakeStep::Sleep(Duration::from_secs(2)));
    // (tonic's client would cancel the call itself at a grpc-timeout: ferroserve's own metadata here, and
    // grpc-timeout from a raw client below.)
    let mut late = tonic::Request::new(raw_request("echo", &[1]));
    late.metadata_mut().insert("x-request-timeout-ms", "100".parse().expect("ASCII"));
    let status = client.model_infer(late).await.expect_err("too late");
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert_eq!(status.metadata().get("x-model-version").and_then(|v| v.to_str().ok()), Some("1.0"));

    fake.script.push(FakeStep::Sleep(Duration::from_secs(2)));
    let request = prost::Message::encode_to_vec(&raw_request("echo", &[1]));
    let (grpc_status, message) =
        send_frame(server.grpc, "/inference.GRPCInferenceService/ModelInfer", &request, Some("100m")).await;
    assert_eq!(grpc_status, "4", "DEADLINE_EXCEEDED? {message}");

    // A message past max_request_size (1 MB here).
    let mut large = raw_request("echo", &[1]);
    large.raw_input_contents[0] = vec![0; 2 * MB].into();
    let (c, m) = code(client.model_infer(large).await);
    assert_eq!(c, Code::OutOfRange, "{m}");

    // Bytes that are no ModelInferRequest, in a well-formed gRPC frame.
    let (grpc_status, message) =
        send_frame(server.grpc, "/inference.GRPCInferenceService/ModelInfer", &[0x0a, 0xff, 0xff], None).await;
    // INTERNAL, as tonic, grpc-java and grpc-go answer a request message that does not parse.
    assert_eq!(grpc_status, "13", "{message}");
    assert!(message.contains("failed%20to%20decode%20Protobuf%20message"), "{message}");
    // A method the service does not have (Triton's RepositoryIndex), and a service the port does not serve.
    for path in ["/inference.GRPCInferenceService/RepositoryIndex", "/grpc.health.v1.Health/Check"] {
        let (grpc_status, message) = send_frame(server.grpc, path, &[], None).await;
        assert_eq!(grpc_status, "12", "UNIMPLEMENTED for {path}? {message}");
    }
    // The server is still up.
    assert!(client.server_live(pb::ServerLiveRequest {}).await.expect("live").into_inner().live);
}

#[tokio::test]
async fn triton_config_and_statistics_describe_the_model_and_count_its_requests() {
    let (server, _fake) = server_with(test_config(MB)).await;
    let mut client = kserve(&server).await;
    let request = |name: &str| pb::ModelConfigRequest { name: name.into(), version: String::new() };
    let config = client.model_config(request("echo")).await.expect("config").into_inner().config.expect("a config");
    assert_eq!((config.name.as_str(), config.max_batch_size), ("echo", 8));
    let (input, output) = (&config.input[0], &config.output[0]);
    assert_eq!((input.name.as_str(), input.dims.as_slice()), ("landmarks", [2, 3, 3].as_slice()));
    assert_eq!((output.name.as_str(), output.dims.as_slice()), ("probabilities", [10].as_slice()));
    assert_eq!(input.data_type(), pb::DataType::TypeFp32);
    let Some(pb::model_config::SchedulingChoice::DynamicBatching(batching)) = config.scheduling_choice else {
        panic!("a dynamic batcher")
    };
    assert_eq!(batching.max_queue_delay_microseconds, 1000);
    assert_eq!(config.instance_group[0].count, 1);
    assert_eq!(client.model_config(request("nope")).await.expect_err("unknown").code(), Code::NotFound);

    let stats = |name: &str, version: &str| pb::ModelStatisticsRequest { name: name.into(), version: version.into() };
    let before = client.model_statistics(stats("echo", "")).await.expect("statistics").into_inner();
    assert_eq!(before.model_stats.len(), 1);
    assert_eq!((before.model_stats[0].inference_count, before.model_stats[0].last_inference), (0, 0));
    // Three samples in two requests, and one request that fails.
    client.model_infer(raw_request("echo", &[1, 2])).await.expect("infer");
    client.model_infer(raw_request("echo", &[3])).await.expect("infer");
    let mut bad = raw_request("echo", &[1]);
    bad.inputs[0].shape = vec![1, 3, 3, 2];
    client.model_infer(bad).await.expect_err("bad shape");

    let after = client.model_statistics(stats("echo", "1.0")).await.expect("statistics").into_inner();
    let echo = &after.model_stats[0];
    assert_eq!((echo.name.as_str(), echo.version.as_str(), echo.inference_count), ("echo", "1.0", 3));
    assert!((1..=3).contains(&echo.execution_count), "{echo:?}");
    assert!(echo.last_inference > 0);
    let inference = echo.inference_stats.as_ref().expect("inference statistics");
    let count = |d: &Option<pb::StatisticDuration>| d.as_ref().map(|d| (d.count, d.ns > 0));
    assert_eq!(count(&inference.success), Some((2, true)));
    assert_eq!(count(&inference.fail), Some((1, true)));
    assert_eq!(inference.queue.as_ref().map(|d| d.count), Some(3), "one per sample");
    assert_eq!(inference.compute_infer.as_ref().map(|d| d.count), Some(echo.execution_count), "one per batch");

    let all = client.model_statistics(stats("", "")).await.expect("every model").into_inner();
    let mut names: Vec<_> = all.model_stats.iter().map(|m| m.name.as_str()).collect();
    names.sort_unstable();
    assert_eq!(names, ["echo", "other"]);
    for (name, version) in [("nope", ""), ("echo", "9")] {
        let status = client.model_statistics(stats(name, version)).await.expect_err("unknown");
        assert_eq!(status.code(), Code::NotFound, "{name} {version}");
    }
}

#[tokio::test]
async fn a_connection_past_max_connections_is_refused_unavailable_in_grpc_terms() {
    let (server, _fake) = server_with(Config { max_connections: 1, ..test_config(MB) }).await;
    let mut first = kserve(&server).await;
    assert!(first.server_live(pb::ServerLiveRequest {}).await.expect("live").into_inner().live);
    let mut second = kserve(&server).await;
    let status = second.server_live(pb::ServerLiveRequest {}).await.expect_err("refused");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(status.message().contains("too many open connections"), "{status:?}");
    // The raw view: an HTTP/2 answer with grpc-status 14, not an HTTP/1.1 503.
    let (grpc_status, message) = send_frame(server.grpc, "/inference.GRPCInferenceService/ServerLive", &[], None).await;
    assert_eq!(grpc_status, "14", "{message}");
    // The first connection still works.
    assert!(first.server_live(pb::ServerLiveRequest {}).await.expect("live").into_inner().live);
    let text = String::from_utf8(server.state.metrics.render(&["ferroserve_admission_refused_total"])).expect("text");
    assert!(text.contains("ferroserve_admission_refused_total{api=\"inference\",reason=\"too_many_connections\"}"));
}

/// Sends `payload` as one gRPC message to `path` over a plain HTTP/2 connection, and returns the call's
/// `grpc-status` and `grpc-message`; `timeout` is its `grpc-timeout`.
async fn send_frame(addr: std::net::SocketAddr, path: &str, payload: &[u8], timeout: Option<&str>) -> (String, String) {
    use http_body_util::{BodyExt as _, Full};
    let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .expect("HTTP/2");
    tokio::spawn(conn);
    let mut frame = vec![0u8];
    frame.extend_from_slice(&u32::try_from(payload.len()).expect("small").to_be_bytes());
    frame.extend_from_slice(payload);
    let mut request = hyper::Request::post(format!("http://{addr}{path}"));
    if let Some(timeout) = timeout {
        request = request.header("grpc-timeout", timeout);
    }
    let request = request
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(Full::new(Bytes::from(frame)))
        .expect("request");
    let response = sender.send_request(request).await.expect("answered");
    let headers = response.headers().clone();
    let collected = response.into_body().collect().await.expect("body");
    let trailers = collected.trailers().cloned().unwrap_or_default();
    let get = |name: &str| {
        trailers.get(name).or_else(|| headers.get(name)).and_then(|v| v.to_str().ok()).unwrap_or_default().to_string()
    };
    (get("grpc-status"), get("grpc-message"))
}

#[tokio::test]
async fn torchserve_inference_answers_as_its_http_api() {
    let (server, _fake) = server_with(test_config(MB)).await;
    let mut client = InferenceApIsServiceClient::new(channel(server.grpc).await);
    let health = client.ping(()).await.expect("ping").into_inner().health;
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&health).expect("JSON"),
        serde_json::json!({"status": "Healthy"})
    );
    let body = landmark_body(&sample(4));
    let request = ts::PredictionsRequest {
        model_name: "echo".into(),
        input: [("data".to_string(), body.clone().into_bytes()), ("topk".to_string(), b"3".to_vec())].into(),
        ..Default::default()
    };
    let prediction = client.predictions(request).await.expect("prediction").into_inner().prediction;
    let grpc: serde_json::Value = serde_json::from_slice(&prediction).expect("JSON");
    let http = server.send(Method::POST, "/predictions/echo?topk=3", body).await;
    assert_eq!(grpc, http.json);
    assert_eq!(grpc["predictions"].as_array().map(Vec::len), Some(3));

    let unknown = ts::PredictionsRequest { model_name: "nope".into(), ..Default::default() };
    assert_eq!(client.predictions(unknown).await.expect_err("unknown").code(), Code::NotFound);
    let bad = ts::PredictionsRequest {
        model_name: "echo".into(),
        input: [("data".to_string(), b"{\"landmarks\": 1}".to_vec())].into(),
        ..Default::default()
    };
    assert_eq!(client.predictions(bad).await.expect_err("bad").code(), Code::InvalidArgument);
}

#[tokio::test]
async fn torchserve_management_calls_answer_the_http_json() {
    let (server, _fake) = server_with(test_config(MB)).await;
    let mut client = ManagementApIsServiceClient::new(channel(server.grpc_management).await);
    let msg = |r: tonic::Response<tsm::ManagementResponse>| -> serde_json::Value {
        serde_json::from_str(&r.into_inner().msg).expect("JSON")
    };
    let list = msg(client.list_models(tsm::ListModelsRequest { limit: 1, next_page_token: 0 }).await.expect("list"));
    assert_eq!(list["models"].as_array().map(Vec::len), Some(1));
    assert_eq!(list["nextPageToken"], "1");
    let describe = tsm::DescribeModelRequest { model_name: "echo".into(), ..Default::default() };
    let described = msg(client.describe_model(describe).await.expect("describe"));
    assert_eq!(described, server.manage(Method::GET, "/models/echo").await.json);

    let scale =
        tsm::ScaleWorkerRequest { model_name: "echo".into(), min_worker: 2, synchronous: true, ..Default::default() };
    let scaled = msg(client.scale_worker(scale).await.expect("scaled"));
    assert_eq!(scaled["status"], "Workers scaled to 2 for model: echo");
    let set_default = tsm::SetDefaultRequest { model_name: "echo".into(), model_version: "1.0".into() };
    assert!(client.set_default(set_default).await.is_ok());
    let missing = tsm::SetDefaultRequest { model_name: "echo".into(), model_version: "9".into() };
    assert_eq!(client.set_default(missing).await.expect_err("no such version").code(), Code::NotFound);

    let unregister = tsm::UnregisterModelRequest { model_name: "other".into(), ..Default::default() };
    let gone = msg(client.unregister_model(unregister.clone()).await.expect("unregistered"));
    assert_eq!(gone["status"], "Model \"other\" Version: 1.0 unregistered");
    assert_eq!(client.unregister_model(unregister).await.expect_err("gone").code(), Code::NotFound);
    let register = tsm::RegisterModelRequest { url: "../etc".into(), ..Default::default() };
    assert_eq!(client.register_model(register).await.expect_err("outside the store").code(), Code::InvalidArgument);
}

#[tokio::test]
async fn the_management_service_asks_for_the_management_key_and_the_model_api_switch() {
    let config = Config { disable_token_authorization: false, enable_model_api: false, ..test_config(MB) };
    let keys = ferroserve::auth::Keys::generate(false, Duration::from_secs(3600)).expect("keys");
    let registry = Arc::new(Registry::new());
    add_fake(&registry, FakeMode::Echo, options("echo", 1, 100, 8, Duration::from_millis(1)));
    let metrics = metrics_for(&config);
    let state = AppState::new(registry, config, metrics).with_keys(Some(keys.clone()));
    let server = TestServer::start_state(Arc::new(state)).await;
    let mut client = ManagementApIsServiceClient::new(channel(server.grpc_management).await);
    let list = || tsm::ListModelsRequest { limit: 0, next_page_token: 0 };
    assert_eq!(client.list_models(list()).await.expect_err("no key").code(), Code::Unauthenticated);
    let with_key = |key: &str| {
        let mut request = tonic::Request::new(list());
        request.metadata_mut().insert("authorization", format!("Bearer {key}").parse().expect("ASCII"));
        request
    };
    assert_eq!(client.list_models(with_key("wrong")).await.expect_err("wrong key").code(), Code::Unauthenticated);
    assert!(client.list_models(with_key(&keys.management)).await.is_ok());
    let mut register = tonic::Request::new(tsm::RegisterModelRequest { url: "signnet".into(), ..Default::default() });
    register.metadata_mut().insert("authorization", format!("Bearer {}", keys.management).parse().expect("ASCII"));
    assert_eq!(client.register_model(register).await.expect_err("model API off").code(), Code::PermissionDenied);
    // The inference services ask for no key by default.
    let mut kserve = kserve(&server).await;
    assert!(kserve.model_infer(raw_request("echo", &[1])).await.is_ok());
}

#[tokio::test]
async fn streams_answer_each_request_in_turn_with_errors_in_the_response() {
    let (server, _fake) = server_with(test_config(MB)).await;
    let mut client = kserve(&server).await;
    let requests = tokio_stream::iter(vec![raw_request("echo", &[5]), raw_request("nope", &[1])]);
    let mut answers = client.model_stream_infer(requests).await.expect("stream").into_inner();
    let first = answers.message().await.expect("answer").expect("first");
    assert_eq!(output(first.infer_response.as_ref().expect("a response")), sample(5)[..10]);
    let second = answers.message().await.expect("answer").expect("second");
    assert!(second.infer_response.is_none());
    assert!(second.error_message.contains("Model not found: nope"), "{}", second.error_message);
    assert!(answers.message().await.expect("end").is_none());

    let mut torchserve = InferenceApIsServiceClient::new(channel(server.grpc).await);
    let request = |model: &str, id: &str| ts::PredictionsRequest {
        model_name: model.into(),
        input: [("data".to_string(), landmark_body(&sample(6)).into_bytes())].into(),
        sequence_id: Some(id.into()),
        ..Default::default()
    };
    let requests = tokio_stream::iter(vec![request("echo", "s-1"), request("nope", "s-2")]);
    let mut answers = torchserve.stream_predictions2(requests).await.expect("stream").into_inner();
    let first = answers.message().await.expect("answer").expect("first");
    assert_eq!(first.sequence_id.as_deref(), Some("s-1"));
    assert!(first.status.is_none() && !first.prediction.is_empty());
    let second = answers.message().await.expect("answer").expect("second");
    assert_eq!(second.sequence_id.as_deref(), Some("s-2"));
    assert_eq!(second.status.map(|s| s.code), Some(Code::NotFound as i32));
}
