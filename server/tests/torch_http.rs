//! TorchScript through the real server on the CPU: the landmark handler and KServe v2 answer the same for
//! signnet served from `signnet.pt` as from `signnet.onnx`, each response names its device; and asking for a
//! device that is not there stops start-up with a clear error.
//!
//! `signnet.pt` as users save it, alone in the store with no JSON beside it: it answers the reference through both
//! protocols, its metadata shows what it does not fix as -1, frames go to it as they come, and a request of a
//! shape it cannot take is a 400 with libtorch's message while the next one is answered.
#![cfg(feature = "torch")]

mod support;

use std::{path::Path, process::Command, sync::Arc};

use ferroserve::AppState;
use ferroserve_engine::Registry;
use hyper::{Method, StatusCode};
use support::{
    assert_answers_signnet_reference, metrics_for, models_dir, signnet_reference as reference, test_config, TestServer,
};

/// A model store with signnet twice: `onnx` (the ONNX file) and `ts` (the TorchScript file and its config), both
/// with the labels.
fn two_format_store() -> tempfile::TempDir {
    let store = tempfile::tempdir().expect("temp store");
    let bundled = models_dir().join("signnet");
    for (folder, files) in [("onnx", &["signnet.onnx"][..]), ("ts", &["signnet.pt", "signnet.pt.json"][..])] {
        let dir = store.path().join(folder);
        std::fs::create_dir(&dir).expect("model folder");
        for file in files.iter().chain(&["index_to_name.json"]) {
            std::fs::copy(bundled.join(file), dir.join(file)).expect("copy");
        }
    }
    store
}

