//! The KServe v2 protocol over real HTTP on 127.0.0.1: health, metadata and readiness; infer with every
//! datatype, flat and nested data, several samples a request, `id` and `outputs`, the binary tensor data
//! extension; the protocol's `{"error": "..."}` body with the right status on every failure; and the bundled
//! signnet model answering as onnxruntime does.

mod support;

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use ferroserve_engine::{
    backend::{FakeBackend, FakeMode, FakeStep},
    Registry,
};
use hyper::{Method, StatusCode};
use serde_json::{json, Value};
use support::{add_fake, add_fake_metered, metered_server, metric, options, signnet_reference, signnet_server};
use support::{Reply, TestServer};

const MB: usize = 1 << 20;

/// A server with one echo fake, `echo` ([2, 3, 3] in, [10] out: the first 10 input values), batching up to 8.
async fn echo_server() -> (TestServer, FakeBackend) {
    let registry = Arc::new(Registry::new());
    let fake = add_fake(&registry, FakeMode::Echo, options("echo", 2, 1000, 8, Duration::from_millis(2)));
    (TestServer::start(registry, MB).await, fake)
}

/// Sample `j` of the fake model: 18 values that no other sample has.
fn sample(j: usize) -> Vec<f32> {
    #[allow(clippy::cast_precision_loss)]
    (0..18).map(|k| j as f32 + k as f32 / 64.0).collect()
}

/// An infer body with one input `landmarks`.
fn body(datatype: &str, shape: &[usize], data: &Value) -> String {
    json!({ "inputs": [{ "name": "landmarks", "datatype": datatype, "shape": shape, "data": data }] }).to_string()
}

/// An FP32 body of the samples `js`, flat.
fn samples_body(js: &[usize]) -> String {
    let data: Vec<f32> = js.iter().flat_map(|&j| sample(j)).collect();
    body("FP32", &[js.len(), 2, 3, 3], &json!(data))
}

async fn infer(server: &TestServer, model: &str, body: impl Into<bytes::Bytes>) -> Reply {
    server.send(Method::POST, &format!("/v2/models/{model}/infer"), body).await
}

/// The output data of a reply, as f32.
#[allow(clippy::cast_possible_truncation)]
fn output_data(reply: &Reply) -> Vec<f32> {
    let data = reply.json["outputs"][0]["data"].as_array().unwrap_or_else(|| panic!("no data: {}", reply.text));
    data.iter().map(|v| v.as_f64().expect("a number") as f32).collect()
}

