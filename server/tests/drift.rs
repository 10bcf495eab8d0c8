//! Drift detection end to end: the metrics appear in `/metrics`, pass promtool and move as traffic shifts (a
//! scripted fake model); the describe API shows the last window's verdict; on the bundled signnet model half a
//! standard deviation of shift in one feature is flagged in the first window of 1,000 requests, over HTTP with
//! the reference taken from the first requests, while at most 1 % of 100 windows of unshifted traffic are; and
//! `ferroserve drift-profile` writes a profile the server reads.

mod support;

use std::{io::Write, sync::Arc, time::Duration};

use ferroserve::{
    config::ModelConfig,
    drift::{
        features::FeatureSet,
        profile::Profile,
        window::{compare, Settings, Window},
        Observation,
    },
    Config,
};
use ferroserve_engine::{backend::FakeMode, metrics::EngineMetrics, Model};
use hyper::{Method, StatusCode};
use support::{
    add_fake_metered, landmark_body, metered_server, metric,
    signs::{self, Framing, Rng},
    test_config, TestServer,
};

const MB: usize = 1 << 20;
const SHAPE: [usize; 3] = [signs::FRAMES, 21, 3];

fn drift_config(reference: usize, window: usize) -> Config {
    let mut config = Config { ts_metric_names: false, ..test_config(MB) };
    config.drift.reference_size = reference;
    config.drift.window_size = window;
    config.drift.min_window_size = window;
    config
}

