//! The inference API over real HTTP on 127.0.0.1, with the scripted fake backend: routing, no cross-talk
//! between concurrent requests, overload answered at once, and bad input answered 400 without harm.

mod support;

use std::{sync::Arc, time::Duration};

use ferroserve_engine::{
    backend::{FakeMode, FakeStep},
    Registry,
};
use hyper::{Method, StatusCode};
use support::{add_fake, landmark_body, options, TestServer};

const MB: usize = 1 << 20;

/// Values of request `j`: class `j % 10` has the unique top score 0.5 + j/10^4, the others stay below 0.002.
fn distinct_values(j: usize) -> (usize, f32, Vec<f32>) {
    #[allow(clippy::cast_precision_loss)]
    let mut values: Vec<f32> = (0..18).map(|k| k as f32 * 1e-4).collect();
    #[allow(clippy::cast_precision_loss)]
    let top = 0.5 + j as f32 * 1e-4;
    values[j % 10] = top;
    (j % 10, top, values)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ping_and_routing() {
    let server = TestServer::start(Arc::new(Registry::new()), MB).await;
    let ping = server.send(Method::GET, "/ping", "").await;
    assert_eq!(ping.status, StatusCode::OK);
    assert_eq!(ping.json, serde_json::json!({"status": "Healthy"}));
    let missing = server.predict("nope", "{}").await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert_eq!(missing.json["type"], "ModelNotFoundException");
    assert_eq!(missing.json["code"], 404);
    let unknown = server.send(Method::GET, "/nowhere", "").await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    let wrong_method = server.send(Method::GET, "/predictions/nope", "").await;
    assert_eq!(wrong_method.status, StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_larger_than_the_read_buffer_arrive_whole_and_oversized_heads_get_431() {
    let registry = Arc::new(Registry::new());
    add_fake(&registry, FakeMode::Echo, options("m", 1, 10, 1, Duration::ZERO));
    let server = TestServer::start(registry, MB).await;
    // A landmark body of 420 frames is about 75 KiB: several 8 KiB reads.
    let big = landmark_body(&(0..60 * 21 * 3).map(|i| (i % 97) as f32 / 97.0).collect::<Vec<_>>());
    assert!(big.len() > 32 * 1024, "{}", big.len());
    let answered = server.predict("m", big).await;
    assert_eq!(answered.status, StatusCode::OK, "{}", answered.text);
    let header = "x".repeat(6 * 1024);
    let fine = server.send_raw(Method::GET, "/ping", &[("x-big", &header)], Vec::new()).await;
    assert_eq!(fine.status, StatusCode::OK, "a 6 KiB header is read");
    let header = "x".repeat(9 * 1024);
    let refused = server.send_raw(Method::GET, "/ping", &[("x-big", &header)], Vec::new()).await;
    assert_eq!(refused.status, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundreds_of_concurrent_requests_each_get_their_own_answer() {
    let registry = Arc::new(Registry::new());
    let fake = add_fake(&registry, FakeMode::Echo, options("echo", 2, 1000, 8, Duration::from_millis(2)));
    let server = Arc::new(TestServer::start(Arc::clone(&registry), MB).await);
    let mut tasks = Vec::new();
    for j in 0..400 {
        let server = Arc::clone(&server);
        tasks.push(tokio::spawn(async move {
            let (class, top, values) = distinct_values(j);
            let reply = server.predict("echo", landmark_body(&values)).await;
            assert_eq!(reply.status, StatusCode::OK, "request {j}: {}", reply.json);
            let prediction = &reply.json["predictions"][0];
            assert_eq!(prediction["label"], format!("c{class}"), "request {j}");
            let confidence = prediction["confidence"].as_f64().expect("confidence");
            assert!((confidence - f64::from(top)).abs() < 1e-7, "request {j} got another's row: {confidence}");
            assert_eq!(reply.json["device"], "cpu");
            reply.batch_size()
        }));
    }
    for task in tasks {
        let batch = task.await.expect("request task");
        assert!((1..=8).contains(&batch));
    }
    let sizes = fake.batch_sizes();
    assert_eq!(sizes.iter().sum::<usize>(), 400, "every request ran exactly once");
    assert!(sizes.iter().all(|&n| (1..=8).contains(&n)), "{sizes:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_answers_503_at_once_and_the_server_recovers() {
    let registry = Arc::new(Registry::new());
    let fake = add_fake(&registry, FakeMode::Echo, options("busy", 1, 2, 1, Duration::ZERO));
    // The workers run clones of the fake, which share its gate: closing it holds the one worker.
    let registered = fake.gate.clone();
    let model = registry.get("busy", None).expect("model");
    let server = Arc::new(TestServer::start(Arc::clone(&registry), MB).await);
    let (_, _, values) = distinct_values(0);
    let body = landmark_body(&values);

    registered.close();
    let first = tokio::spawn({
        let (server, body) = (Arc::clone(&server), body.clone());
        async move { server.predict("busy", body).await.status }
    });
    let gate_for_wait = registered.clone();
    tokio::task::spawn_blocking(move || gate_for_wait.wait_arrived(1)).await.expect("worker busy");
    let queued: Vec<_> = (0..2)
        .map(|_| {
            let (server, body) = (Arc::clone(&server), body.clone());
            tokio::spawn(async move { server.predict("busy", body).await.status })
        })
        .collect();
    while model.queue_len() < 2 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let refused = server.predict("busy", body.clone()).await;
    assert_eq!(refused.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(refused.json["type"], "ServiceUnavailableException");
    assert!(refused.json["message"].as_str().expect("message").contains("queue"));

    registered.open();
    assert_eq!(first.await.expect("first"), StatusCode::OK);
    for q in queued {
        assert_eq!(q.await.expect("queued"), StatusCode::OK);
    }
    assert_eq!(server.predict("busy", body).await.status, StatusCode::OK);
    assert_eq!(model.stats().rejected_queue_full, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_bodies_get_400_with_a_message_and_never_harm_the_server() {
    let registry = Arc::new(Registry::new());
    add_fake(&registry, FakeMode::Echo, options("m", 1, 10, 4, Duration::from_millis(1)));
    let server = TestServer::start(Arc::clone(&registry), 4096).await;
    let (_, _, values) = distinct_values(3);
    let good = landmark_body(&values);
    let cases: Vec<(String, &str)> = vec![
        (String::new(), "empty body"),
        ("not json".into(), "not valid JSON"),
        (good[..good.len() / 2].to_string(), "not valid JSON"),
        ("[1, 2, 3]".into(), "JSON object"),
        ("{\"frames\": []}".into(), "missing field `landmarks`"),
        ("{\"landmarks\": \"abc\"}".into(), "array of frames"),
        ("{\"landmarks\": []}".into(), "no frames"),
        ("{\"landmarks\": [[[0,0,0]]]}".into(), "points"),
        (good.replacen("0.0", "\"x\"", 1), "finite number"),
        (good.replacen("0.0", "NaN", 1), "not valid JSON"),
        (good.replacen("0.0", "1e999", 1), ""),
        (good.replacen("0.0", "true", 1), "finite number"),
        (good.replacen('}', ", \"topk\": \"two\"}", 1), "topk"),
    ];
    for (body, expected) in cases {
        let reply = server.predict("m", body.clone()).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{body:?} -> {}", reply.json);
        assert_eq!(reply.json["code"], 400);
        assert_eq!(reply.json["type"], "BadRequestException");
        let message = reply.json["message"].as_str().expect("message");
        assert!(message.contains(expected), "{body:?} -> {message}");
    }
    let huge = format!("{{\"landmarks\": [{}]}}", "[0,0,0],".repeat(2000));
    let too_large = server.predict("m", huge).await;
    assert_eq!(too_large.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(too_large.json["code"], 413);
    let ok = server.predict("m", good).await;
    assert_eq!(ok.status, StatusCode::OK, "{}", ok.json);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topk_comes_from_the_body_or_the_query() {
    let registry = Arc::new(Registry::new());
    add_fake(&registry, FakeMode::Echo, options("m", 1, 10, 1, Duration::ZERO));
    let server = TestServer::start(Arc::clone(&registry), MB).await;
    let (_, _, values) = distinct_values(4);
    let body = landmark_body(&values);
    let by_query = server.send(Method::POST, "/predictions/m?topk=3", body.clone()).await;
    let labels: Vec<_> =
        by_query.json["predictions"].as_array().expect("list").iter().map(|p| p["label"].clone()).collect();
    assert_eq!(labels, vec!["c4", "c9", "c8"], "most probable first");
    let by_body = server.predict("m", body.replacen('}', ", \"topk\": 2}", 1)).await;
    assert_eq!(by_body.json["predictions"].as_array().expect("list").len(), 2);
    let versioned = server.send(Method::POST, "/predictions/m/1.0?topk=20", body.clone()).await;
    assert_eq!(versioned.json["predictions"].as_array().expect("list").len(), 10, "k above the classes: all");
    let bad = server.send(Method::POST, "/predictions/m?topk=0", body).await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_batch_answers_500_and_the_next_one_succeeds() {
    let registry = Arc::new(Registry::new());
    let fake = add_fake(&registry, FakeMode::Echo, options("flaky", 1, 10, 1, Duration::ZERO));
    fake.script.push(FakeStep::Fail("scripted failure".into()));
    fake.script.push(FakeStep::Panic("scripted panic".into()));
    let server = TestServer::start(Arc::clone(&registry), MB).await;
    let (_, _, values) = distinct_values(5);
    let body = landmark_body(&values);
    for expected in ["scripted failure", "scripted panic"] {
        let failed = server.predict("flaky", body.clone()).await;
        assert_eq!(failed.status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(failed.json["type"], "InternalServerException");
        assert!(failed.json["message"].as_str().expect("message").contains(expected), "{}", failed.json);
    }
    assert_eq!(server.predict("flaky", body).await.status, StatusCode::OK);
}
