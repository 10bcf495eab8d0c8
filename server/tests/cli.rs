//! The `ferroserve` binary itself, as a child process: it starts from a config.properties, serves the bundled
//! model on its three APIs, stays up when a model fails to load, refuses a bad configuration naming the key,
//! and on SIGTERM answers every request it accepted before it exits 0 (a second signal ends it at once).

use std::{
    collections::HashMap,
    io::{BufRead, BufReader, Write},
    path::Path,
    process::{Child, Command, Stdio},
    sync::Arc,
    time::Duration,
};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::StatusCode;
use hyper_util::{
    client::legacy::{connect::HttpConnector, Client},
    rt::TokioExecutor,
};

fn models_dir() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../models").display().to_string()
}

fn config_file(text: &str) -> tempfile::NamedTempFile {
    let mut file = tempfile::NamedTempFile::new().expect("temp file");
    file.write_all(text.as_bytes()).expect("write config");
    file
}

/// A config with every API on port 0, the repository's model store and the key file in a temporary folder, plus
/// `extra` lines.
fn ephemeral_config(keys: &tempfile::TempDir, extra: &str) -> tempfile::NamedTempFile {
    config_file(&format!(
        "inference_address=http://127.0.0.1:0\nmanagement_address=http://127.0.0.1:0\n\
         metrics_address=http://127.0.0.1:0\ngrpc_inference_port=0\ngrpc_management_port=0\nmodel_store={}\ndefault_workers_per_model=1\nkey_file={}\n{extra}",
        models_dir(),
        keys.path().join("key_file.json").display()
    ))
}

/// The management key the server wrote.
fn management_key(keys: &tempfile::TempDir) -> String {
    let text = std::fs::read_to_string(keys.path().join("key_file.json")).expect("key_file.json");
    let json: serde_json::Value = serde_json::from_str(&text).expect("JSON");
    json["management"]["key"].as_str().expect("management key").to_string()
}

/// A running binary and where its APIs listen (`inference`, `management`, `metrics`).
struct Server {
    child: Child,
    addrs: HashMap<String, String>,
}

impl Server {
    fn start(config: &tempfile::NamedTempFile, args: &[&str]) -> Self {
        Self::start_with_env(config, args, &[])
    }

    fn start_with_env(config: &tempfile::NamedTempFile, args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_ferroserve"))
            .arg("--ts-config")
            .arg(config.path())
            .args(args)
            .envs(env.iter().copied())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start ferroserve");
        let mut lines = BufReader::new(child.stderr.take().expect("stderr")).lines().map_while(Result::ok);
        let mut addrs = HashMap::new();
        for line in lines.by_ref() {
            if let Some((api, addr)) = line.split_once(" API on http://") {
                let api = api.rsplit(' ').next().unwrap_or_default().to_string();
                addrs.insert(api, addr.trim().to_string());
            }
            if addrs.len() == 3 {
                break;
            }
        }
        assert_eq!(addrs.len(), 3, "the server says where its three APIs listen");
        // Keep reading stderr so that the child never blocks on a full pipe.
        std::thread::spawn(move || lines.for_each(drop));
        Self { child, addrs }
    }

    fn url(&self, api: &str, path: &str) -> String {
        format!("http://{}{path}", self.addrs[api])
    }

    fn signal(&self, name: &str) {
        let status = Command::new("kill").args([name, &self.child.id().to_string()]).status().expect("kill");
        assert!(status.success());
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

async fn send(
    client: &Client<HttpConnector, Full<Bytes>>,
    method: &str,
    url: &str,
    body: Bytes,
) -> Result<(StatusCode, serde_json::Value), String> {
    send_with_key(client, method, url, body, None).await
}

async fn send_with_key(
    client: &Client<HttpConnector, Full<Bytes>>,
    method: &str,
    url: &str,
    body: Bytes,
    key: Option<&str>,
) -> Result<(StatusCode, serde_json::Value), String> {
    let mut request = hyper::Request::builder().method(method).uri(url);
    if let Some(key) = key {
        request = request.header("authorization", format!("Bearer {key}"));
    }
    let request = request.body(Full::new(body)).map_err(|e| e.to_string())?;
    let response = client.request(request).await.map_err(|e| e.to_string())?;
    let status = response.status();
    let body = response.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
    Ok((status, serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null)))
}

async fn send_text(client: &Client<HttpConnector, Full<Bytes>>, url: &str) -> (StatusCode, String) {
    let request = hyper::Request::get(url).body(Full::new(Bytes::new())).expect("request");
    let response = client.request(request).await.expect("answer");
    let status = response.status();
    let body = response.into_body().collect().await.expect("body").to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

fn example() -> Bytes {
    Bytes::from(std::fs::read(Path::new(&models_dir()).join("signnet/example.json")).expect("example"))
}

#[test]
fn a_bad_value_stops_start_up_naming_the_key_and_line() {
    let config = config_file("inference_address=http://127.0.0.1:0\njob_queue_size=many\n");
    let out = Command::new(env!("CARGO_BIN_EXE_ferroserve"))
        .arg("--ts-config")
        .arg(config.path())
        .output()
        .expect("run ferroserve");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("`job_queue_size`") && stderr.contains("line 2"), "{stderr}");
}

#[test]
fn slo_rules_prints_the_rules_of_a_configs_objectives() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = Command::new(env!("CARGO_BIN_EXE_ferroserve"))
        .args(["slo-rules", "--config"])
        .arg(repo.join("deploy/kubernetes/base/config.properties"))
        .output()
        .expect("run ferroserve slo-rules");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let committed = std::fs::read_to_string(repo.join("deploy/prometheus/slo-rules.yml")).expect("committed rules");
    assert_eq!(String::from_utf8_lossy(&out.stdout), committed, "the committed rules are the command's output");