/// Scrapes until `ready` holds for the exposition (the monitor works on its own thread), at most 30 s.
async fn scrape_until(server: &TestServer, what: &str, ready: impl Fn(&str) -> bool) -> String {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let text = server.scrape().await;
        if ready(&text) {
            return text;
        }
        assert!(tokio::time::Instant::now() < deadline, "no {what} within 30 s:\n{text}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn model_labels(model: &str) -> [(&str, &str); 2] {
    [("model_name", model), ("model_version", "1.0")]
}

/// 18 values for the fake model (it echoes the first 10 as its scores): request `i` of a smooth spread, moved by
/// `shift`; its top class is `i % 10`.
fn fake_values(i: usize, shift: f32) -> Vec<f32> {
    (0..18).map(|j| shift + 0.01 * ((j + 19 - i % 10) % 10) as f32 + 0.001 * (i % 7) as f32).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metrics_move_as_the_traffic_shifts_and_pass_promtool() {
    let server = Arc::new(metered_server(drift_config(20, 20)).await);
    let engine = &server.state.metrics.engine;
    add_fake_metered(&server.state.registry, engine, FakeMode::Echo, support::options("m", 1, 10, 1, Duration::ZERO));
    let send = |values: Vec<f32>| {
        let server = Arc::clone(&server);
        async move { assert_eq!(server.predict("m", landmark_body(&values)).await.status, StatusCode::OK) }
    };
    for i in 0..20 {
        send(fake_values(i, 0.0)).await;
    }
    let labels = model_labels("m");
    scrape_until(&server, "reference", |t| metric(t, "ferroserve_drift_reference_samples", &labels) == Some(20.0))
        .await;
    for i in 0..20 {
        send(fake_values(i, 1.0)).await;
    }
    let text =
        scrape_until(&server, "window", |t| metric(t, "ferroserve_drift_window_samples", &labels) == Some(20.0)).await;
    assert_eq!(metric(&text, "ferroserve_drift_detected", &labels), Some(1.0), "{text}");
    let score = |text: &str, feature: &str, method: &str| {
        let labels = [labels[0], labels[1], ("feature", feature), ("method", method)];
        metric(text, "ferroserve_drift_score", &labels).unwrap_or_else(|| panic!("{feature} {method}:\n{text}"))
    };
    assert!(score(&text, "channel0_mean", "psi") > 0.25, "{text}");
    assert!(score(&text, "channel0_mean", "ks") == 1.0 && score(&text, "channel0_mean", "ks_pvalue") < 1e-6);
    assert!(score(&text, "predicted_class", "chi2_pvalue") > 0.5, "the classes did not move:\n{text}");
    assert_eq!(metric(&text, "ferroserve_predictions_total", &[labels[0], ("class", "c3")]), Some(4.0));
    let windows = |text: &str, detected| {
        metric(text, "ferroserve_drift_windows_total", &[labels[0], ("detected", detected)]).unwrap_or(0.0)
    };
    assert_eq!(windows(&text, "true"), 1.0);
    if let Some((status, said)) = support::promtool(&text) {
        assert_eq!(status, 0, "promtool check metrics: {said}");
    }

    let described = server.manage(Method::GET, "/models/m").await;
    let drift = &described.json[0]["drift"];
    assert_eq!((drift["reference"].as_str(), drift["referenceSamples"].as_u64()), (Some("first requests"), Some(20)));
    assert_eq!(drift["lastWindow"]["detected"], true, "{drift}");
    let first = &drift["lastWindow"]["features"][0];
    assert_eq!((first["feature"].as_str(), first["drifted"].as_bool()), (Some("channel0_mean"), Some(true)));

    // Back to the reference: the next window is not flagged.
    for i in 0..20 {
        send(fake_values(i, 0.0)).await;
    }
    let text = scrape_until(&server, "second window", |t| windows(t, "false") == 1.0).await;
    assert_eq!(metric(&text, "ferroserve_drift_detected", &labels), Some(0.0), "{text}");

    // Unregistered: its drift series go.
    assert_eq!(server.manage(Method::DELETE, "/models/m").await.status, StatusCode::OK);
    scrape_until(&server, "forgotten series", |t| !t.contains("ferroserve_drift_detected{")).await;
    let text = server.scrape().await;
    assert!(!text.contains("ferroserve_drift_score{") && !text.contains("ferroserve_predictions_total{"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_row_of_a_kserve_request_is_observed() {
    let server = metered_server(drift_config(3, 3)).await;
    let engine = &server.state.metrics.engine;
    add_fake_metered(&server.state.registry, engine, FakeMode::Echo, support::options("m", 1, 10, 1, Duration::ZERO));
    let data: Vec<f32> = (0..3).flat_map(|i| fake_values(i, 0.0)).collect();
    let request =
        serde_json::json!({"inputs": [{"name": "landmarks", "shape": [3, 2, 3, 3], "datatype": "FP32", "data": data}]});
    let reply = server.send(Method::POST, "/v2/models/m/infer", request.to_string()).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    let labels = model_labels("m");
    let text =
        scrape_until(&server, "reference", |t| metric(t, "ferroserve_drift_reference_samples", &labels) == Some(3.0))
            .await;
    for class in ["c0", "c1", "c2"] {
        assert_eq!(metric(&text, "ferroserve_predictions_total", &[labels[0], ("class", class)]), Some(1.0), "{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drift_detection_off_exports_no_drift_series() {
    let mut config = drift_config(5, 5);
    config.drift.enabled = false;
    let server = metered_server(config).await;
    let engine = &server.state.metrics.engine;
    add_fake_metered(&server.state.registry, engine, FakeMode::Echo, support::options("m", 1, 10, 1, Duration::ZERO));
    for i in 0..10 {
        assert_eq!(server.predict("m", landmark_body(&fake_values(i, 0.0))).await.status, StatusCode::OK);
    }
    let text = server.scrape().await;
    assert!(!text.contains("ferroserve_drift_reference_samples{") && !text.contains("ferroserve_predictions_total{"));
    assert!(server.manage(Method::GET, "/models/m").await.json[0].get("drift").is_none());
}

/// signnet loaded as the server loads it, in process, for many requests.
fn signnet(config: &Config) -> Model {
    ferroserve::load::load_model(config, ("signnet", "1.0"), "signnet", &EngineMetrics::detached()).expect("loads")
}

/// Features and top-1 predictions of `sequences` through `model`.
fn observe(model: &Model, sequences: Vec<Vec<f32>>) -> Vec<Observation> {
    let mut out = Vec::with_capacity(sequences.len());
    let mut pending = Vec::new();
    for sequence in sequences {
        let features = FeatureSet::Hand.compute(&sequence, &SHAPE);
        pending.push((features, model.submit_shaped(sequence, Some(&SHAPE), None).expect("accepted")));
        if pending.len() == 512 {
            drain(&mut pending, &mut out);
        }
    }
    drain(&mut pending, &mut out);
    out
}

type Pending = Vec<(
    ferroserve::drift::features::Features,
    tokio::sync::oneshot::Receiver<ferroserve_engine::request::InferResult>,
)>;

fn drain(pending: &mut Pending, out: &mut Vec<Observation>) {
    for (features, reply) in pending.drain(..) {
        let output = reply.blocking_recv().expect("answered").expect("success");
        out.push(Observation::of(features, &output.output).expect("scores"));
    }
}

fn draw(rng: &mut Rng, n: usize, framing: Framing) -> Vec<Vec<f32>> {
    (0..n).map(|_| signs::sequence(rng, framing)).collect()
}

fn batched_config() -> Config {
    let mut config = test_config(MB);
    let settings = [("default_workers_per_model", "2"), ("intra_op_threads", "1"), ("batch_size", "32")];
    let mut entries: Vec<_> = settings.iter().map(|(k, v)| ((*k).into(), (*v).into(), None)).collect();
    entries.extend([("max_batch_delay".into(), "1".into(), None), ("job_queue_size".into(), "1024".into(), None)]);
    config.apply(entries).expect("valid");
    config
}

fn window_of(observations: &[Observation]) -> Window {
    let now = std::time::Instant::now();
    let mut window = Window::default();
    for o in observations {
        window.push(o, now);
    }
    window
}

/// The standard deviation of feature `index` over `sequences`.
fn feature_std(sequences: &[Vec<f32>], index: usize) -> f64 {
    let values: Vec<f64> = sequences.iter().map(|s| f64::from(FeatureSet::Hand.compute(s, &SHAPE)[index])).collect();
    let mean = values.iter().sum::<f64>() / values.len() as f64;
    (values.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / values.len() as f64).sqrt()
}

#[test]
fn signnet_unshifted_windows_are_rarely_flagged_and_a_larger_hand_is() {
    let model = signnet(&batched_config());
    let mut rng = Rng::new(7);
    let reference = observe(&model, draw(&mut rng, 5000, Framing::REFERENCE));
    let names = FeatureSet::Hand.names();
    let profile = Profile::build(("signnet", "1.0"), "test".into(), &names, &reference).expect("profile");
    let settings = Settings::default();
    let mut flagged = Vec::new();
    for w in 0..100 {
        let window = observe(&model, draw(&mut rng, 1000, Framing::REFERENCE));
        let report = compare(&profile, window_of(&window), &settings);
        if report.detected {
            flagged.push((w, report));
        }
    }
    assert!(flagged.len() <= 1, "{} of 100 unshifted windows flagged: {flagged:#?}", flagged.len());

    // Half a standard deviation of hand size more (the signer nearer the camera), in the first window.
    let size = &profile.features[2];
    assert_eq!(size.name, "hand_size");
    let framing = Framing { x_shift: 0.0, size_scale: 1.0 + 0.5 * size.std / size.mean };
    let report = compare(&profile, window_of(&observe(&model, draw(&mut rng, 1000, framing))), &settings);
    assert!(report.detected, "{report:#?}");
    let drifted: Vec<&str> = report.features.iter().filter(|f| f.drifted).map(|f| f.feature.as_str()).collect();
    assert!(drifted.contains(&"hand_size") && !drifted.contains(&"hand_x"), "{drifted:?}");
    model.close();
    model.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signnet_hands_moved_off_centre_are_flagged_in_the_first_window_over_http() {
    let mut config = drift_config(2000, 1000);
    config
        .apply(vec![("batch_size".into(), "16".into(), None), ("max_batch_delay".into(), "1".into(), None)])
        .expect("valid");
    let metrics = support::metrics_for(&config);
    let model = ferroserve::load::load_model(&config, ("signnet", "1.0"), "signnet", &metrics.engine).expect("loads");
    let registry = Arc::new(ferroserve_engine::Registry::new());
    assert!(registry.register(model).is_ok());
    let server =
        Arc::new(TestServer::start_state(Arc::new(ferroserve::AppState::new(registry, config, metrics))).await);

    let mut rng = Rng::new(11);
    let reference = draw(&mut rng, 2000, Framing::REFERENCE);
    // Half the reference's standard deviation of the mean wrist position, to the right.
    let framing = Framing { x_shift: 0.5 * feature_std(&reference, 0), size_scale: 1.0 };
    let shifted = draw(&mut rng, 1000, framing);
    let labels = model_labels("signnet");
    send_all(&server, reference).await;
    scrape_until(&server, "reference", |t| metric(t, "ferroserve_drift_reference_samples", &labels) == Some(2000.0))
        .await;
    send_all(&server, shifted).await;
    let text =
        scrape_until(&server, "window", |t| metric(t, "ferroserve_drift_window_samples", &labels) == Some(1000.0))
            .await;
    assert_eq!(metric(&text, "ferroserve_drift_detected", &labels), Some(1.0), "{text}");
    let described = server.manage(Method::GET, "/models/signnet").await;
    let window = &described.json[0]["drift"]["lastWindow"];
    let drifted: Vec<&str> = window["features"]
        .as_array()
        .expect("features")
        .iter()
        .filter(|f| f["drifted"] == true)
        .filter_map(|f| f["feature"].as_str())
        .collect();
    assert_eq!(drifted, ["hand_x"], "{window}");
    assert_eq!(window["predictions"]["drifted"], false, "signnet normalises placement away: {window}");
}

/// Sends every sequence to signnet, eight at a time.
async fn send_all(server: &Arc<TestServer>, sequences: Vec<Vec<f32>>) {
    let mut tasks = tokio::task::JoinSet::new();
    for chunk in sequences.chunks(sequences.len().div_ceil(8)) {
        let (server, bodies) = (Arc::clone(server), chunk.iter().map(|s| signs::body(s)).collect::<Vec<_>>());
        tasks.spawn(async move {
            for body in bodies {
                let reply = server.predict("signnet", body).await;
                assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.expect("sender");
    }
}

#[test]
fn drift_profile_writes_a_profile_and_names_a_bad_line() {
    let dir = tempfile::tempdir().expect("temp dir");
    let requests = dir.path().join("requests.jsonl");
    let mut file = std::fs::File::create(&requests).expect("create");
    let mut rng = Rng::new(3);
    for _ in 0..40 {
        writeln!(file, "{}", signs::body(&signs::sequence(&mut rng, Framing::REFERENCE))).expect("write");
    }
    let config = dir.path().join("config.properties");
    std::fs::write(&config, format!("model_store={}\ndefault_workers_per_model=1\n", support::models_dir().display()))
        .expect("config");
    let output = dir.path().join("signnet.drift.json");
    let run = |requests: &std::path::Path| {
        std::process::Command::new(env!("CARGO_BIN_EXE_ferroserve"))
            .args(["--ts-config", &config.display().to_string(), "drift-profile", "--model", "signnet"])
            .arg(requests)
            .arg("-o")
            .arg(&output)
            .output()
            .expect("runs")
    };
    let out = run(&requests);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let profile = Profile::read(&output).expect("a profile");
    assert_eq!((profile.samples, profile.model_name.as_str(), profile.model_version.as_str()), (40, "signnet", "1.0"));
    let names: Vec<&str> = profile.names().collect();
    assert_eq!(names, ["hand_x", "hand_y", "hand_size", "hand_openness", "motion", "confidence"]);
    assert_eq!(profile.classes.iter().sum::<u64>(), 40);

    let bad = dir.path().join("bad.jsonl");
    std::fs::write(
        &bad,
        format!("{}\n\n{{\"landmarks\": []}}\n", signs::body(&signs::sequence(&mut rng, Framing::REFERENCE))),
    )
    .expect("write");
    let out = run(&bad);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("bad.jsonl line 3: `landmarks` has no frames"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_profile_file_is_the_reference_from_the_first_request() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut config = drift_config(5, 10);
    let profile_path = dir.path().join("m.drift.json");
    // The fake model's features, from requests like those the first test sends.
    let names = FeatureSet::for_shape(&[2, 3, 3]).names();
    let reference: Vec<Observation> = (0..50)
        .map(|i| {
            let values = fake_values(i, 0.0);
            let features = FeatureSet::for_shape(&[2, 3, 3]).compute(&values, &[2, 3, 3]);
            Observation { features, class: i % 10, confidence: values[..10].iter().copied().fold(0.0, f32::max) }
        })
        .collect();
    Profile::build(("m", "1.0"), "fixture".into(), &names, &reference)
        .expect("profile")
        .write(&profile_path)
        .expect("written");
    let entry = ModelConfig { drift_profile: Some(profile_path.display().to_string()), ..ModelConfig::default() };
    config.models.entry("m".into()).or_default().insert("1.0".into(), entry);
    let server = metered_server(config).await;
    let engine = &server.state.metrics.engine;
    add_fake_metered(&server.state.registry, engine, FakeMode::Echo, support::options("m", 1, 10, 1, Duration::ZERO));
    for i in 0..10 {
        assert_eq!(server.predict("m", landmark_body(&fake_values(i, 0.0))).await.status, StatusCode::OK);
    }
    let labels = model_labels("m");
    let text =
        scrape_until(&server, "window", |t| metric(t, "ferroserve_drift_window_samples", &labels) == Some(10.0)).await;
    assert_eq!(metric(&text, "ferroserve_drift_reference_samples", &labels), Some(50.0));
    assert_eq!(metric(&text, "ferroserve_drift_detected", &labels), Some(0.0), "{text}");
    let drift = server.manage(Method::GET, "/models/m").await.json[0]["drift"].clone();
    assert!(drift["reference"].as_str().is_some_and(|r| r.ends_with("m.drift.json")), "{drift}");

    // A named profile that is not there is an error the describe API shows; the first requests stand in.
    let mut config = drift_config(5, 10);
    let entry = ModelConfig { drift_profile: Some("missing.drift.json".into()), ..ModelConfig::default() };
    config.models.entry("m".into()).or_default().insert("1.0".into(), entry);
    let server = metered_server(config).await;
    let engine = &server.state.metrics.engine;
    add_fake_metered(&server.state.registry, engine, FakeMode::Echo, support::options("m", 1, 10, 1, Duration::ZERO));
    assert_eq!(server.predict("m", landmark_body(&fake_values(0, 0.0))).await.status, StatusCode::OK);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let drift = server.manage(Method::GET, "/models/m").await.json[0]["drift"].clone();
        if let Some(error) = drift["error"].as_str() {
            assert!(error.contains("missing.drift.json"), "{error}");
            assert_eq!(drift["reference"], "first requests");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "no error shown: {drift}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
