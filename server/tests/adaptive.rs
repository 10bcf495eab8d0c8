//! Batching for a latency objective over real HTTP: `"maxBatchDelay": "auto"` with `"sloP99Ms"` in `models`
//! loads, serves and is described (with the fitted batch cost, also exported as metrics); the management API
//! registers and re-batches models for an objective, and refuses what makes no sense; a fake model whose queue
//! cannot meet its objective sheds with 503 and `Retry-After`, counted by cause.

mod support;

use std::{sync::Arc, time::Duration};

use ferroserve_engine::{
    backend::{FakeMode, FakeStep},
    cost::MIN_SAMPLES,
    Registry,
};
use hyper::{Method, StatusCode};
use support::{add_fake_metered, landmark_body, metric, models_dir, options, test_config, TestServer};

const MB: usize = 1 << 20;

/// The bundled signnet model loaded at start-up with `"maxBatchDelay": "auto"` and a 50 ms objective.
async fn auto_signnet() -> TestServer {
    let models = r#"{"signnet": {"1.0": {"batchSize": 8, "maxBatchDelay": "auto", "sloP99Ms": 50}}}"#;
    support::signnet_server_with(&[("default_workers_per_model", "1"), ("intra_op_threads", "1"), ("models", models)])
        .await
}

fn example() -> Vec<u8> {
    std::fs::read(models_dir().join("signnet/example.json")).expect("example.json")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_auto_model_from_the_configuration_serves_and_describes_its_cost() {
    let server = auto_signnet().await;
    let d = &server.manage(Method::GET, "/models/signnet").await.json[0];
    assert_eq!(
        (d["maxBatchDelay"].as_str(), d["sloP99Ms"].as_u64(), d["batchSize"].as_u64()),
        (Some("auto"), Some(50), Some(8))
    );
    assert_eq!(d["batchCost"], serde_json::json!([]), "no batch has run yet: {d}");

    for _ in 0..MIN_SAMPLES {
        let answer = server.predict("signnet", example()).await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.text);
        assert_eq!(answer.json["predictions"][0]["label"], "hello");
    }
    let d = &server.manage(Method::GET, "/models/signnet").await.json[0];
    let cost = &d["batchCost"][0];
    assert_eq!((cost["device"].as_str(), cost["samples"].as_u64()), (Some("cpu"), Some(MIN_SAMPLES as u64)), "{d}");
    let per_request = cost["perRequestMs"].as_f64().expect("a number");
    let fixed = cost["fixedMs"].as_f64().expect("a number");
    assert!(per_request + fixed > 0.0, "{d}");
    assert!(d["arrivalsPerSecond"].as_f64().expect("a number") > 0.0);

    let text = server.scrape().await;
    let labels = [("model_name", "signnet"), ("device", "cpu")];
    for name in [
        "ferroserve_batch_cost_fixed_seconds",
        "ferroserve_batch_cost_per_request_seconds",
        "ferroserve_batch_cost_spread_seconds",
        "ferroserve_arrival_rate_per_second",
    ] {
        assert!(metric(&text, name, &labels).is_some(), "{name} missing");
    }
    assert_eq!(metric(&text, "ferroserve_batch_cost_samples", &labels), Some(MIN_SAMPLES as f64));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_management_api_registers_and_rebatches_for_an_objective() {
    let server = TestServer::start(Arc::new(Registry::new()), MB).await;
    let url = "/models?url=signnet&model_name=sign&batch_size=4&max_batch_delay=auto&slo_p99_ms=30&synchronous=true";
    let created = server.manage(Method::POST, url).await;
    assert_eq!(created.status, StatusCode::OK, "{}", created.text);
    let d = &server.manage(Method::GET, "/models/sign").await.json[0];
    assert_eq!((d["maxBatchDelay"].as_str(), d["sloP99Ms"].as_u64()), (Some("auto"), Some(30)), "{d}");
    assert_eq!(server.predict("sign", example()).await.json["predictions"][0]["label"], "hello");

    // A fixed delay ends the objective; auto with a new objective brings it back.
    let fixed = server.manage(Method::PUT, "/models/sign?max_batch_delay=2").await;
    assert_eq!(fixed.status, StatusCode::OK, "{}", fixed.text);
    let d = &server.manage(Method::GET, "/models/sign").await.json[0];
    assert_eq!((d["maxBatchDelay"].as_u64(), d.get("sloP99Ms")), (Some(2), None), "{d}");
    let auto = server.manage(Method::PUT, "/models/sign?max_batch_delay=auto&slo_p99_ms=12.5").await;
    assert_eq!(auto.status, StatusCode::OK, "{}", auto.text);
    assert!(auto.text.contains("auto for a p99 of 12.5 ms"), "{}", auto.text);
    let d = &server.manage(Method::GET, "/models/sign").await.json[0];
    assert_eq!((d["maxBatchDelay"].as_str(), d["sloP99Ms"].as_f64()), (Some("auto"), Some(12.5)), "{d}");
    // The objective alone changes while the model batches for one.
    assert_eq!(server.manage(Method::PUT, "/models/sign?slo_p99_ms=20").await.status, StatusCode::OK);
    assert_eq!(server.manage(Method::GET, "/models/sign").await.json[0]["sloP99Ms"], 20);

    for (bad, why) in [
        ("/models/sign?max_batch_delay=soon", "neither milliseconds nor"),
        ("/models/sign?max_batch_delay=auto&slo_p99_ms=0", "slo_p99_ms"),
        ("/models/sign?max_batch_delay=auto&slo_p99_ms=x", "slo_p99_ms"),
        ("/models?url=signnet&model_name=other&max_batch_delay=auto&synchronous=true", "needs an objective"),
    ] {
        let method = if bad.starts_with("/models?") { Method::POST } else { Method::PUT };
        let reply = server.manage(method, bad).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{bad}: {}", reply.text);
        assert!(reply.text.contains(why), "{bad}: {}", reply.text);
    }
    // A fixed model takes no objective without auto.
    assert_eq!(server.manage(Method::PUT, "/models/sign?max_batch_delay=1").await.status, StatusCode::OK);
    let lone = server.manage(Method::PUT, "/models/sign?slo_p99_ms=20").await;
    assert_eq!(lone.status, StatusCode::BAD_REQUEST, "{}", lone.text);
    assert!(lone.text.contains("max_batch_delay=auto"), "{}", lone.text);
    assert_eq!(server.manage(Method::GET, "/models/sign").await.json[0]["maxBatchDelay"], 1, "a 400 changes nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_past_the_objective_sheds_with_503_and_retry_after() {
    let server = support::metered_server(test_config(MB)).await;
    let registry = &server.state.registry;
    let fake = add_fake_metered(
        registry,
        &server.state.metrics.engine,
        FakeMode::Echo,
        options("slow", 1, 100, 1, Duration::ZERO),
    );
    for _ in 0..MIN_SAMPLES {
        fake.script.push(FakeStep::Sleep(Duration::from_millis(2)));
    }
    let put = server.manage(Method::PUT, "/models/slow?max_batch_delay=auto&slo_p99_ms=100").await;
    assert_eq!(put.status, StatusCode::OK, "{}", put.text);
    for _ in 0..MIN_SAMPLES {
        assert_eq!(server.predict("slow", landmark_body(&[0.5; 18])).await.status, StatusCode::OK);
    }

    // The worker held at the gate; requests queue until one would be answered past 100 ms (at least 2 ms a batch
    // of one; far more than 2 ms on a loaded machine only sheds sooner).
    fake.gate.close();
    let server = Arc::new(server);
    let mut pending = Vec::new();
    let shed = loop {
        assert!(pending.len() < 60, "60 requests of 2 ms each queued for a 100 ms objective, and none was shed");
        let client = Arc::clone(&server);
        pending.push(tokio::spawn(async move { client.predict("slow", landmark_body(&[0.5; 18])).await }));
        // Each request is queued (or refused) before the next is sent.
        let model = server.state.registry.get("slow", None).expect("the model");
        let sent = pending.len();
        let settled = tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                let stats = model.stats();
                let refused = stats.shed_slo + stats.shed_deadline;
                if stats.accepted + refused >= (MIN_SAMPLES + sent) as u64 {
                    return refused;
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        });
        if settled.await.expect("the request reached the model") > 0 {
            break pending.pop().expect("the last one").await.expect("the task");
        }
    };
    assert_eq!(shed.status, StatusCode::SERVICE_UNAVAILABLE, "{}", shed.text);
    assert_eq!(shed.headers.get("retry-after").map(|v| v.to_str().ok()), Some(Some("1")));
    assert!(shed.text.contains("past its latency objective of 100 ms"), "{}", shed.text);

    fake.gate.open();
    for task in pending {
        assert_eq!(task.await.expect("the task").status, StatusCode::OK, "every accepted request is answered");
    }
    let text = server.scrape().await;
    let slo = [("model_name", "slow"), ("reason", "slo")];
    assert_eq!(metric(&text, "ferroserve_requests_rejected_total", &slo), Some(1.0));
}
