//! Canary versions over real HTTP, with two fake versions of one model that answer differently (each labels its
//! classes with its version, and names itself in `x-model-version`): the split follows the percentage, a client
//! key sticks to one version, a URL naming a version bypasses the split, a canary that cannot serve gets nothing,
//! the management API sets, clears and promotes, and the analysis (driven by the test, on the requests it sent)
//! rolls a failing canary back and promotes a good one; the per-version metrics agree with the answers.

mod support;

use std::{sync::Arc, time::Duration};

use ferroserve::{metrics::ServerMetrics, AppState, Config};
use ferroserve_engine::{
    backend::{FakeBackend, FakeMode, FakeStep},
    canary, Model, Registry,
};
use hyper::{Method, StatusCode};
use support::{fake_spec, landmark_body, metric, metrics_for, options, test_config, TestServer};

/// Version `version` of the fake model `m`, recording into `metrics`: its labels are `{version}:c0` ...
fn add_version(registry: &Registry, metrics: &ServerMetrics, version: &str, workers: usize) -> FakeBackend {
    let fake = FakeBackend::new(fake_spec(), FakeMode::Echo);
    let mut options = options("m", workers, 256, 4, Duration::ZERO);
    options.version = version.into();
    let labels = (0..10).map(|i| format!("{version}:c{i}")).collect();
    let model = Model::start_with(Arc::new(fake.clone()), options, &metrics.engine).expect("the fake starts");
    assert!(registry.register(model.with_labels(labels)).is_ok(), "registered once");
    fake
}

/// A server over `m` 1.0 (the default) and 2.0, both with one worker, configured by `config`.
async fn two_versions(config: Config) -> (TestServer, FakeBackend) {
    let metrics = metrics_for(&config);
    let registry = Arc::new(Registry::new());
    add_version(&registry, &metrics, "1.0", 1);
    let canary = add_version(&registry, &metrics, "2.0", 1);
    (TestServer::start_state(Arc::new(AppState::new(registry, config, metrics))).await, canary)
}

/// A body whose top class is 3 (the fake echoes its input).
fn body() -> String {
    let mut values = [0.0; 18];
    values[3] = 1.0;
    landmark_body(&values)
}

/// Seeded keys (SplitMix64), the same on every run.
fn keys(seed: u64, n: usize) -> Vec<String> {
    let mut state = seed;
    (0..n)
        .map(|_| {
            state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            format!("user-{:x}", z ^ (z >> 31))
        })
        .collect()
}

/// The version named in an answer's `x-model-version`.
fn version_of(reply: &support::Reply) -> String {
    let header = reply.headers.get("x-model-version").expect("x-model-version");
    header.to_str().expect("ASCII").to_string()
}

/// Predicts `/predictions/m` with `key` as `x-canary-key`: the answer's version, checked against its body.
async fn ask(server: &TestServer, key: &str) -> (StatusCode, String) {
    let reply = server.send_with_header(Method::POST, "/predictions/m", body(), "x-canary-key", key).await;
    let version = version_of(&reply);
    if reply.status == StatusCode::OK {
        assert_eq!(reply.json["predictions"][0]["label"], format!("{version}:c3"), "the body shows who answered");
    }
    (reply.status, version)
}

