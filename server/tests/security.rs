//! Security defaults over real HTTP: the management API asks for its token, the inference API only when told to
//! (health checks and metrics never), the model API is off unless enabled, `allowed_urls` is enforced, and the
//! key file is written for its owner only.

mod support;

use std::{sync::Arc, time::Duration};

use ferroserve::{auth::Keys, AppState, Config};
use ferroserve_engine::{backend::FakeMode, Registry};
use hyper::{Method, StatusCode};
use support::{add_fake, landmark_body, metrics_for, options, test_config, TestServer};

const MB: usize = 1 << 20;

/// A server with one fake model `m`, the given config, and fresh keys unless authorisation is disabled.
async fn secured(config: Config) -> (TestServer, Option<Keys>) {
    let registry = Arc::new(Registry::new());
    add_fake(&registry, FakeMode::Echo, options("m", 1, 10, 1, Duration::ZERO));
    let keys = (!config.disable_token_authorization)
        .then(|| Keys::generate(config.inference_token_authorization, config.token_expiration).expect("keys"));
    let metrics = metrics_for(&config);
    let state = AppState::new(registry, config, metrics).with_keys(keys.clone());
    (TestServer::start_state(Arc::new(state)).await, keys)
}

fn defaults() -> Config {
    Config { disable_token_authorization: false, enable_model_api: false, ..test_config(MB) }
}