/// A server with both copies of signnet loaded, two workers each, batches of up to 8.
async fn server(store: &Path) -> TestServer {
    let mut config = test_config(1 << 20);
    config.model_store = store.to_path_buf();
    let settings = [("default_workers_per_model", "2"), ("intra_op_threads", "1"), ("batch_size", "8")];
    config.apply(settings.iter().map(|(k, v)| ((*k).to_string(), (*v).to_string(), None)).collect()).expect("valid");
    let metrics = metrics_for(&config);
    let registry = Arc::new(Registry::new());
    for name in ["onnx", "ts"] {
        let model = ferroserve::load::load_model(&config, (name, "1.0"), name, &metrics.engine).expect("signnet loads");
        assert!(registry.register(model).is_ok());
    }
    TestServer::start_state(Arc::new(AppState::new(registry, config, metrics))).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_landmark_handler_answers_alike_on_both_backends() {
    let store = two_format_store();
    let server = server(store.path()).await;
    let reference = reference();
    let inputs = reference["landmarks"].as_array().expect("inputs");
    for (i, input) in inputs.iter().enumerate() {
        let body = serde_json::json!({ "landmarks": input, "topk": 10 }).to_string();
        let (onnx, ts) = (server.predict("onnx", body.clone()).await, server.predict("ts", body).await);
        assert_eq!((onnx.status, ts.status), (StatusCode::OK, StatusCode::OK), "{} {}", onnx.json, ts.json);
        assert_eq!(ts.json["device"], "cpu");
        assert_eq!(ts.headers.get("x-device").map(|v| v.to_str().expect("ASCII")), Some("cpu"));
        let (a, b) = (&onnx.json["predictions"], &ts.json["predictions"]);
        assert_eq!(a[0]["label"], reference["labels"][i], "input {i}");
        for (x, y) in a.as_array().expect("ten").iter().zip(b.as_array().expect("ten")) {
            assert_eq!(x["label"], y["label"], "input {i}: the same ranking");
            let (p, q) = (x["confidence"].as_f64().expect("number"), y["confidence"].as_f64().expect("number"));
            assert!((p - q).abs() < 1e-5, "input {i} {}: onnx {p}, torchscript {q}", x["label"]);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kserve_v2_describes_and_infers_alike_on_both_backends() {
    let store = two_format_store();
    let server = server(store.path()).await;
    let (onnx, ts) =
        (server.send(Method::GET, "/v2/models/onnx", "").await, server.send(Method::GET, "/v2/models/ts", "").await);
    assert_eq!(
        (onnx.json["inputs"].clone(), onnx.json["outputs"].clone()),
        (ts.json["inputs"].clone(), ts.json["outputs"].clone())
    );
    assert_eq!(ts.json["inputs"][0]["name"], "landmarks");
    let inputs = reference()["landmarks"].clone();
    let request = serde_json::json!({ "inputs": [{ "name": "landmarks", "shape": [8, 30, 21, 3], "datatype": "FP32", "data": inputs }] });
    let mut outputs = Vec::new();
    for model in ["onnx", "ts"] {
        let reply = server.send(Method::POST, &format!("/v2/models/{model}/infer"), request.to_string()).await;
        assert_eq!(reply.status, StatusCode::OK, "{model}: {}", reply.json);
        assert_eq!(reply.json["outputs"][0]["shape"], serde_json::json!([8, 10]));
        let data: Vec<f64> = serde_json::from_value(reply.json["outputs"][0]["data"].clone()).expect("numbers");
        outputs.push(data);
    }
    let worst = outputs[0].iter().zip(&outputs[1]).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
    assert!(worst < 1e-5, "the backends differ by {worst}");
}

/// A server over a store that holds `signnet.pt` alone, loaded as `load_models=signnet.pt` loads it (model
/// `signnet`, no labels), two workers, batches of up to 8.
async fn alone_server() -> (tempfile::TempDir, TestServer) {
    let store = tempfile::tempdir().expect("temp store");
    std::fs::copy(models_dir().join("signnet/signnet.pt"), store.path().join("signnet.pt")).expect("copy");
    let mut config = test_config(1 << 20);
    config.model_store = store.path().to_path_buf();
    let settings = [("default_workers_per_model", "2"), ("intra_op_threads", "1"), ("batch_size", "8")];
    config.apply(settings.iter().map(|(k, v)| ((*k).to_string(), (*v).to_string(), None)).collect()).expect("valid");
    let metrics = metrics_for(&config);
    let model = ferroserve::load::load_model(&config, ("signnet", "1.0"), "signnet.pt", &metrics.engine)
        .expect("signnet.pt loads alone");
    let registry = Arc::new(Registry::new());
    assert!(registry.register(model).is_ok());
    (store, TestServer::start_state(Arc::new(AppState::new(registry, config, metrics))).await)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signnet_pt_alone_answers_the_reference_through_both_protocols() {
    let (_store, server) = alone_server().await;
    assert_answers_signnet_reference(&server, "signnet").await;
    let example = std::fs::read(models_dir().join("signnet/example.json")).expect("example");
    let answer = server.predict("signnet", example).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.json);
    assert_eq!(answer.json["predictions"][0]["label"], "0", "class 0, hello (no labels beside the file)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metadata_of_signnet_pt_alone_shows_what_is_unknown_as_minus_one() {
    let (_store, server) = alone_server().await;
    let metadata = server.send(Method::GET, "/v2/models/signnet", "").await;
    assert_eq!(metadata.status, StatusCode::OK);
    assert_eq!(metadata.json["platform"], "pytorch_libtorch");
    let tensor = |name: &str| serde_json::json!([{ "name": name, "datatype": "FP32", "shape": [-1] }]);
    assert_eq!(
        (&metadata.json["inputs"], &metadata.json["outputs"]),
        (&tensor("input"), &tensor("output")),
        "neither rank nor sizes are known: the batch alone"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_of_another_shape_is_a_400_with_libtorchs_message_and_the_next_is_answered() {
    let (_store, server) = alone_server().await;
    // Frames of 20 points: signnet's per-frame layer takes 21 x 3 values.
    let frame = vec![[0.5_f32, 0.5, 0.0]; 20];
    let body = serde_json::json!({ "landmarks": vec![frame; 30] });
    let refused = server.predict("signnet", body.to_string()).await;
    assert_eq!(refused.status, StatusCode::BAD_REQUEST, "{}", refused.json);
    assert_eq!(refused.json["type"], "BadRequestException");
    let message = refused.json["message"].as_str().expect("a message");
    assert!(message.starts_with("the model rejected input of shape [30, 20, 3]: "), "{message}");
    assert!(message.contains("RuntimeError: mat1 and mat2 shapes cannot be multiplied"), "{message}");

    let data = vec![0.5_f32; 30 * 20 * 3];
    let request = serde_json::json!({ "inputs": [{ "name": "input", "shape": [1, 30, 20, 3], "datatype": "FP32", "data": data }] });
    let refused = server.send(Method::POST, "/v2/models/signnet/infer", request.to_string()).await;
    assert_eq!(refused.status, StatusCode::BAD_REQUEST, "{}", refused.json);
    let message = refused.json["error"].as_str().expect("KServe's error body");
    assert!(message.contains("mat1 and mat2 shapes cannot be multiplied"), "{message}");

    let example = std::fs::read(models_dir().join("signnet/example.json")).expect("example");
    let answer = server.predict("signnet", example).await;
    assert_eq!(answer.status, StatusCode::OK, "the workers go on: {}", answer.json);
    assert_eq!(answer.json["predictions"][0]["label"], "0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_go_to_a_model_that_does_not_fix_them_as_they_come() {
    let (_store, server) = alone_server().await;
    let server = Arc::new(server);
    let reference = reference();
    let inputs = reference["landmarks"].as_array().expect("inputs");
    // Each reference sequence cut to its first 12 frames, sent at once with the whole 30-frame ones: batches never
    // mix the two shapes, and the 12 frames are not resampled to anything.
    let short: Vec<serde_json::Value> =
        inputs.iter().map(|frames| frames.as_array().expect("frames")[..12].into()).collect();
    let tasks: Vec<_> = short
        .iter()
        .chain(inputs)
        .map(|frames| {
            let (server, body) = (Arc::clone(&server), serde_json::json!({ "landmarks": frames, "topk": 10 }));
            tokio::spawn(async move { server.predict("signnet", body.to_string()).await })
        })
        .collect();
    let request = serde_json::json!({ "inputs": [{ "name": "input", "shape": [8, 12, 21, 3], "datatype": "FP32", "data": short }] });
    let kserve = server.send(Method::POST, "/v2/models/signnet/infer", request.to_string()).await;
    assert_eq!(kserve.status, StatusCode::OK, "{}", kserve.json);
    assert_eq!(kserve.json["outputs"][0]["shape"], serde_json::json!([8, 10]), "the output's shape from the forward");
    let flat: Vec<f64> = serde_json::from_value(kserve.json["outputs"][0]["data"].clone()).expect("numbers");
    let expected: Vec<Vec<f64>> = serde_json::from_value(reference["probabilities"].clone()).expect("numbers");
    let wanted = flat.chunks(10).map(<[f64]>::to_vec).chain(expected);
    for (i, (task, want)) in tasks.into_iter().zip(wanted).enumerate() {
        let answer = task.await.expect("request task");
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.json);
        for prediction in answer.json["predictions"].as_array().expect("predictions") {
            let class: usize = prediction["label"].as_str().expect("label").parse().expect("an index");
            let p = prediction["confidence"].as_f64().expect("a number");
            assert!((p - want[class]).abs() < 1e-4, "request {i} class {class}: {p}, expected {}", want[class]);
        }
    }
}

/// Runs `ferroserve` with signnet to load and `env`, which must stop start-up; returns what it wrote.
fn failed_start(config: &str, env: &[(&str, &str)]) -> String {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("config.properties");
    let any = "http://127.0.0.1:0";
    let text = format!(
        "inference_address={any}\nmanagement_address={any}\nmetrics_address={any}\ngrpc_inference_port=0\ngrpc_management_port=0\nmodel_store={}\n\
         load_models=signnet\ndisable_token_authorization=true\n{config}",
        models_dir().display()
    );
    std::fs::write(&file, text).expect("config");
    let out = Command::new(env!("CARGO_BIN_EXE_ferroserve"))
        .arg("--ts-config")
        .arg(&file)
        .env_remove("TORCH_DEVICE")
        .envs(env.iter().copied())
        .output()
        .expect("ferroserve runs");
    assert!(!out.status.success(), "start-up should fail");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_device_that_is_not_there_stops_start_up() {
    // cuda:99 is on no machine, with or without a GPU.
    let stderr = failed_start("", &[("TORCH_DEVICE", "cuda:99")]);
    assert!(stderr.contains("TORCH_DEVICE asks for cuda:99"), "{stderr}");
    let stderr = failed_start("", &[("TORCH_DEVICE", "tpu")]);
    assert!(stderr.contains("TORCH_DEVICE: `tpu` is not a device: use cpu, cuda, cuda:N or mps"), "{stderr}");
    let models = r#"models={"signnet": {"1.0": {"deviceType": "gpu", "deviceIds": [99]}}}"#;
    let stderr = failed_start(models, &[]);
    assert!(stderr.contains("deviceIds [99] ask for CUDA devices"), "{stderr}");
}
