//! The OpenAPI descriptions against the server that serves them: each API answers its document at `OPTIONS /`
//! and `/api-description` as TorchServe does; every operation a document lists is answered (with a status it
//! lists, and with the key it names), every method the server answers on a documented path is documented, and
//! the routes each handler answers are in the documents.

mod support;

use std::{net::SocketAddr, sync::Arc, time::Duration};

use bytes::Bytes;
use ferroserve::{api::description::Document, auth::Keys, AppState, Config};
use ferroserve_engine::{backend::FakeMode, Registry};
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::{
    client::legacy::{connect::HttpConnector, Client},
    rt::TokioExecutor,
};
use serde_json::Value;
use support::{add_fake, metrics_for, options, test_config, TestServer};

const MB: usize = 1 << 20;
/// The fake model every path parameter names.
const MODEL: &str = "fake";
const VERSION: &str = "1.0";
/// The methods tried on every documented path.
const METHODS: [Method; 6] = [Method::GET, Method::POST, Method::PUT, Method::DELETE, Method::OPTIONS, Method::PATCH];

fn document(api: Document) -> Value {
    serde_json::from_slice(api.served()).expect("the document is JSON")
}

/// Registers the fake model `MODEL` at `VERSION` unless it is there (a DELETE removes it).
fn ensure_model(registry: &Registry) {
    if registry.get(MODEL, Some(VERSION)).is_none() {
        add_fake(registry, FakeMode::Echo, options(MODEL, 1, 10, 1, Duration::ZERO));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_api_answers_its_document_at_options_root_and_api_description() {
    let registry = Arc::new(Registry::new());
    ensure_model(&registry);
    let server = TestServer::start(registry, MB).await;
    for (addr, api) in [(server.addr, Document::Inference), (server.management, Document::Management)] {
        for (method, path) in
            [(Method::OPTIONS, "/"), (Method::GET, "/api-description"), (Method::OPTIONS, "/api-description")]
        {
            let reply = server.send_to(addr, method.clone(), path, "").await;
            assert_eq!(reply.status, StatusCode::OK, "{api:?} {method} {path}: {}", reply.text);
            assert_eq!(reply.headers["content-type"], "application/json", "{api:?} {method} {path}");
            // The document itself, not wrapped, as TorchServe answers.
            assert_eq!(reply.text.as_bytes(), api.served().as_ref(), "{api:?} {method} {path}");
            assert_eq!(reply.json["openapi"], "3.0.1");
            assert_eq!(reply.json["info"]["version"], env!("CARGO_PKG_VERSION"));
        }
        // As in TorchServe, the root answers OPTIONS only.
        let root = server.send_to(addr, Method::GET, "/", "").await;
        assert_eq!(root.status, StatusCode::METHOD_NOT_ALLOWED, "{api:?}");
        assert_eq!(root.json["type"], "MethodNotAllowedException");
    }
}

/// Every string under `value` that `key` names.
fn strings_under<'v>(value: &'v Value, key: &str, found: &mut Vec<&'v str>) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                match v.as_str() {
                    Some(s) if k == key => found.push(s),
                    _ => strings_under(v, key, found),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| strings_under(v, key, found)),
        _ => {}
    }
}

/// The object `value` stands for: itself, or what its `$ref` points at.
fn resolve<'d>(doc: &'d Value, value: &'d Value) -> &'d Value {
    match value["$ref"].as_str() {
        Some(reference) => doc.pointer(&reference[1..]).expect("the reference resolves"),
        None => value,
    }
}

/// `(method, path template, operation)` for every operation of `doc`.
fn operations(doc: &Value) -> Vec<(Method, &str, &Value)> {
    let paths = doc["paths"].as_object().expect("paths");
    let mut found = Vec::new();
    for (path, item) in paths {
        for (method, operation) in item.as_object().expect("a path item") {
            if method != "parameters" {
                let method = Method::from_bytes(method.to_uppercase().as_bytes()).expect("a method");
                found.push((method, path.as_str(), operation));
            }
        }
    }
    found
}