    let bad = config_file("models={\"m\": {\"1.0\": {\"slo\": {\"availability\": 100}}}}\n");
    let out = Command::new(env!("CARGO_BIN_EXE_ferroserve"))
        .args(["slo-rules", "--config"])
        .arg(bad.path())
        .output()
        .expect("run ferroserve slo-rules");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("slo.availability"), "{stderr}");
}

#[test]
fn runtimes_says_what_each_start_up_model_runs_on_and_names_those_it_cannot_find() {
    let keys = tempfile::tempdir().expect("temp dir");
    let config = ephemeral_config(&keys, "");
    let runtimes = |models: &str| {
        Command::new(env!("CARGO_BIN_EXE_ferroserve"))
            .arg("--ts-config")
            .arg(config.path())
            .args(["--models", models, "runtimes"])
            .env("TORCH_DEVICE", "cpu")
            .output()
            .expect("run ferroserve runtimes")
    };
    // Both formats on the CPU: ONNX; the TorchScript file alone: libtorch.
    let out = runtimes("signnet,ts=signnet/signnet.pt");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "signnet 1.0 onnx\nts 1.0 torchscript\n");

    let out = runtimes("signnet,absent");
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "signnet 1.0 onnx\n");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("absent") && stderr.contains("1 of the start-up models"), "{stderr}");
}

fn healthcheck(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_ferroserve"))
        .arg("healthcheck")
        .args(args)
        .env_remove("TS_CONFIG_FILE")
        .envs(env.iter().copied())
        .output()
        .expect("run ferroserve healthcheck")
}

