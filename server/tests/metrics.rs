//! The metrics API over real HTTP: counters and histogram counts match the requests sent, rejections and drops
//! are counted by cause, the buckets hold the SLO thresholds, TorchServe's names can be turned off, and the
//! exposition passes `promtool check metrics` (when promtool is installed; `make test` installs it).

mod support;

use std::{sync::Arc, time::Duration};

use ferroserve_engine::backend::FakeMode;
use hyper::{Method, StatusCode};
use support::{add_fake_metered, landmark_body, metered_server, metric, options, promtool, test_config};

const MB: usize = 1 << 20;

fn labels(model: &str) -> [(&str, &str); 2] {
    [("model_name", model), ("model_version", "1.0")]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counts_and_histograms_match_the_requests_sent() {
    let server = Arc::new(metered_server(test_config(MB)).await);
    let engine = &server.state.metrics.engine;
    add_fake_metered(
        &server.state.registry,
        engine,
        FakeMode::Echo,
        options("m", 2, 100, 4, Duration::from_micros(300)),
    );
    let mut tasks = Vec::new();
    for _ in 0..37 {
        let server = Arc::clone(&server);
        tasks.push(tokio::spawn(async move { server.predict("m", landmark_body(&[0.5; 18])).await.status }));
    }
    for task in tasks {
        assert_eq!(task.await.expect("task"), StatusCode::OK);
    }
    for bad in ["", "{}", "[1]"] {
        assert_eq!(server.predict("m", bad).await.status, StatusCode::BAD_REQUEST);
    }
    let text = server.scrape().await;
    let m = labels("m");
    assert_eq!(metric(&text, "ferroserve_inference_count_total", &m), Some(37.0));
    assert_eq!(metric(&text, "ferroserve_queue_latency_seconds_count", &m), Some(37.0));
    assert_eq!(metric(&text, "ferroserve_batch_size_sum", &m), Some(37.0));
    let batches = metric(&text, "ferroserve_execution_count_total", &m).expect("executions");
    assert_eq!(metric(&text, "ferroserve_batch_size_count", &m), Some(batches));
    assert_eq!(metric(&text, "ferroserve_inference_latency_seconds_count", &m), Some(batches));
    assert!((10.0..=37.0).contains(&batches), "batches of at most 4: {batches}");
    assert_eq!(metric(&text, "ferroserve_request_latency_seconds_count", &m), Some(40.0), "bad requests count too");
    // TorchServe's names label a request whose URL names no version "default", as TorchServe does.
    let ts = [("model_name", "m"), ("model_version", "default")];
    assert_eq!(metric(&text, "ts_inference_requests_total", &ts), Some(40.0));
    assert_eq!(metric(&text, "ts_inference_requests_total", &m), None);
    assert!(metric(&text, "ts_inference_latency_microseconds", &ts).expect("ts latency") > 0.0);
    assert!(metric(&text, "ts_queue_latency_microseconds", &ts).is_some());
    assert_eq!(metric(&text, "Requests2XX", &[]), Some(37.0));
    assert_eq!(metric(&text, "Requests4XX", &[]), Some(3.0));
    assert_eq!(metric(&text, "ferroserve_http_responses_total", &[("api", "inference"), ("class", "2xx")]), Some(37.0));
    assert_eq!(metric(&text, "ferroserve_queue_depth", &m), Some(0.0));
    for le in ["0.00005", "0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "10"] {
        let bucket = [("model_name", "m"), ("le", le)];
        assert!(metric(&text, "ferroserve_queue_latency_seconds_bucket", &bucket).is_some(), "bucket {le}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejections_and_drops_are_counted_by_cause() {
    let server = Arc::new(metered_server(test_config(MB)).await);
    let engine = &server.state.metrics.engine;
    let fake =
        add_fake_metered(&server.state.registry, engine, FakeMode::Echo, options("busy", 1, 1, 1, Duration::ZERO));
    fake.gate.close();
    let first = tokio::spawn({
        let server = Arc::clone(&server);
        async move { server.predict("busy", landmark_body(&[0.5; 18])).await.status }
    });
    let gate = fake.gate.clone();
    tokio::task::spawn_blocking(move || gate.wait_arrived(1)).await.expect("worker busy");
    let model = server.state.registry.get("busy", None).expect("model");
    let queued = tokio::spawn({
        let server = Arc::clone(&server);
        async move { server.predict("busy", landmark_body(&[0.5; 18])).await.status }
    });
    while model.queue_len() < 1 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert_eq!(server.predict("busy", landmark_body(&[0.5; 18])).await.status, StatusCode::SERVICE_UNAVAILABLE);
    let text = server.scrape().await;
    let full = [("model_name", "busy"), ("reason", "queue_full")];
    assert_eq!(metric(&text, "ferroserve_requests_rejected_total", &full), Some(1.0));
    assert_eq!(metric(&text, "ferroserve_queue_depth", &labels("busy")), Some(1.0));
    fake.gate.open();
    assert_eq!(first.await.expect("first"), StatusCode::OK);
    assert_eq!(queued.await.expect("queued"), StatusCode::OK);
    let text = server.scrape().await;
    assert_eq!(metric(&text, "Requests5XX", &[]), Some(1.0));
    let gone = [("model_name", "busy"), ("reason", "client_gone")];
    assert_eq!(metric(&text, "ferroserve_requests_dropped_total", &gone), Some(0.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_name_filter_and_wrong_paths() {
    let server = metered_server(test_config(MB)).await;
    let filtered =
        server.send_to(server.metrics, Method::GET, "/metrics?name[]=Requests2XX&name[]=Requests4XX", "").await;
    assert_eq!(filtered.status, StatusCode::OK);
    let families: Vec<_> = filtered.text.lines().filter(|l| l.starts_with("# TYPE")).collect();
    assert_eq!(families.len(), 2, "{}", filtered.text);
    assert_eq!(
        server.send_to(server.metrics, Method::POST, "/metrics", "").await.status,
        StatusCode::METHOD_NOT_ALLOWED
    );
    assert_eq!(server.send_to(server.metrics, Method::GET, "/other", "").await.status, StatusCode::NOT_FOUND);
}

async fn busy_exposition(ts_metric_names: bool) -> String {
    let server = Arc::new(metered_server(ferroserve::Config { ts_metric_names, ..test_config(MB) }).await);
    let engine = &server.state.metrics.engine;
    add_fake_metered(&server.state.registry, engine, FakeMode::Echo, options("m", 1, 10, 2, Duration::ZERO));
    for _ in 0..5 {
        assert_eq!(server.predict("m", landmark_body(&[0.5; 18])).await.status, StatusCode::OK);
    }
    server.scrape().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promtool_accepts_the_exposition() {
    let native = busy_exposition(false).await;
    assert!(metric(&native, "ts_inference_requests_total", &[]).is_none(), "TorchServe's names are off");
    assert!(metric(&native, "Requests2XX", &[]).is_none());
    let Some((code, said)) = promtool(&native) else {
        eprintln!("promtool is not installed: `make test` installs it; skipping the promtool check");
        return;
    };
    assert_eq!(code, 0, "promtool: {said}");
    // With TorchServe's names on, promtool's linter objects to those names only (their unit and suffix are
    // TorchServe's choice, kept for its dashboards); the exposition itself parses.
    let (code, said) = promtool(&busy_exposition(true).await).expect("promtool");
    assert_eq!(code, 3, "lint findings only: {said}");
    for line in said.lines().filter(|l| !l.trim().is_empty()) {
        let name = line.split_whitespace().next().unwrap_or_default();
        assert!(
            [
                "ts_inference_latency_microseconds",
                "ts_queue_latency_microseconds",
                "Requests2XX",
                "Requests4XX",
                "Requests5XX"
            ]
            .contains(&name),
            "promtool: {line}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn torchserves_names_label_the_version_the_url_named_and_count_refused_bodies() {
    let server = metered_server(test_config(MB)).await;
    let engine = &server.state.metrics.engine;
    add_fake_metered(&server.state.registry, engine, FakeMode::Echo, options("m", 1, 100, 1, Duration::ZERO));
    let good = landmark_body(&[0.5; 18]);
    for path in ["/predictions/m", "/predictions/m/1.0", "/predictions/m/1.0"] {
        assert_eq!(server.send(Method::POST, path, good.clone()).await.status, StatusCode::OK, "{path}");
    }
    // Requests that reached the model and were refused for their body count too, in both protocols.
    for path in ["/predictions/m", "/v2/models/m/infer", "/v2/models/m/versions/1.0/infer"] {
        assert_eq!(server.send(Method::POST, path, "{").await.status, StatusCode::BAD_REQUEST, "{path}");
    }
    // An unknown model is counted by nobody.
    assert_eq!(server.send(Method::POST, "/predictions/nope", good).await.status, StatusCode::NOT_FOUND);
    let text = server.scrape().await;
    let at = |version| [("model_name", "m"), ("model_version", version)];
    assert_eq!(metric(&text, "ts_inference_requests_total", &at("default")), Some(3.0), "{text}");
    assert_eq!(metric(&text, "ts_inference_requests_total", &at("1.0")), Some(3.0), "{text}");
    assert!(metric(&text, "ts_queue_latency_microseconds", &at("1.0")).is_some());
    assert_eq!(metric(&text, "ts_inference_requests_total", &[("model_name", "nope")]), None);
    // ferroserve's own families carry the model's real version whatever the URL said.
    assert_eq!(metric(&text, "ferroserve_request_latency_seconds_count", &at("1.0")), Some(6.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_model_counts_its_responses_by_class_from_its_first_scrape_until_it_leaves() {
    let server = metered_server(test_config(MB)).await;
    let engine = &server.state.metrics.engine;
    add_fake_metered(&server.state.registry, engine, FakeMode::Echo, options("m", 1, 100, 1, Duration::ZERO));
    let class = |c| [("model_name", "m"), ("model_version", "1.0"), ("class", c)];
    let text = server.scrape().await;
    for c in ["2xx", "4xx", "5xx"] {
        assert_eq!(metric(&text, "ferroserve_model_responses_total", &class(c)), Some(0.0), "{c} at 0 before any");
    }
    assert_eq!(server.predict("m", landmark_body(&[0.5; 18])).await.status, StatusCode::OK);
    assert_eq!(server.predict("m", "{").await.status, StatusCode::BAD_REQUEST);
    assert_eq!(server.predict("m", "[]").await.status, StatusCode::BAD_REQUEST);
    let text = server.scrape().await;
    assert_eq!(metric(&text, "ferroserve_model_responses_total", &class("2xx")), Some(1.0));
    assert_eq!(metric(&text, "ferroserve_model_responses_total", &class("4xx")), Some(2.0));
    assert_eq!(metric(&text, "ferroserve_model_responses_total", &class("5xx")), Some(0.0));
    assert_eq!(server.manage(Method::DELETE, "/models/m").await.status, StatusCode::OK);
    let text = server.scrape().await;
    assert_eq!(metric(&text, "ferroserve_model_responses_total", &class("2xx")), None, "no flat series left");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_latency_objective_gets_a_bucket_at_its_threshold() {
    let mut config = test_config(MB);
    let objective = r#"{"m": {"1.0": {"slo": {"latency": {"objective": 99, "thresholdMs": 30}}}}}"#;
    config.apply(vec![("models".into(), objective.into(), None)]).expect("valid models");
    assert!(!config.latency_buckets.contains(&0.03), "not among the default buckets");
    let server = metered_server(config).await;
    let engine = &server.state.metrics.engine;
    add_fake_metered(&server.state.registry, engine, FakeMode::Echo, options("m", 1, 100, 1, Duration::ZERO));
    assert_eq!(server.predict("m", landmark_body(&[0.5; 18])).await.status, StatusCode::OK);
    let text = server.scrape().await;
    for family in ["ferroserve_request_latency_seconds_bucket", "ferroserve_queue_latency_seconds_bucket"] {
        assert_eq!(metric(&text, family, &[("model_name", "m"), ("le", "0.03")]), Some(1.0), "{family}");
    }
}
