//! The management API over real HTTP: list with pagination, describe, register (synchronous and not, 409, 400,
//! 404), scale and re-batch live, set-default, unregister, wrong methods; and no accepted request is lost when a
//! model is scaled down or unregistered under load.

mod support;

use std::{sync::Arc, time::Duration};

use ferroserve_engine::{
    backend::{FakeMode, FakeStep},
    ModelOptions, Registry,
};
use hyper::{Method, StatusCode};
use support::{add_fake, landmark_body, options, TestServer};

const MB: usize = 1 << 20;

fn three_fakes() -> Arc<Registry> {
    let registry = Arc::new(Registry::new());
    for name in ["alpha", "beta", "gamma"] {
        add_fake(&registry, FakeMode::Echo, options(name, 1, 10, 4, Duration::from_millis(1)));
    }
    registry
}

fn body() -> String {
    landmark_body(&[0.5; 18])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_models_a_page_at_a_time() {
    let server = TestServer::start(three_fakes(), MB).await;
    let first = server.manage(Method::GET, "/models?limit=2").await;
    assert_eq!(first.status, StatusCode::OK);
    let names: Vec<_> =
        first.json["models"].as_array().expect("models").iter().map(|m| m["modelName"].clone()).collect();
    assert_eq!(names, vec!["alpha", "beta"]);
    assert_eq!(first.json["nextPageToken"], "2");
    let second = server.manage(Method::GET, "/models?limit=2&next_page_token=2").await;
    assert_eq!(second.json["models"][0]["modelName"], "gamma");
    assert!(second.json.get("nextPageToken").is_none());
    let all = server.manage(Method::GET, "/models").await;
    assert_eq!(all.json["models"].as_array().expect("models").len(), 3);
    for bad in ["/models?limit=0", "/models?limit=x", "/models?next_page_token=-1"] {
        let reply = server.manage(Method::GET, bad).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{bad}");
        assert_eq!(reply.json["type"], "BadRequestException");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn describes_models_with_torchserve_fields() {
    let server = TestServer::start(three_fakes(), MB).await;
    let reply = server.manage(Method::GET, "/models/alpha").await;
    assert_eq!(reply.status, StatusCode::OK);
    let d = &reply.json[0];
    for field in [
        "modelName",
        "modelVersion",
        "modelUrl",
        "runtime",
        "minWorkers",
        "maxWorkers",
        "batchSize",
        "maxBatchDelay",
        "workers",
        "jobQueueStatus",
    ] {
        assert!(d.get(field).is_some(), "missing {field} in {d}");
    }
    assert_eq!((d["modelName"].as_str(), d["modelVersion"].as_str()), (Some("alpha"), Some("1.0")));
    assert_eq!((d["batchSize"].as_u64(), d["maxBatchDelay"].as_u64()), (Some(4), Some(1)), "an integer, as TorchServe");
    assert_eq!(d["workers"].as_array().expect("workers").len(), 1);
    assert_eq!(d["workers"][0]["status"], "READY");
    assert_eq!(d["workers"][0]["device"], "cpu");
    assert_eq!(d["workers"][0]["pid"], std::process::id(), "a worker that runs in the server has its pid");
    assert_eq!(d["jobQueueStatus"]["remainingCapacity"], 10);
    assert_eq!(d["jobQueueStatus"]["pendingRequests"], 0);
    assert_eq!(server.manage(Method::GET, "/models/alpha/all").await.json.as_array().expect("list").len(), 1);
    assert_eq!(server.manage(Method::GET, "/models/alpha/1.0").await.status, StatusCode::OK);
    let missing = server.manage(Method::GET, "/models/nope").await;
    assert_eq!(
        (missing.status, missing.json["type"].as_str()),
        (StatusCode::NOT_FOUND, Some("ModelNotFoundException"))
    );
    let missing_version = server.manage(Method::GET, "/models/alpha/9.9").await;
    assert_eq!(missing_version.status, StatusCode::NOT_FOUND);
    assert!(missing_version.json["message"].as_str().expect("message").contains("9.9"));
    assert_eq!(server.manage(Method::PATCH, "/models/alpha").await.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(server.manage(Method::GET, "/nowhere").await.status, StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registers_from_the_model_store() {
    let server = TestServer::start(Arc::new(Registry::new()), MB).await;
    let url = "/models?url=signnet&model_name=sign&batch_size=8&max_batch_delay=3&initial_workers=1&synchronous=true";
    let created = server.manage(Method::POST, url).await;
    assert_eq!(created.status, StatusCode::OK, "{}", created.json);
    assert!(created.json["status"].as_str().expect("status").contains("registered with 1 initial workers"));
    let d = &server.manage(Method::GET, "/models/sign").await.json[0];
    assert_eq!(
        (d["batchSize"].as_u64(), d["maxBatchDelay"].as_f64(), d["runtime"].as_str()),
        (Some(8), Some(3.0), Some("onnx"))
    );
    assert_eq!(d["loadedAtStartup"], false);
    let example = std::fs::read(support::models_dir().join("signnet/example.json")).expect("example");
    let answer = server.predict("sign", example).await;
    assert_eq!(answer.json["predictions"][0]["label"], "hello");

    let duplicate = server.manage(Method::POST, url).await;
    assert_eq!(
        (duplicate.status, duplicate.json["type"].as_str()),
        (StatusCode::CONFLICT, Some("ConflictStatusException"))
    );

    let accepted = server.manage(Method::POST, "/models?url=signnet&initial_workers=1").await;
    assert_eq!(accepted.status, StatusCode::ACCEPTED, "{}", accepted.json);
    let mut loaded = false;
    for _ in 0..500 {
        if server.manage(Method::GET, "/models/signnet").await.status == StatusCode::OK {
            loaded = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(loaded, "the background registration finishes");

    for (bad, status) in [
        ("/models", StatusCode::BAD_REQUEST),
        ("/models?url=../models/signnet", StatusCode::BAD_REQUEST),
        ("/models?url=/etc/passwd", StatusCode::BAD_REQUEST),
        ("/models?url=https://example.invalid/x.mar", StatusCode::BAD_REQUEST),
        ("/models?url=signnet&model_name=x&batch_size=0", StatusCode::BAD_REQUEST),
        ("/models?url=signnet&model_name=x&max_batch_delay=-2", StatusCode::BAD_REQUEST),
        ("/models?url=signnet&model_name=x&synchronous=maybe", StatusCode::BAD_REQUEST),
        ("/models?url=ghost", StatusCode::NOT_FOUND),
    ] {
        let reply = server.manage(Method::POST, bad).await;
        assert_eq!(reply.status, status, "{bad}: {}", reply.json);
        assert!(reply.json["message"].is_string(), "{bad}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scales_and_rebatches_live() {
    let server = TestServer::start(three_fakes(), MB).await;
    let scaled = server.manage(Method::PUT, "/models/alpha?min_worker=3&max_worker=5&synchronous=true").await;
    assert_eq!(scaled.status, StatusCode::OK, "{}", scaled.json);
    let d = &server.manage(Method::GET, "/models/alpha").await.json[0];
    assert_eq!((d["minWorkers"].as_u64(), d["maxWorkers"].as_u64()), (Some(3), Some(5)));
    assert_eq!(d["workers"].as_array().expect("workers").len(), 3);
    let queued = server.manage(Method::PUT, "/models/alpha?min_worker=2").await;
    assert_eq!(queued.status, StatusCode::ACCEPTED);

    let rebatched = server.manage(Method::PUT, "/models/beta/1.0?batch_size=12&max_batch_delay=0.25").await;
    assert_eq!(rebatched.status, StatusCode::OK);
    let d = &server.manage(Method::GET, "/models/beta").await.json[0];
    assert_eq!((d["batchSize"].as_u64(), d["maxBatchDelay"].as_f64()), (Some(12), Some(0.25)));
    let model = server.state.registry.get("beta", None).expect("beta");
    assert_eq!(model.policy().max_delay, Duration::from_micros(250));

    for bad in ["/models/alpha", "/models/alpha?min_worker=4&max_worker=2", "/models/alpha?batch_size=none"] {
        assert_eq!(server.manage(Method::PUT, bad).await.status, StatusCode::BAD_REQUEST, "{bad}");
    }
    assert_eq!(server.manage(Method::PUT, "/models/nope?min_worker=1").await.status, StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sets_the_default_version_and_unregisters() {
    let registry = Arc::new(Registry::new());
    add_fake(&registry, FakeMode::Echo, options("m", 1, 10, 1, Duration::ZERO));
    add_fake(
        &registry,
        FakeMode::BatchSize,
        ModelOptions { version: "2.0".into(), ..options("m", 1, 10, 1, Duration::ZERO) },
    );
    let server = TestServer::start(registry, MB).await;
    assert_eq!(server.manage(Method::GET, "/models/m").await.json[0]["modelVersion"], "1.0");
    assert_eq!(server.manage(Method::GET, "/models/m/all").await.json.as_array().expect("all").len(), 2);
    let set = server.manage(Method::PUT, "/models/m/2.0/set-default").await;
    assert_eq!(set.status, StatusCode::OK, "{}", set.json);
    assert_eq!(server.manage(Method::GET, "/models/m").await.json[0]["modelVersion"], "2.0");
    assert_eq!(server.manage(Method::PUT, "/models/m/3.0/set-default").await.status, StatusCode::NOT_FOUND);

    let gone = server.manage(Method::DELETE, "/models/m/2.0").await;
    assert_eq!(gone.status, StatusCode::OK, "{}", gone.json);
    assert_eq!(
        server.manage(Method::GET, "/models/m").await.json[0]["modelVersion"],
        "1.0",
        "1.0 is the default again"
    );
    assert_eq!(server.manage(Method::DELETE, "/models/m").await.status, StatusCode::OK);
    assert_eq!(server.manage(Method::GET, "/models/m").await.status, StatusCode::NOT_FOUND);
    assert_eq!(server.predict("m", body()).await.status, StatusCode::NOT_FOUND);
    assert_eq!(server.manage(Method::DELETE, "/models/m").await.status, StatusCode::NOT_FOUND);
}

/// Sends `n` predictions concurrently; returns their statuses.
async fn burst(server: &Arc<TestServer>, model: &str, n: usize) -> Vec<tokio::task::JoinHandle<(StatusCode, String)>> {
    (0..n)
        .map(|_| {
            let server = Arc::clone(server);
            let model = model.to_string();
            tokio::spawn(async move {
                let reply = server.predict(&model, body()).await;
                (reply.status, reply.json["type"].as_str().unwrap_or_default().to_string())
            })
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scaling_down_under_load_loses_no_request() {
    let registry = Arc::new(Registry::new());
    let fake = add_fake(&registry, FakeMode::Echo, options("busy", 3, 1000, 4, Duration::from_micros(500)));
    for _ in 0..40 {
        fake.script.push(FakeStep::Sleep(Duration::from_millis(2)));
    }
    let server = Arc::new(TestServer::start(Arc::clone(&registry), MB).await);
    let requests = burst(&server, "busy", 300).await;
    let scaled = server.manage(Method::PUT, "/models/busy?min_worker=1&synchronous=true").await;
    assert_eq!(scaled.status, StatusCode::OK);
    for r in requests {
        assert_eq!(r.await.expect("task").0, StatusCode::OK);
    }
    assert_eq!(fake.batch_sizes().iter().sum::<usize>(), 300);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unregistering_under_load_answers_every_accepted_request() {
    let registry = Arc::new(Registry::new());
    let fake = add_fake(&registry, FakeMode::Echo, options("busy", 2, 1000, 4, Duration::from_micros(500)));
    for _ in 0..40 {
        fake.script.push(FakeStep::Sleep(Duration::from_millis(2)));
    }
    let model = registry.get("busy", None).expect("model");
    let server = Arc::new(TestServer::start(Arc::clone(&registry), MB).await);
    let requests = burst(&server, "busy", 300).await;
    while model.stats().accepted < 20 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let gone = server.manage(Method::DELETE, "/models/busy").await;
    assert_eq!(gone.status, StatusCode::OK);
    let mut ok = 0;
    for r in requests {
        match r.await.expect("task") {
            (StatusCode::OK, _) => ok += 1,
            (StatusCode::NOT_FOUND, kind) => assert_eq!(kind, "ModelNotFoundException"),
            (StatusCode::SERVICE_UNAVAILABLE, kind) => assert_eq!(kind, "ServiceUnavailableException"),
            other => panic!("unexpected answer {other:?}"),
        }
    }
    let stats = model.stats();
    assert_eq!(ok, stats.accepted, "every accepted request was answered 200");
    assert_eq!(stats.batched, stats.accepted);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_version_of_a_known_model_is_torchserves_version_not_found() {
    let server = TestServer::start(three_fakes(), MB).await;
    for (method, path) in [
        (Method::GET, "/models/alpha/9.9"),
        (Method::PUT, "/models/alpha/9.9/set-default"),
        (Method::PUT, "/models/alpha/9.9?min_worker=2"),
        (Method::DELETE, "/models/alpha/9.9"),
    ] {
        let reply = server.manage(method.clone(), path).await;
        assert_eq!(
            (reply.status, reply.json["type"].as_str()),
            (StatusCode::NOT_FOUND, Some("ModelVersionNotFoundException")),
            "{method} {path}: {}",
            reply.text
        );
        assert_eq!(reply.json["message"], "Model version: 9.9 does not exist for model: alpha");
    }
    let reply = server.send(Method::POST, "/predictions/alpha/9.9", body()).await;
    assert_eq!(
        (reply.status, reply.json["type"].as_str()),
        (StatusCode::NOT_FOUND, Some("ModelVersionNotFoundException"))
    );
    // An unknown model stays ModelNotFoundException, with or without a version.
    let reply = server.send(Method::POST, "/predictions/nope/1.0", body()).await;
    assert_eq!(reply.json["type"], "ModelNotFoundException");
    assert_eq!(server.manage(Method::DELETE, "/models/alpha").await.status, StatusCode::OK, "alpha itself is there");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_batch_delay_is_an_integer_when_whole_and_a_fraction_when_not() {
    let server = TestServer::start(three_fakes(), MB).await;
    for (delay, expected) in
        [("7", serde_json::json!(7)), ("0.25", serde_json::json!(0.25)), ("100", serde_json::json!(100))]
    {
        let put = server.manage(Method::PUT, &format!("/models/beta?max_batch_delay={delay}")).await;
        assert_eq!(put.status, StatusCode::OK, "{}", put.text);
        let d = &server.manage(Method::GET, "/models/beta").await.json[0];
        assert_eq!(d["maxBatchDelay"], expected, "{d}");
        let text = server.manage(Method::GET, "/models/beta").await.text;
        assert!(text.contains(&format!("\"maxBatchDelay\":{expected},")), "{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_synchronous_scale_down_answers_once_the_surplus_workers_have_stopped() {
    let registry = Arc::new(Registry::new());
    add_fake(&registry, FakeMode::Echo, options("pair", 2, 10, 1, Duration::ZERO));
    let server = TestServer::start(registry, MB).await;
    let scaled = server.manage(Method::PUT, "/models/pair/1.0?min_worker=1&max_worker=1&synchronous=true").await;
    assert_eq!(scaled.status, StatusCode::OK, "{}", scaled.text);
    let d = &server.manage(Method::GET, "/models/pair").await.json[0];
    assert_eq!(d["workers"].as_array().expect("workers").len(), 1, "{d}");
    assert_eq!((d["minWorkers"].as_u64(), d["maxWorkers"].as_u64()), (Some(1), Some(1)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_with_zero_workers_stays_registered_and_answers_503_until_scaled_up() {
    let server = TestServer::start(Arc::new(Registry::new()), MB).await;
    let url = "/models?url=signnet&model_name=idle&initial_workers=0&synchronous=true";
    let created = server.manage(Method::POST, url).await;
    assert_eq!(created.status, StatusCode::OK, "{}", created.text);
    let d = &server.manage(Method::GET, "/models/idle").await.json[0];
    assert_eq!((d["minWorkers"].as_u64(), d["workers"].as_array().map(Vec::len)), (Some(0), Some(0)), "{d}");
    let example = std::fs::read(support::models_dir().join("signnet/example.json")).expect("example");
    let refused = server.predict("idle", example.clone()).await;
    assert_eq!(
        (refused.status, refused.json["type"].as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, Some("ServiceUnavailableException")),
        "{}",
        refused.text
    );
    assert_eq!(server.send(Method::GET, "/ping", "").await.status, StatusCode::OK, "scaled to zero on purpose");

    let up = server.manage(Method::PUT, "/models/idle?min_worker=1&synchronous=true").await;
    assert_eq!(up.status, StatusCode::OK, "{}", up.text);
    assert_eq!(server.predict("idle", example.clone()).await.json["predictions"][0]["label"], "hello");
    let down = server.manage(Method::PUT, "/models/idle?min_worker=0&synchronous=true").await;
    assert_eq!(down.status, StatusCode::OK, "{}", down.text);
    assert_eq!(server.predict("idle", example).await.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(server.manage(Method::DELETE, "/models/idle").await.status, StatusCode::OK);
    assert_eq!(server.manage(Method::GET, "/models/idle").await.status, StatusCode::NOT_FOUND);
}