#[test]
fn healthcheck_exits_0_while_the_server_answers_ping_and_1_once_it_is_gone() {
    let keys = tempfile::tempdir().expect("temp dir");
    let config = ephemeral_config(&keys, "");
    let mut server = Server::start(&config, &["--models", "signnet"]);
    let ping = server.url("inference", "/ping");
    let out = healthcheck(&["--url", &ping], &[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && stdout.contains("Healthy"), "{stdout} {}", String::from_utf8_lossy(&out.stderr));

    let out = healthcheck(&["--url", &server.url("inference", "/v2/models/ghost/ready")], &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("unhealthy") && stderr.contains("404"), "{stderr}");

    server.signal("-TERM");
    assert!(server.child.wait().expect("exit").success());
    let out = healthcheck(&["--url", &ping, "--timeout", "2s"], &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("cannot connect"), "{stderr}");
}

#[test]
fn healthcheck_asks_the_inference_address_of_ts_config_file_on_loopback() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    drop(listener);
    let config = config_file(&format!("inference_address=http://0.0.0.0:{port}\n"));
    let path = config.path().to_str().expect("utf-8 path");
    let out = healthcheck(&[], &[("TS_CONFIG_FILE", path)]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(&format!("127.0.0.1:{port}")), "{stderr}");

    let out = healthcheck(&["--url", "https://127.0.0.1:1/ping"], &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.code() == Some(1) && stderr.contains("no certificate to trust"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_that_fails_to_load_leaves_the_server_up() {
    let keys = tempfile::tempdir().expect("temp dir");
    let config = ephemeral_config(&keys, "");
    let server = Server::start(&config, &["--models", "ghost,signnet"]);
    let client = client();
    let url = server.url("management", "/models/ghost");
    let (status, _) = send(&client, "GET", &url, Bytes::new()).await.expect("answer");
    assert_eq!(status, StatusCode::UNAUTHORIZED, "the management API asks for its key by default");
    let key = management_key(&keys);
    let (status, body) = send_with_key(&client, "GET", &url, Bytes::new(), Some(&key)).await.expect("answer");
    assert_eq!(status, StatusCode::NOT_FOUND);
    let message = body["message"].as_str().expect("message");
    assert!(message.contains("failed to load") && message.contains("ghost"), "{message}");
    let (status, body) =
        send(&client, "POST", &server.url("inference", "/predictions/signnet"), example()).await.expect("answer");
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["predictions"][0]["label"], "hello");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_answers_every_accepted_request_then_exits_0() {
    let keys = tempfile::tempdir().expect("temp dir");
    let config = ephemeral_config(&keys, "load_models=signnet\n");
    let mut server = Server::start(&config, &[]);
    let client = client();
    let url = Arc::new(server.url("inference", "/predictions/signnet"));
    let mut requests = Vec::new();
    for _ in 0..200 {
        let (client, url) = (client.clone(), Arc::clone(&url));
        requests.push(tokio::spawn(async move { send(&client, "POST", &url, example()).await }));
    }
    // Signal while requests are in flight: once the server has run some of them.
    let metrics = server.url("metrics", "/metrics");
    for _ in 0..2_000 {
        let (_, body) = send_text(&client, &metrics).await;
        let run = body
            .lines()
            .find(|l| l.starts_with("ferroserve_inference_count_total"))
            .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok());
        if run.is_some_and(|n| n >= 20.0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    server.signal("-TERM");
    let mut answered = 0;
    for request in requests {
        // A request that reached the server after its listeners closed is refused or reset at the connection,
        // never given an error status.
        if let Ok((status, body)) = request.await.expect("task") {
            assert_eq!(status, StatusCode::OK, "an accepted request is answered: {body}");
            answered += 1;
        }
    }
    assert!(answered >= 20, "{answered}");
    let status = tokio::task::spawn_blocking(move || server.child.wait().expect("exit")).await.expect("wait");
    assert!(status.success(), "a clean exit after SIGTERM: {status:?}");
}

#[test]
fn a_second_signal_exits_at_once() {
    let keys = tempfile::tempdir().expect("temp dir");
    let config = ephemeral_config(&keys, "load_models=signnet\nshutdown_grace_period=600\n");
    let mut server = Server::start(&config, &[]);
    // A client in the middle of sending its request keeps the graceful shutdown waiting.
    let mut slow = std::net::TcpStream::connect(&server.addrs["inference"]).expect("connect");
    slow.write_all(b"POST /predictions/signnet HTTP/1.1\r\nhost: x\r\n").expect("partial request");
    std::thread::sleep(Duration::from_millis(100));
    server.signal("-TERM");
    std::thread::sleep(Duration::from_millis(200));
    assert!(server.child.try_wait().expect("poll").is_none(), "still draining");
    server.signal("-INT");
    let status = server.child.wait().expect("exit");
    assert_eq!(status.code(), Some(130));
}

/// The models the server loaded, by asking its management API.
async fn loaded(server: &Server, keys: &tempfile::TempDir) -> Vec<String> {
    let url = server.url("management", "/models");
    let (status, body) =
        send_with_key(&client(), "GET", &url, Bytes::new(), Some(&management_key(keys))).await.expect("answer");
    assert_eq!(status, StatusCode::OK);
    body["models"]
        .as_array()
        .expect("models")
        .iter()
        .map(|m| m["modelName"].as_str().unwrap_or_default().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn environment_beats_command_line_beats_file() {
    let keys = tempfile::tempdir().expect("temp dir");
    // The file asks for `fromfile` (signnet under another name); the command line for `fromcli`.
    let config = ephemeral_config(&keys, "load_models=fromfile=signnet\n");
    let file_only = Server::start(&config, &[]);
    assert_eq!(loaded(&file_only, &keys).await, vec!["fromfile"]);
    drop(file_only);
    let cli = Server::start(&config, &["--models", "fromcli=signnet"]);
    assert_eq!(loaded(&cli, &keys).await, vec!["fromcli"]);
    drop(cli);
    let env = [("TS_ENABLE_ENVVARS_CONFIG", "true"), ("TS_LOAD_MODELS", "fromenv=signnet")];
    let all = Server::start_with_env(&config, &["--models", "fromcli=signnet"], &env);
    assert_eq!(loaded(&all, &keys).await, vec!["fromenv"]);
    drop(all);
    // Without enable_envvars_config, TS_ variables are ignored.
    let ignored = Server::start_with_env(&config, &[], &[("TS_LOAD_MODELS", "fromenv=signnet")]);
    assert_eq!(loaded(&ignored, &keys).await, vec!["fromfile"]);
}

/// The shared libraries a process has mapped, by file name.
fn mapped_libraries(pid: u32) -> Vec<String> {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).expect("/proc/<pid>/maps");
    let mut names: Vec<String> = maps
        .lines()
        .filter_map(|line| line.split_whitespace().nth(5))
        .filter_map(|path| Path::new(path).file_name().map(|n| n.to_string_lossy().into_owned()))
        .filter(|name| name.contains(".so"))
        .collect();
    names.sort();
    names.dedup();
    names
}

/// libtorch's, CUDA's and the TorchScript plugin's libraries among `names`.
fn torch_or_cuda(names: &[String]) -> Vec<&String> {
    let heavy = ["libtorch", "libc10", "libcu", "libnv", "libnccl", "libferroserve_torch"];
    names.iter().filter(|name| heavy.iter().any(|prefix| name.starts_with(prefix))).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serving_only_onnx_maps_no_libtorch_and_no_cuda() {
    let keys = tempfile::tempdir().expect("temp dir");
    let config = ephemeral_config(&keys, "");
    let server = Server::start(&config, &["--models", "signnet"]);
    let (status, body) =
        send(&client(), "POST", &server.url("inference", "/predictions/signnet"), example()).await.expect("answer");
    assert_eq!((status, body["device"].as_str()), (StatusCode::OK, Some("cpu")), "{body}");
    let mapped = mapped_libraries(server.child.id());
    assert!(mapped.iter().any(|name| name.starts_with("libonnxruntime")), "ONNX Runtime serves it: {mapped:?}");
    assert_eq!(torch_or_cuda(&mapped), Vec::<&String>::new(), "nothing of libtorch or CUDA is loaded");
}

#[cfg(feature = "torch")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_torchscript_model_loads_libtorch_into_the_same_binary() {
    let keys = tempfile::tempdir().expect("temp dir");
    let config = ephemeral_config(&keys, "");
    let server = Server::start(&config, &["--models", "signnet,signnet_ts=signnet/signnet.pt"]);
    let client = client();
    for model in ["signnet", "signnet_ts"] {
        let url = server.url("inference", &format!("/predictions/{model}"));
        let (status, body) = send(&client, "POST", &url, example()).await.expect("answer");
        assert_eq!(status, StatusCode::OK, "{model}: {body}");
        assert_eq!(body["predictions"][0]["label"], "hello", "{model}: {body}");
    }
    let mapped = mapped_libraries(server.child.id());
    for wanted in ["libferroserve_torch.so", "libtorch_cpu.so", "libc10.so"] {
        assert!(mapped.iter().any(|name| name == wanted), "{wanted} is loaded: {mapped:?}");
    }
    if std::fs::read_dir("/proc/driver/nvidia/gpus").map_or(0, Iterator::count) == 0 {
        let cuda: Vec<_> =
            mapped.iter().filter(|n| n.starts_with("libtorch_cuda") || n.starts_with("libcublas")).collect();
        assert_eq!(cuda, Vec::<&String>::new(), "without a GPU, libtorch_cuda and cuBLAS stay out");
    }
}

#[cfg(feature = "torch")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_plugin_fails_the_torchscript_model_saying_where_it_was_looked_for() {
    let keys = tempfile::tempdir().expect("temp dir");
    let config = ephemeral_config(&keys, "disable_token_authorization=true\n");
    let missing = keys.path().join("libferroserve_torch.so");
    let server = Server::start_with_env(
        &config,
        &["--models", "signnet,signnet_ts=signnet/signnet.pt"],
        &[("FERROSERVE_TORCH_PLUGIN", missing.to_str().expect("UTF-8 path"))],
    );
    let client = client();
    let (status, body) =
        send(&client, "GET", &server.url("management", "/models/signnet_ts"), Bytes::new()).await.expect("answer");
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let message = body["message"].as_str().expect("message");
    let path = missing.display().to_string();
    assert!(message.contains("libferroserve_torch.so") && message.contains(&path), "{message}");
    assert!(message.contains("cargo build -p ferroserve-torch-plugin"), "{message}");
    let (status, _) =
        send(&client, "POST", &server.url("inference", "/predictions/signnet"), example()).await.expect("answer");
    assert_eq!(status, StatusCode::OK, "the ONNX model is served all the same");
}