fn bearer(key: &str) -> String {
    format!("Bearer {key}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_management_api_asks_for_its_key_by_default() {
    let (server, keys) = secured(defaults()).await;
    let keys = keys.expect("on by default");
    let missing = server.manage(Method::GET, "/models").await;
    assert_eq!(missing.status, StatusCode::UNAUTHORIZED);
    assert_eq!(missing.json["type"], "InvalidKeyException");
    assert!(!missing.text.contains(&keys.management), "the key is never echoed");
    let send = |key: String| {
        let server = &server;
        async move {
            let req = [("authorization", key.as_str())];
            server.send_raw_to(server.management, Method::GET, "/models", &req).await
        }
    };
    assert_eq!(send(bearer("wrong")).await, StatusCode::UNAUTHORIZED);
    assert_eq!(send(bearer(&keys.inference)).await, StatusCode::UNAUTHORIZED, "the inference key is not enough");
    assert_eq!(send(keys.management.clone()).await, StatusCode::UNAUTHORIZED, "Bearer is required");
    assert_eq!(send(bearer(&keys.management)).await, StatusCode::OK);
    // The inference API and the metrics API stay open by default.
    assert_eq!(server.predict("m", landmark_body(&[0.5; 18])).await.status, StatusCode::OK);
    assert_eq!(server.send_to(server.metrics, Method::GET, "/metrics", "").await.status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_inference_key_is_asked_for_when_configured_but_not_by_health_checks() {
    let (server, keys) = secured(Config { inference_token_authorization: true, ..defaults() }).await;
    let keys = keys.expect("keys");
    let body = landmark_body(&[0.5; 18]);
    assert_eq!(server.predict("m", body.clone()).await.status, StatusCode::UNAUTHORIZED);
    let v2 = server.send(Method::POST, "/v2/models/m/infer", "{}").await;
    assert_eq!(v2.status, StatusCode::UNAUTHORIZED);
    assert!(v2.json["error"].is_string(), "KServe's error body: {}", v2.json);
    let ok =
        server.send_with_header(Method::POST, "/predictions/m", body, "authorization", &bearer(&keys.inference)).await;
    assert_eq!(ok.status, StatusCode::OK);
    for health in ["/ping", "/v2/health/live", "/v2/health/ready"] {
        assert_eq!(server.send(Method::GET, health, "").await.status, StatusCode::OK, "{health}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_model_api_is_off_unless_enabled() {
    let (server, _) = secured(Config { disable_token_authorization: true, ..defaults() }).await;
    for (method, path) in [(Method::POST, "/models?url=signnet"), (Method::DELETE, "/models/m")] {
        let reply = server.manage(method.clone(), path).await;
        assert_eq!(reply.status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
        assert!(reply.json["message"].as_str().expect("message").contains("enable_model_api"));
    }
    assert_eq!(server.predict("m", landmark_body(&[0.5; 18])).await.status, StatusCode::OK, "still served");
    let scaled = server.manage(Method::PUT, "/models/m?min_worker=2&synchronous=true").await;
    assert_eq!(scaled.status, StatusCode::OK, "scaling is not part of the model API");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allowed_urls_are_enforced() {
    let config = Config { allowed_urls: vec!["sign.*".into()], ..test_config(MB) };
    let (server, _) = secured(config).await;
    let refused = server.manage(Method::POST, "/models?url=other&model_name=x").await;
    assert_eq!(refused.status, StatusCode::BAD_REQUEST);
    assert!(refused.json["message"].as_str().expect("message").contains("allowed"));
    let allowed = server.manage(Method::POST, "/models?url=signnet&initial_workers=1&synchronous=true").await;
    assert_eq!(allowed.status, StatusCode::OK, "{}", allowed.json);
}

#[cfg(unix)]
#[test]
fn the_key_file_is_for_its_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("key_file.json");
    // A key file left world-readable by someone else's hand is replaced, not rewritten in place.
    std::fs::write(&path, "{}").expect("old file");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let keys = Keys::generate(false, Duration::from_secs(60)).expect("keys");
    keys.write(&path).expect("write");
    let mode = std::fs::metadata(&path).expect("metadata").permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    assert_eq!(std::fs::read_dir(dir.path()).expect("dir").count(), 1, "no temporary file is left");
    let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).expect("read")).expect("JSON");
    assert_eq!(json["management"]["key"], keys.management.as_str());
    assert_eq!(json["inference"]["key"], keys.inference.as_str());
    assert_ne!(keys.management, keys.inference);
    assert_eq!(keys.management.len(), 48);
    assert!(!format!("{keys:?}").contains(&keys.management), "Debug never shows a key");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_api_replaces_a_key_with_the_api_key_only() {
    let dir = tempfile::tempdir().expect("dir");
    let key_file = dir.path().join("key_file.json");
    let config = Config { key_file: key_file.clone(), inference_token_authorization: true, ..defaults() };
    let (server, keys) = secured(config).await;
    let keys = keys.expect("keys");
    let get = |path: &'static str, key: String| {
        let server = &server;
        async move {
            let auth = bearer(&key);
            server.send_raw_to(server.management, Method::GET, path, &[("authorization", auth.as_str())]).await
        }
    };
    let from_file = |kind: &str| -> String {
        let text = std::fs::read_to_string(&key_file).expect("the token API wrote the key file");
        let json: serde_json::Value = serde_json::from_str(&text).expect("JSON");
        json[kind]["key"].as_str().expect("key").to_string()
    };

    let renew = "/token?type=management";
    assert_eq!(get(renew, keys.management.clone()).await, StatusCode::UNAUTHORIZED, "the management key is not enough");
    assert_eq!(server.manage(Method::GET, renew).await.status, StatusCode::UNAUTHORIZED);
    assert_eq!(get("/token?type=everything", keys.api.clone()).await, StatusCode::BAD_REQUEST);
    assert_eq!(get("/token", keys.api.clone()).await, StatusCode::BAD_REQUEST);
    let posted = [("authorization", bearer(&keys.api))];
    let posted: Vec<(&str, &str)> = posted.iter().map(|(k, v)| (*k, v.as_str())).collect();
    assert_eq!(
        server.send_raw_to(server.management, Method::POST, renew, &posted).await,
        StatusCode::METHOD_NOT_ALLOWED
    );

    assert_eq!(get(renew, keys.api.clone()).await, StatusCode::OK);
    let management = from_file("management");
    assert_ne!(management, keys.management);
    assert_eq!(get("/models", keys.management.clone()).await, StatusCode::UNAUTHORIZED, "the old key is gone");
    assert_eq!(get("/models", management.clone()).await, StatusCode::OK);
    assert_eq!(from_file("inference"), keys.inference, "only the key asked for changes");

    assert_eq!(get("/token?type=inference", keys.api.clone()).await, StatusCode::OK);
    let inference = from_file("inference");
    assert_ne!(inference, keys.inference);
    let body = landmark_body(&[0.5; 18]);
    for (key, status) in [(&keys.inference, StatusCode::UNAUTHORIZED), (&inference, StatusCode::OK)] {
        let auth = bearer(key);
        let reply = server.send_with_header(Method::POST, "/predictions/m", body.clone(), "authorization", &auth).await;
        assert_eq!(reply.status, status);
    }
    assert_eq!(from_file("management"), management);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_token_authorisation_there_is_no_token_api() {
    let (server, _) = secured(Config { disable_token_authorization: true, ..defaults() }).await;
    assert_eq!(server.manage(Method::GET, "/token?type=management").await.status, StatusCode::NOT_FOUND);
}