/// The version the split sends `key` to at `percent`, as the engine computes it.
fn expected(key: &str, percent: f64) -> &'static str {
    let weight = canary::Weight::from_percent(percent).expect("a percentage");
    if weight.takes(canary::bucket("m", key.as_bytes())) {
        "2.0"
    } else {
        "1.0"
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_split_follows_the_percentage_and_keys_stick() {
    let (server, _) = two_versions(test_config(1 << 20)).await;
    for (percent, n) in [(1.0, 3000), (10.0, 1500), (50.0, 1000)] {
        let set = server.manage(Method::PUT, &format!("/models/m/2.0/canary?percent={percent}")).await;
        assert_eq!(set.status, StatusCode::OK, "{}", set.text);
        let keys = keys(7, n);
        let mut to_canary = 0;
        for key in &keys {
            let (status, version) = ask(&server, key).await;
            assert_eq!(status, StatusCode::OK);
            assert_eq!(version, expected(key, percent), "key {key} at {percent} %");
            to_canary += usize::from(version == "2.0");
        }
        let share = to_canary as f64 * 100.0 / n as f64;
        assert!((share - percent).abs() <= 2.0, "{percent} %: {share} % of {n} requests");
        // Sticky: the same keys land on the same versions again.
        for key in keys.iter().take(100) {
            assert_eq!(ask(&server, key).await.1, expected(key, percent));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_without_a_key_reach_both_versions_and_versions_in_the_path_bypass_the_split() {
    let (server, _) = two_versions(test_config(1 << 20)).await;
    assert_eq!(server.manage(Method::PUT, "/models/m/2.0/canary?percent=50").await.status, StatusCode::OK);
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..200 {
        let reply = server.predict("m", body()).await;
        assert_eq!(reply.status, StatusCode::OK);
        seen.insert(version_of(&reply));
    }
    assert_eq!(seen.into_iter().collect::<Vec<_>>(), ["1.0", "2.0"], "random draws reach both");
    assert_eq!(server.manage(Method::PUT, "/models/m/2.0/canary?percent=100").await.status, StatusCode::OK);
    let v2 = serde_json::json!({ "inputs": [{ "name": "landmarks", "datatype": "FP32", "shape": [1, 2, 3, 3],
        "data": serde_json::from_str::<serde_json::Value>(&body()).expect("JSON")["landmarks"] }] })
    .to_string();
    for _ in 0..20 {
        let pinned = server.send(Method::POST, "/predictions/m/1.0", body()).await;
        assert_eq!((pinned.status, version_of(&pinned).as_str()), (StatusCode::OK, "1.0"));
        assert_eq!(version_of(&server.predict("m", body()).await), "2.0", "100 %: all to the canary");
        let pinned = server.send(Method::POST, "/v2/models/m/versions/1.0/infer", v2.clone()).await;
        assert_eq!((pinned.status, pinned.json["model_version"].as_str()), (StatusCode::OK, Some("1.0")));
        let split = server.send(Method::POST, "/v2/models/m/infer", v2.clone()).await;
        assert_eq!((split.json["model_version"].as_str(), version_of(&split).as_str()), (Some("2.0"), "2.0"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_that_cannot_serve_gets_no_request() {
    let (server, _) = two_versions(test_config(1 << 20)).await;
    // Still loading: a version not in the registry yet cannot be made the canary.
    let loading = server.manage(Method::PUT, "/models/m/3.0/canary?percent=50").await;
    assert_eq!(loading.status, StatusCode::NOT_FOUND, "{}", loading.text);
    assert_eq!(loading.json["type"], "ModelVersionNotFoundException");
    assert_eq!(server.manage(Method::PUT, "/models/m/2.0/canary?percent=100").await.status, StatusCode::OK);
    let scaled = server.manage(Method::PUT, "/models/m/2.0?min_worker=0&synchronous=true").await;
    assert_eq!(scaled.status, StatusCode::OK, "{}", scaled.text);
    for key in keys(3, 100) {
        assert_eq!(ask(&server, &key).await, (StatusCode::OK, "1.0".to_string()), "no worker, no traffic");
    }
    let scaled = server.manage(Method::PUT, "/models/m/2.0?min_worker=1&synchronous=true").await;
    assert_eq!(scaled.status, StatusCode::OK, "{}", scaled.text);
    assert_eq!(ask(&server, "back").await.1, "2.0", "live again: the split holds");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_canary_calls_are_refused_and_change_nothing() {
    let (server, _) = two_versions(test_config(1 << 20)).await;
    for (path, status, words) in [
        ("/models/m/2.0/canary", StatusCode::BAD_REQUEST, "percent is required"),
        ("/models/m/2.0/canary?percent=0", StatusCode::BAD_REQUEST, "percent"),
        ("/models/m/2.0/canary?percent=ten", StatusCode::BAD_REQUEST, "percent"),
        ("/models/m/2.0/canary?percent=101", StatusCode::BAD_REQUEST, "percent"),
        ("/models/m/1.0/canary?percent=10", StatusCode::BAD_REQUEST, "default version"),
        ("/models/m/2.0/canary?percent=10&threshold=0", StatusCode::BAD_REQUEST, "Parameter threshold"),
        ("/models/m/2.0/canary?percent=10&interval=soon", StatusCode::BAD_REQUEST, "Parameter interval"),
        ("/models/nope/2.0/canary?percent=10", StatusCode::NOT_FOUND, "nope"),
        ("/models/m/1.0/promote", StatusCode::BAD_REQUEST, "not the canary"),
    ] {
        let reply = server.manage(Method::PUT, path).await;
        assert_eq!(reply.status, status, "{path}: {}", reply.text);
        assert!(reply.json["message"].as_str().is_some_and(|m| m.contains(words)), "{path}: {}", reply.text);
        assert_eq!(reply.json["code"], status.as_u16(), "TorchServe's error body");
        assert_eq!(server.state.registry.canary("m"), None, "{path} changed nothing");
    }
    let clear = server.manage(Method::DELETE, "/models/m/2.0/canary").await;
    assert_eq!(clear.status, StatusCode::BAD_REQUEST, "{}", clear.text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clearing_promoting_and_describing_by_hand() {
    let (server, _) = two_versions(test_config(1 << 20)).await;
    assert_eq!(server.manage(Method::PUT, "/models/m/2.0/canary?percent=30").await.status, StatusCode::OK);
    let described = server.manage(Method::GET, "/models/m/all").await;
    for version in described.json.as_array().expect("versions") {
        let canary = &version["canary"];
        assert_eq!((canary["version"].as_str(), canary["percent"].as_f64()), (Some("2.0"), Some(30.0)));
        assert_eq!((canary["phase"].as_str(), canary["analysis"].is_null()), (Some("Manual"), true));
    }
    let cleared = server.manage(Method::DELETE, "/models/m/2.0/canary").await;
    assert_eq!(cleared.status, StatusCode::OK, "{}", cleared.text);
    for key in keys(5, 50) {
        assert_eq!(ask(&server, &key).await.1, "1.0");
    }
    let described = server.manage(Method::GET, "/models/m").await;
    assert_eq!(described.json[0]["canary"]["phase"], "Cleared");
    assert_eq!(described.json[0]["canary"]["percent"], 0.0);
    assert_eq!(server.manage(Method::PUT, "/models/m/2.0/canary?percent=30").await.status, StatusCode::OK);
    let promoted = server.manage(Method::PUT, "/models/m/2.0/promote").await;
    assert_eq!(promoted.status, StatusCode::OK, "{}", promoted.text);
    assert_eq!(version_of(&server.predict("m", body()).await), "2.0");
    let described = server.manage(Method::GET, "/models/m").await;
    assert_eq!(
        (described.json[0]["modelVersion"].as_str(), described.json[0]["canary"]["phase"].as_str()),
        (Some("2.0"), Some("Succeeded"))
    );
}

/// Sends `keys` and counts the answers by version; every answer from the default version must be a 200.
async fn round(server: &TestServer, keys: &[String], percent: f64) -> (usize, usize) {
    let (mut default, mut canary) = (0, 0);
    for key in keys {
        let (status, version) = ask(server, key).await;
        assert_eq!(version, expected(key, percent));
        if version == "1.0" {
            assert_eq!(status, StatusCode::OK, "the default version never fails");
            default += 1;
        } else {
            canary += 1;
        }
    }
    (default, canary)
}

fn canary_status(server: &TestServer) -> serde_json::Value {
    let status = server.state.rollouts.status(&server.state.registry, "m").expect("a rollout");
    serde_json::to_value(status).expect("JSON")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_canary_is_rolled_back_after_threshold_checks() {
    let (server, canary_fake) = two_versions(test_config(1 << 20)).await;
    for _ in 0..10_000 {
        canary_fake.script.push(FakeStep::Fail("canary bug".into()));
    }
    // An interval of an hour: the loop never checks on its own; the test checks after each round of requests.
    let path = "/models/m/2.0/canary?percent=20&interval=1h&threshold=2&min_requests=5";
    assert_eq!(server.manage(Method::PUT, path).await.status, StatusCode::OK);
    let keys = keys(11, 200);
    for check in 1..=2 {
        let (_, to_canary) = round(&server, &keys, 20.0).await;
        assert!(to_canary >= 5, "the canary got {to_canary} requests");
        server.state.rollouts.check_now(server.state.scope());
        let status = canary_status(&server);
        assert_eq!(status["failedChecks"], check);
        let phase = if check < 2 { "Progressing" } else { "Failed" };
        assert_eq!(status["phase"], phase, "{status}");
    }
    let (default, canary) = round(&server, &keys, 0.0).await;
    assert_eq!((default, canary), (200, 0), "rolled back: every request to the default version, all answered");
    let described = server.manage(Method::GET, "/models/m").await;
    let events = described.json[0]["canary"]["events"].as_array().expect("events").clone();
    let kinds: Vec<_> = events.iter().map(|e| e["event"].as_str().unwrap_or_default()).collect();
    assert_eq!(kinds, ["started", "failed_check", "rolled_back"]);
    assert!(events[2]["message"].as_str().is_some_and(|m| m.contains("5xx")), "{events:?}");
    let text = server.scrape().await;
    let labels = [("model_name", "m"), ("model_version", "2.0")];
    assert_eq!(metric(&text, "ferroserve_canary_weight_percent", &labels), Some(0.0));
    assert_eq!(metric(&text, "ferroserve_canary_failed_checks", &labels), Some(2.0));
    let rolled_back = [("event", "rolled_back"), ("model_name", "m"), ("model_version", "2.0")];
    assert_eq!(metric(&text, "ferroserve_canary_events_total", &rolled_back), Some(1.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_good_canary_is_promoted_after_max_weight_over_step_weight_checks() {
    let (server, _) = two_versions(test_config(1 << 20)).await;
    let path = "/models/m/2.0/canary?percent=25&interval=1h&step_weight=25&max_weight=50&min_requests=5";
    assert_eq!(server.manage(Method::PUT, path).await.status, StatusCode::OK);
    let keys = keys(13, 120);
    round(&server, &keys, 25.0).await;
    server.state.rollouts.check_now(server.state.scope());
    assert_eq!(
        (canary_status(&server)["phase"].as_str(), canary_status(&server)["percent"].as_f64()),
        (Some("Progressing"), Some(50.0))
    );
    round(&server, &keys, 50.0).await;
    server.state.rollouts.check_now(server.state.scope());
    assert_eq!(canary_status(&server)["phase"], "Succeeded", "promoted after 50 / 25 checks");
    for key in keys.iter().take(20) {
        assert_eq!(ask(&server, key).await.1, "2.0", "the canary is the default version now");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_version_metrics_agree_with_the_answers() {
    let (server, _) = two_versions(test_config(1 << 20)).await;
    assert_eq!(server.manage(Method::PUT, "/models/m/2.0/canary?percent=10").await.status, StatusCode::OK);
    let (default, canary) = round(&server, &keys(17, 400), 10.0).await;
    assert!(canary > 0 && default > 0);
    let text = server.scrape().await;
    for (version, answered) in [("1.0", default), ("2.0", canary)] {
        let labels = [("model_name", "m"), ("model_version", version)];
        let count = metric(&text, "ferroserve_request_latency_seconds_count", &labels);
        assert_eq!(count, Some(answered as f64), "{version}");
        let ok = [("model_name", "m"), ("model_version", version), ("class", "2xx")];
        assert_eq!(metric(&text, "ferroserve_model_responses_total", &ok), Some(answered as f64), "{version}");
        let accepted = metric(&text, "ferroserve_requests_accepted_total", &labels);
        assert_eq!(accepted, Some(answered as f64), "{version}");
    }
    let ts = [("model_name", "m"), ("model_version", "default")];
    assert_eq!(metric(&text, "ts_inference_requests_total", &ts), Some(400.0), "TorchServe's names say default");
    let weight = [("model_name", "m"), ("model_version", "2.0")];
    assert_eq!(metric(&text, "ferroserve_canary_weight_percent", &weight), Some(10.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_stated_in_the_configuration_starts_with_the_server() {
    let mut config = test_config(1 << 20);
    let models = r#"{"m": {"2.0": {"canaryPercent": 50, "canaryAnalysis": {"interval": "1h", "threshold": 3}}}}"#;
    config.apply(vec![("models".into(), models.into(), None)]).expect("valid models");
    let (server, _) = two_versions(config).await;
    let described = server.manage(Method::GET, "/models/m").await;
    let canary = &described.json[0]["canary"];
    assert_eq!((canary["percent"].as_f64(), canary["phase"].as_str()), (Some(50.0), Some("Progressing")));
    assert_eq!(
        (canary["analysis"]["interval"].as_str(), canary["analysis"]["threshold"].as_u64()),
        (Some("1h"), Some(3))
    );
    round(&server, &keys(19, 100), 50.0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unregistering_the_canary_ends_the_split() {
    let (server, _) = two_versions(test_config(1 << 20)).await;
    assert_eq!(server.manage(Method::PUT, "/models/m/2.0/canary?percent=50").await.status, StatusCode::OK);
    let removed = server.manage(Method::DELETE, "/models/m/2.0").await;
    assert_eq!(removed.status, StatusCode::OK, "{}", removed.text);
    for key in keys(23, 40) {
        assert_eq!(ask(&server, &key).await, (StatusCode::OK, "1.0".to_string()));
    }
    let described = server.manage(Method::GET, "/models/m").await;
    assert_eq!(described.json[0]["canary"]["phase"], "Cleared", "{}", described.text);
    let last = described.json[0]["canary"]["events"].as_array().and_then(|e| e.last().cloned()).expect("events");
    assert!(last["message"].as_str().is_some_and(|m| m.contains("unregistered")), "{last}");
}