/// Asserts the protocol's error body, `{"error": "..."}` alone, with `status`, and returns the message.
fn assert_error(reply: &Reply, status: StatusCode) -> String {
    assert_eq!(reply.status, status, "{}", reply.text);
    let body = reply.json.as_object().unwrap_or_else(|| panic!("not a JSON object: {}", reply.text));
    assert_eq!(body.len(), 1, "{}", reply.text);
    body["error"].as_str().expect("error is a string").to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_server_metadata() {
    let (server, _) = echo_server().await;
    let live = server.send(Method::GET, "/v2/health/live", "").await;
    assert_eq!((live.status, live.json.clone()), (StatusCode::OK, json!({ "live": true })));
    let ready = server.send(Method::GET, "/v2/health/ready", "").await;
    assert_eq!((ready.status, ready.json.clone()), (StatusCode::OK, json!({ "ready": true })));
    for path in ["/v2", "/v2/"] {
        let metadata = server.send(Method::GET, path, "").await;
        assert_eq!(metadata.status, StatusCode::OK);
        assert_eq!(metadata.json["name"], "ferroserve");
        assert!(metadata.json["version"].is_string());
        assert_eq!(metadata.json["extensions"], json!(["binary_tensor_data"]));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn model_metadata_and_readiness() {
    let (server, _) = echo_server().await;
    let expected = json!({
        "name": "echo",
        "versions": ["1.0"],
        "platform": "fake",
        "inputs": [{ "name": "landmarks", "datatype": "FP32", "shape": [-1, 2, 3, 3] }],
        "outputs": [{ "name": "probabilities", "datatype": "FP32", "shape": [-1, 10] }],
    });
    for path in ["/v2/models/echo", "/v2/models/echo/versions/1.0"] {
        let metadata = server.send(Method::GET, path, "").await;
        assert_eq!((metadata.status, metadata.json), (StatusCode::OK, expected.clone()), "{path}");
    }
    for path in ["/v2/models/echo/ready", "/v2/models/echo/versions/1.0/ready"] {
        let ready = server.send(Method::GET, path, "").await;
        assert_eq!((ready.status, ready.json), (StatusCode::OK, json!({ "name": "echo", "ready": true })));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_models_and_paths_are_404_and_wrong_methods_405() {
    let (server, _) = echo_server().await;
    for (method, path, expected) in [
        (Method::GET, "/v2/models/nope", "Model not found: nope"),
        (Method::GET, "/v2/models/nope/ready", "Model not found: nope"),
        (Method::GET, "/v2/models/echo/versions/9.9", "Model version: 9.9 does not exist for model: echo"),
        (Method::POST, "/v2/models/nope/infer", "Model not found: nope"),
        (Method::POST, "/v2/models/echo/versions/9.9/infer", "Model version: 9.9"),
        (Method::GET, "/v2/nowhere", "/v2/nowhere"),
        (Method::GET, "/v2/models/echo/elsewhere", "/v2/models/echo/elsewhere"),
    ] {
        let reply = server.send(method, path, samples_body(&[0])).await;
        let message = assert_error(&reply, StatusCode::NOT_FOUND);
        assert!(message.contains(expected), "{path}: {message}");
    }
    for (method, path) in [
        (Method::GET, "/v2/models/echo/infer"),
        (Method::POST, "/v2/health/live"),
        (Method::DELETE, "/v2/models/echo"),
        (Method::PUT, "/v2/models/echo/versions/1.0/infer"),
    ] {
        let reply = server.send(method, path, "").await;
        assert_error(&reply, StatusCode::METHOD_NOT_ALLOWED);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fp32_data_flat_or_nested_gives_the_output_tensor() {
    let (server, _) = echo_server().await;
    let values = sample(7);
    let nested: Vec<Vec<Vec<f32>>> = values.chunks(9).map(|f| f.chunks(3).map(<[f32]>::to_vec).collect()).collect();
    for data in [json!(values), json!([nested])] {
        let reply = infer(&server, "echo", body("FP32", &[1, 2, 3, 3], &data)).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
        assert_eq!(reply.json["model_name"], "echo");
        assert_eq!(reply.json["model_version"], "1.0");
        assert!(reply.json.get("id").is_none(), "no id was sent: {}", reply.text);
        let output = &reply.json["outputs"][0];
        assert_eq!((&output["name"], &output["datatype"]), (&json!("probabilities"), &json!("FP32")));
        assert_eq!(output["shape"], json!([1, 10]));
        assert_eq!(output_data(&reply), values[..10]);
        for header in ["x-queue-time", "x-inference-time", "x-device"] {
            assert!(reply.headers.contains_key(header), "{header}");
        }
        assert_eq!(reply.batch_size(), 1);
    }
    let versioned = server.send(Method::POST, "/v2/models/echo/versions/1.0/infer", samples_body(&[3])).await;
    assert_eq!(output_data(&versioned), sample(3)[..10]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_datatypes_are_converted_to_f32() {
    let (server, _) = echo_server().await;
    let ints: Vec<i64> = (0..18).map(|k| k * 1000 - 5000).collect();
    let bools: Vec<bool> = (0..18).map(|k| k % 3 == 0).collect();
    let halves: Vec<f32> = (0..18).map(|k| f32::from(u8::try_from(k).expect("small")) * 0.25 - 2.0).collect();
    #[allow(clippy::cast_precision_loss)]
    let cases = [
        ("INT32", json!(ints), ints.iter().map(|&i| i as f32).collect::<Vec<_>>()),
        (
            "INT64",
            json!(ints.iter().map(|i| i * 1_000_000).collect::<Vec<_>>()),
            ints.iter().map(|&i| (i * 1_000_000) as f32).collect(),
        ),
        ("FP16", json!(halves), halves.clone()),
        ("BOOL", json!(bools), bools.iter().map(|&b| f32::from(u8::from(b))).collect()),
    ];
    for (datatype, data, expected) in cases {
        let reply = infer(&server, "echo", body(datatype, &[1, 2, 3, 3], &data)).await;
        assert_eq!(reply.status, StatusCode::OK, "{datatype}: {}", reply.text);
        assert_eq!(reply.json["outputs"][0]["datatype"], "FP32");
        assert_eq!(output_data(&reply), expected[..10], "{datatype}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_samples_in_one_request_each_get_their_own_row() {
    let (server, fake) = echo_server().await;
    let reply = infer(&server, "echo", samples_body(&[4, 5, 6])).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    assert_eq!(reply.json["outputs"][0]["shape"], json!([3, 10]));
    let data = output_data(&reply);
    for (row, j) in data.chunks(10).zip([4, 5, 6]) {
        assert_eq!(row, &sample(j)[..10], "sample {j}");
    }
    assert_eq!(fake.batch_sizes().iter().sum::<usize>(), 3, "one engine request per sample");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_concurrent_requests_of_three_samples_never_mix_rows() {
    let (server, fake) = echo_server().await;
    let server = Arc::new(server);
    let tasks: Vec<_> = (0..100)
        .map(|r| {
            let server = Arc::clone(&server);
            tokio::spawn(async move {
                let js = [3 * r, 3 * r + 1, 3 * r + 2];
                let reply = infer(&server, "echo", samples_body(&js)).await;
                assert_eq!(reply.status, StatusCode::OK, "request {r}: {}", reply.text);
                for (row, j) in output_data(&reply).chunks(10).zip(js) {
                    assert_eq!(row, &sample(j)[..10], "request {r} got another sample's row instead of {j}");
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("request task");
    }
    let sizes = fake.batch_sizes();
    assert_eq!(sizes.iter().sum::<usize>(), 300, "every sample ran exactly once");
    assert!(sizes.iter().all(|&n| (1..=8).contains(&n)), "{sizes:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_id_is_echoed_and_outputs_are_honoured() {
    let (server, _) = echo_server().await;
    let input = json!({ "name": "landmarks", "datatype": "FP32", "shape": [1, 2, 3, 3], "data": sample(1) });
    let request = json!({ "id": "req-42", "inputs": [input], "outputs": [{ "name": "probabilities" }] });
    let reply = infer(&server, "echo", request.to_string()).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    assert_eq!(reply.json["id"], "req-42");
    assert_eq!(output_data(&reply), sample(1)[..10]);
    let wrong = json!({ "inputs": [input], "outputs": [{ "name": "logits" }] });
    let message = assert_error(&infer(&server, "echo", wrong.to_string()).await, StatusCode::BAD_REQUEST);
    assert!(message.contains("unknown output `logits`") && message.contains("`probabilities`"), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_are_400_with_the_protocols_body_and_harm_nothing() {
    let registry = Arc::new(Registry::new());
    let fake = add_fake(&registry, FakeMode::Echo, options("echo", 1, 10, 4, Duration::from_millis(1)));
    let server = TestServer::start(registry, 64 * 1024).await;
    let good = samples_body(&[0]);
    let cases: Vec<(String, &str)> = vec![
        (good.replace("\"landmarks\"", "\"frames\""), "unknown input `frames`: the model takes one input, `landmarks`"),
        (good.replace("FP32", "FP64"), "unsupported datatype `FP64`"),
        (good.replace("FP32", "BYTES"), "unsupported datatype `BYTES`"),
        (body("FP32", &[1, 3, 3, 2], &json!(sample(2))), "the model takes [N, 2, 3, 3] with N >= 1"),
        (body("FP32", &[2, 2, 3, 3], &json!(sample(2))), "has 36 elements, inputs[0].data has 18"),
        (body("FP32", &[1, 2, 3, 3], &json!(sample(2)[..17])), "has 18 elements, inputs[0].data has 17"),
        (body("FP32", &[0, 2, 3, 3], &json!([])), "N >= 1"),
        (good.replacen("0.0", "NaN", 1), "not valid JSON"),
        (good.replacen("0.0", "\"x\"", 1), "must be a finite FP32 number, got the string \"x\""),
        (good.replacen("0.0", "1e300", 1), "finite FP32 number"),
        (json!({ "inputs": [] }).to_string(), "the model takes one input, `landmarks`; the request has 0"),
        ("{\"inputs\": \"none\"}".into(), "`inputs` must be an array"),
        ("not json".into(), "not valid JSON"),
        (String::new(), "empty body"),
        (good[..good.len() / 2].to_string(), "not valid JSON"),
    ];
    for (text, expected) in cases {
        let message = assert_error(&infer(&server, "echo", text.clone()).await, StatusCode::BAD_REQUEST);
        assert!(message.contains(expected), "{text:?}: {message}");
    }
    // A shape that claims a billion samples is refused at once, without the memory for them.
    let started = Instant::now();
    let huge = body("FP32", &[1_000_000_000, 2, 3, 3], &json!(sample(2)));
    let message = assert_error(&infer(&server, "echo", huge).await, StatusCode::BAD_REQUEST);
    assert!(message.contains("has 18000000000 elements, inputs[0].data has 18"), "{message}");
    assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());
    let more_than_the_queue = samples_body(&(0..11).collect::<Vec<_>>());
    let message = assert_error(&infer(&server, "echo", more_than_the_queue).await, StatusCode::BAD_REQUEST);
    assert!(message.contains("11 samples, more than the model's job queue holds (10)"), "{message}");
    let too_large = samples_body(&(0..500).collect::<Vec<_>>());
    assert_error(&infer(&server, "echo", too_large).await, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(fake.batch_sizes().is_empty(), "nothing bad reached the model");
    assert_eq!(infer(&server, "echo", good).await.status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_is_503_with_the_protocols_body() {
    let registry = Arc::new(Registry::new());
    let fake = add_fake(&registry, FakeMode::Echo, options("busy", 1, 2, 1, Duration::ZERO));
    let model = registry.get("busy", None).expect("model");
    let server = Arc::new(TestServer::start(Arc::clone(&registry), MB).await);
    fake.gate.close();
    let first = tokio::spawn({
        let server = Arc::clone(&server);
        async move { infer(&server, "busy", samples_body(&[0])).await.status }
    });
    let gate = fake.gate.clone();
    tokio::task::spawn_blocking(move || gate.wait_arrived(1)).await.expect("the worker is busy");
    // Two samples in one request fill the queue of two.
    let queued = tokio::spawn({
        let server = Arc::clone(&server);
        async move { infer(&server, "busy", samples_body(&[1, 2])).await }
    });
    while model.queue_len() < 2 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let message = assert_error(&infer(&server, "busy", samples_body(&[3])).await, StatusCode::SERVICE_UNAVAILABLE);
    assert!(message.contains("queue"), "{message}");

    fake.gate.open();
    assert_eq!(first.await.expect("first"), StatusCode::OK);
    let queued = queued.await.expect("queued");
    assert_eq!(output_data(&queued), [&sample(1)[..10], &sample(2)[..10]].concat());
    assert_eq!(infer(&server, "busy", samples_body(&[4])).await.status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_model_is_500_and_an_oversized_response_too() {
    let registry = Arc::new(Registry::new());
    let fake = add_fake(&registry, FakeMode::Echo, options("flaky", 1, 100, 1, Duration::ZERO));
    fake.script.push(FakeStep::Fail("scripted failure".into()));
    let mut config = support::test_config(MB);
    config.max_response_size = 1000;
    let metrics = support::metrics_for(&config);
    let server = TestServer::start_state(Arc::new(ferroserve::AppState::new(registry, config, metrics))).await;
    let message = assert_error(&infer(&server, "flaky", samples_body(&[1])).await, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(message.contains("scripted failure"), "{message}");
    assert_eq!(infer(&server, "flaky", samples_body(&[1])).await.status, StatusCode::OK);
    let twenty = samples_body(&(0..20).collect::<Vec<_>>());
    let message = assert_error(&infer(&server, "flaky", twenty).await, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(message.contains("max_response_size"), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_tensor_data_in_and_out() {
    let (server, _) = echo_server().await;
    let values: Vec<f32> = [sample(8), sample(9)].concat();
    let input = json!({ "name": "landmarks", "datatype": "FP32", "shape": [2, 2, 3, 3],
                        "parameters": { "binary_data_size": 144 } });
    let header = json!({ "id": "bin", "inputs": [input], "outputs": [{ "name": "probabilities",
                         "parameters": { "binary_data": true } }] })
    .to_string();
    let mut request = header.clone().into_bytes();
    request.extend(values.iter().flat_map(|x| x.to_le_bytes()));
    let json_len = header.len().to_string();
    let headers =
        [("content-type", "application/octet-stream"), ("inference-header-content-length", json_len.as_str())];
    let reply = server.send_raw(Method::POST, "/v2/models/echo/infer", &headers, request.clone()).await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    assert_eq!(reply.headers["content-type"], "application/octet-stream");
    let split: usize = reply.headers["inference-header-content-length"].to_str().expect("ASCII").parse().expect("n");
    let (head, data) = reply.body.split_at(split);
    let head: Value = serde_json::from_slice(head).expect("the JSON part");
    assert_eq!(head["id"], "bin");
    let output = &head["outputs"][0];
    assert_eq!((&output["shape"], &output["parameters"]), (&json!([2, 10]), &json!({ "binary_data_size": 80 })));
    assert!(output.get("data").is_none());
    let got: Vec<f32> = data.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().expect("4 bytes"))).collect();
    assert_eq!(got, [&sample(8)[..10], &sample(9)[..10]].concat());

    // Binary in, JSON out.
    let json_out = header.replace("true", "false");
    let mut request = json_out.clone().into_bytes();
    request.extend(values.iter().flat_map(|x| x.to_le_bytes()));
    let json_len = json_out.len().to_string();
    let headers = [("inference-header-content-length", json_len.as_str())];
    let reply = server.send_raw(Method::POST, "/v2/models/echo/infer", &headers, request).await;
    let reply_json: Value = serde_json::from_slice(&reply.body).expect("JSON");
    assert_eq!(reply_json["outputs"][0]["data"].as_array().map(Vec::len), Some(20));

    // A size that does not match the shape, or a header longer than the body, is a 400 with the protocol's body.
    let headers = [("inference-header-content-length", "100000")];
    let reply = server.send_raw(Method::POST, "/v2/models/echo/infer", &headers, header.clone().into_bytes()).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    let error: Value = serde_json::from_slice(&reply.body).expect("JSON");
    assert!(error["error"].as_str().expect("error").contains("Inference-Header-Content-Length is 100000"));
    let short = header.replace("144", "140");
    let mut request = short.clone().into_bytes();
    request.extend(&values.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>()[..140]);
    let json_len = short.len().to_string();
    let headers = [("inference-header-content-length", json_len.as_str())];
    let reply = server.send_raw(Method::POST, "/v2/models/echo/infer", &headers, request).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_infer_request_is_recorded_in_the_metrics() {
    let server = metered_server(support::test_config(MB)).await;
    add_fake_metered(
        &server.state.registry,
        &server.state.metrics.engine,
        FakeMode::Echo,
        options("echo", 1, 10, 4, Duration::ZERO),
    );
    assert_eq!(infer(&server, "echo", samples_body(&[1])).await.status, StatusCode::OK);
    assert_eq!(infer(&server, "echo", samples_body(&[1, 2, 3])).await.status, StatusCode::OK);
    assert_eq!(infer(&server, "echo", "{}").await.status, StatusCode::BAD_REQUEST);
    let text = server.scrape().await;
    let labels = [("model_name", "echo")];
    assert_eq!(metric(&text, "ferroserve_request_latency_seconds_count", &labels), Some(3.0), "{text}");
    assert_eq!(metric(&text, "ferroserve_inference_count_total", &labels), Some(4.0), "one per sample: {text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signnet_through_v2_matches_the_reference() {
    let reference = signnet_reference();
    let inputs = reference["landmarks"].as_array().expect("inputs").clone();
    let expected = reference["probabilities"].as_array().expect("outputs").clone();
    let server = Arc::new(signnet_server("8").await);
    let metadata = server.send(Method::GET, "/v2/models/signnet", "").await;
    assert_eq!(metadata.json["platform"], "onnxruntime_onnx");
    assert_eq!(metadata.json["inputs"][0]["shape"], json!([-1, 30, 21, 3]));
    assert_eq!(metadata.json["outputs"][0]["shape"], json!([-1, 10]));
    let check = |reply: &Reply, rows: &[usize]| {
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
        let data = output_data(reply);
        assert_eq!(data.len(), rows.len() * 10);
        for (row, &i) in data.chunks(10).zip(rows) {
            for (class, &got) in row.iter().enumerate() {
                let want = expected[i][class].as_f64().expect("reference");
                assert!((f64::from(got) - want).abs() < 1e-4, "input {i} class {class}: {got} vs {want}");
            }
        }
    };
    // The 8 reference inputs as one request of 8 samples, in the nested form.
    let all = infer(&server, "signnet", body_for("landmarks", inputs.len(), &json!(inputs))).await;
    check(&all, &(0..inputs.len()).collect::<Vec<_>>());
    // And as 8 concurrent requests.
    let tasks: Vec<_> = (0..inputs.len())
        .map(|i| {
            let server = Arc::clone(&server);
            let body = body_for("landmarks", 1, &json!([inputs[i]]));
            tokio::spawn(async move { (i, infer(&server, "signnet", body).await) })
        })
        .collect();
    for task in tasks {
        let (i, reply) = task.await.expect("task");
        check(&reply, &[i]);
    }
}

/// An FP32 signnet body of `n` samples.
fn body_for(name: &str, n: usize, data: &Value) -> String {
    json!({ "inputs": [{ "name": name, "datatype": "FP32", "shape": [n, 30, 21, 3], "data": data }] }).to_string()
}