#[test]
fn the_documents_hang_together() {
    for api in [Document::Inference, Document::Management] {
        let doc = document(api);
        let mut references = Vec::new();
        strings_under(&doc, "$ref", &mut references);
        for reference in references {
            let pointer = reference.strip_prefix('#').expect("a local reference");
            assert!(doc.pointer(pointer).is_some(), "{api:?}: {reference} points at nothing");
        }
        let mut ids = Vec::new();
        for (method, path, operation) in operations(&doc) {
            ids.push(operation["operationId"].as_str().expect("every operation has an id"));
            let declared: Vec<&str> = [&doc["paths"][path]["parameters"], &operation["parameters"]]
                .into_iter()
                .filter_map(Value::as_array)
                .flatten()
                .map(|p| resolve(&doc, p))
                .filter(|p| p["in"] == "path")
                .filter_map(|p| p["name"].as_str())
                .collect();
            for segment in path.split('/').filter(|s| s.starts_with('{')) {
                let name = segment.trim_matches(|c| c == '{' || c == '}');
                assert!(declared.contains(&name), "{api:?} {method} {path}: `{name}` is not declared");
            }
        }
        let count = ids.len();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), count, "{api:?}: operation ids are unique");
    }
}

/// A server whose every API asks for its key (so that the token API exists), with the fake model.
struct Secured {
    server: TestServer,
    keys: Keys,
    client: Client<HttpConnector, Full<Bytes>>,
}

impl Secured {
    async fn start() -> Self {
        let config =
            Config { disable_token_authorization: false, inference_token_authorization: true, ..test_config(MB) };
        let registry = Arc::new(Registry::new());
        ensure_model(&registry);
        let keys = Keys::generate(true, config.token_expiration).expect("keys");
        let metrics = metrics_for(&config);
        let state = AppState::new(registry, config, metrics).with_keys(Some(keys.clone()));
        let server = TestServer::start_state(Arc::new(state)).await;
        Self { server, keys, client: Client::builder(TokioExecutor::new()).build_http() }
    }

    /// The key a security scheme of the documents names.
    fn key(&self, scheme: &str) -> &str {
        match scheme {
            "inferenceKey" => &self.keys.inference,
            "managementKey" => &self.keys.management,
            "apiKey" => &self.keys.api,
            other => panic!("the documents name a security scheme the test does not know: {other}"),
        }
    }

    /// Sends `method path` (`{}` as the body of a POST, PUT or PATCH: never a valid request, so never one that
    /// runs), with `key` as its bearer token; the status and the body as JSON.
    async fn send(&self, addr: SocketAddr, method: &Method, path: &str, key: Option<&str>) -> (StatusCode, Value) {
        let body = if [Method::POST, Method::PUT, Method::PATCH].contains(method) { "{}" } else { "" };
        let mut req = Request::builder()
            .method(method.clone())
            .uri(format!("http://{addr}{path}"))
            .header("content-type", "application/json");
        if let Some(key) = key {
            req = req.header("authorization", format!("Bearer {key}"));
        }
        let req = req.body(Full::new(Bytes::from_static(body.as_bytes()))).expect("request");
        let response = tokio::time::timeout(Duration::from_secs(60), self.client.request(req))
            .await
            .expect("an answer within 60 s")
            .expect("HTTP exchange");
        let status = response.status();
        let body = response.into_body().collect().await.expect("body").to_bytes();
        (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
    }
}

/// The operation of `doc` that `method path` reaches: under any template that matches the concrete path.
fn operation_at<'d>(doc: &'d Value, method: &Method, path: &str) -> Option<&'d Value> {
    let segments: Vec<&str> = path.split('/').collect();
    let matches = |template: &str| {
        let parts: Vec<&str> = template.split('/').collect();
        parts.len() == segments.len() && parts.iter().zip(&segments).all(|(t, s)| t.starts_with('{') || t == s)
    };
    let method = method.as_str().to_lowercase();
    let paths = doc["paths"].as_object().expect("paths");
    paths.iter().filter(|(template, _)| matches(template)).find_map(|(_, item)| item.get(&method))
}

/// The security requirements of `operation` (the document's when it has none of its own).
fn security<'d>(doc: &'d Value, operation: Option<&'d Value>) -> &'d [Value] {
    let security = operation.and_then(|op| op.get("security")).unwrap_or(&doc["security"]);
    security.as_array().map_or(&[], Vec::as_slice)
}

/// The first scheme the requirements name, when there is one.
fn scheme(requirements: &[Value]) -> Option<&str> {
    requirements.first()?.as_object()?.keys().next().map(String::as_str)
}

