//! The bundled signnet model through the real server, loaded the way `ferroserve` loads it: concurrent requests
//! through the dynamic batcher each get the probabilities onnxruntime gave for their own input
//! (models/signnet/reference.json).

mod support;

use std::sync::Arc;

use hyper::StatusCode;
use support::{models_dir, signnet_reference as reference, signnet_server};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_match_the_reference_outputs() {
    let reference = reference();
    let inputs = reference["landmarks"].as_array().expect("inputs").clone();
    let expected = reference["probabilities"].as_array().expect("outputs").clone();
    let labels = reference["labels"].as_array().expect("labels").clone();
    let server = Arc::new(signnet_server("8").await);
    let mut tasks = Vec::new();
    for j in 0..160 {
        let server = Arc::clone(&server);
        let i = j % inputs.len();
        let body = serde_json::json!({ "landmarks": inputs[i], "topk": 10 }).to_string();
        let (want, label) = (expected[i].clone(), labels[i].clone());
        tasks.push(tokio::spawn(async move {
            let reply = server.predict("signnet", body).await;
            assert_eq!(reply.status, StatusCode::OK, "{}", reply.json);
            let predictions = reply.json["predictions"].as_array().expect("predictions").clone();
            assert_eq!(predictions.len(), 10);
            assert_eq!(predictions[0]["label"], label, "request {j} (input {i})");
            let index = ["hello", "thanks", "yes", "no", "please", "sorry", "help", "love", "eat", "drink"];
            for p in &predictions {
                let class = index.iter().position(|l| p["label"] == *l).expect("known label");
                let got = p["confidence"].as_f64().expect("confidence");
                let want = want[class].as_f64().expect("reference");
                assert!((got - want).abs() < 1e-4, "request {j} class {class}: {got} vs {want}");
            }
            reply.batch_size()
        }));
    }
    for task in tasks {
        assert!((1..=8).contains(&task.await.expect("task")));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_request_is_hello_and_other_frame_counts_are_resampled() {
    let server = signnet_server("1").await;
    let example = std::fs::read_to_string(models_dir().join("signnet/example.json")).expect("example.json");
    let reply = server.predict("signnet", example.clone()).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.json["predictions"][0]["label"], "hello");
    assert_eq!(reply.json["device"], "cpu");
    // The same gesture at 60 frames (each frame twice) is still recognised.
    let value: serde_json::Value = serde_json::from_str(&example).expect("JSON");
    let doubled: Vec<_> =
        value["landmarks"].as_array().expect("frames").iter().flat_map(|f| [f.clone(), f.clone()]).collect();
    let reply = server.predict("signnet", serde_json::json!({ "landmarks": doubled }).to_string()).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.json["predictions"][0]["label"], "hello");
}