/// A template with the fake model's name and version for its parameters.
fn concrete(template: &str) -> String {
    let path = template.replace("{model_name}", MODEL).replace("{model_version}", VERSION);
    assert!(!path.contains('{'), "a path parameter the test cannot fill: {template}");
    path
}

/// The router's answer to a path or method it does not know, in either protocol's body.
fn unrouted(status: StatusCode, body: &Value) -> bool {
    let resource_not_found = body["type"] == "ResourceNotFoundException"
        || body["error"].as_str().is_some_and(|e| e.starts_with("Requested resource is not found"));
    status == StatusCode::METHOD_NOT_ALLOWED || (status == StatusCode::NOT_FOUND && resource_not_found)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_documents_list_exactly_the_methods_the_server_answers_on_their_paths() {
    let secured = Secured::start().await;
    let server = &secured.server;
    for (addr, api) in [(server.addr, Document::Inference), (server.management, Document::Management)] {
        let doc = document(api);
        let paths: Vec<&String> = doc["paths"].as_object().expect("paths").keys().collect();
        let mut probes: Vec<(Method, String)> =
            paths.iter().flat_map(|p| METHODS.iter().map(|m| (m.clone(), concrete(p)))).collect();
        // The unregistering calls go last (the model is registered again before each probe all the same).
        probes.sort_by_key(|(method, _)| *method == Method::DELETE);
        for (method, path) in probes {
            ensure_model(&server.state.registry);
            let documented = operation_at(&doc, &method, &path);
            let requirements = security(&doc, documented);
            let anonymous =
                requirements.is_empty() || requirements.iter().any(|r| r.as_object().is_some_and(|r| r.is_empty()));
            if documented.is_some() && !anonymous {
                let (status, body) = secured.send(addr, &method, &path, None).await;
                assert_eq!(status, StatusCode::UNAUTHORIZED, "{api:?} {method} {path} needs a key: {body}");
            }
            let key = scheme(requirements).map(|s| secured.key(s));
            let (status, body) = secured.send(addr, &method, &path, key).await;
            match documented {
                Some(operation) => {
                    assert!(
                        !unrouted(status, &body),
                        "{api:?} {method} {path} is documented, not served: {status} {body}"
                    );
                    assert!(
                        operation["responses"].get(status.as_str()).is_some(),
                        "{api:?} {method} {path} answered {status}, which its document does not list: {body}"
                    );
                }
                None => assert!(
                    unrouted(status, &body),
                    "{api:?} {method} {path} is served, not documented: {status} {body}"
                ),
            }
        }
    }
}

#[test]
fn the_routes_each_handler_answers_are_documented() {
    use Document::{Inference, Management};
    let served = [
        // api::description
        (Inference, "options", "/"),
        (Inference, "get", "/api-description"),
        (Management, "options", "/"),
        (Management, "get", "/api-description"),
        // api::predictions
        (Inference, "get", "/ping"),
        (Inference, "post", "/predictions/{model_name}"),
        (Inference, "post", "/predictions/{model_name}/{model_version}"),
        // api::kserve
        (Inference, "get", "/v2"),
        (Inference, "get", "/v2/health/live"),
        (Inference, "get", "/v2/health/ready"),
        (Inference, "get", "/v2/models/{model_name}"),
        (Inference, "get", "/v2/models/{model_name}/versions/{model_version}/ready"),
        (Inference, "post", "/v2/models/{model_name}/infer"),
        (Inference, "post", "/v2/models/{model_name}/versions/{model_version}/infer"),
        // api::management
        (Management, "get", "/models"),
        (Management, "post", "/models"),
        (Management, "get", "/models/{model_name}"),
        (Management, "get", "/models/{model_name}/all"),
        (Management, "put", "/models/{model_name}/{model_version}"),
        (Management, "put", "/models/{model_name}/{model_version}/set-default"),
        (Management, "put", "/models/{model_name}/{model_version}/canary"),
        (Management, "delete", "/models/{model_name}/{model_version}/canary"),
        (Management, "put", "/models/{model_name}/{model_version}/promote"),
        (Management, "delete", "/models/{model_name}"),
        (Management, "delete", "/models/{model_name}/{model_version}"),
        // api::token
        (Management, "get", "/token"),
    ];
    for (api, method, path) in served {
        assert!(document(api)["paths"][path][method].is_object(), "{api:?} {method} {path} is not documented");
    }
}
