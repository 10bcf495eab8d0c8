//! Archives with their own Python handler, run in TorchServe's Python worker: the archive is made here with
//! `torch-model-archiver` from an eager model, a state dict, a custom handler and extra files
//! (`tests/python_handler/`), and served over real sockets. The tests need the venv `make deps` installs
//! (torch, torchserve, torch-model-archiver); without it each says so and is skipped.

mod support;

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::Command,
    sync::Arc,
    time::{Duration, Instant},
};

use ferroserve::{load, AppState, Config};
use ferroserve_engine::Registry;
use hyper::{Method, StatusCode};
use support::{metric, metrics_for, test_config, Reply, TestServer};

/// The venv's `bin` folder, when it has what the tests need; else `None`, with the reason printed.
fn venv() -> Option<PathBuf> {
    let home = std::env::var_os("HOME")?;
    let bin = PathBuf::from(home).join(".cache/ferroserve/venv-torch-2.13.0/bin");
    let has = |tool: &str| bin.join(tool).is_file();
    let ts = has("python")
        && Command::new(bin.join("python")).args(["-c", "import ts, torch"]).status().is_ok_and(|s| s.success());
    if ts && has("torch-model-archiver") {
        Some(bin)
    } else {
        eprintln!(
            "skipped: {} lacks torch, torchserve or torch-model-archiver (`make deps` installs them)",
            bin.display()
        );
        None
    }
}

/// The archive's sources.
fn sources() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python_handler")
}

/// Makes `signs.mar` in `store` with `torch-model-archiver`, from the sources and a state dict made now.
fn make_archive(bin: &Path, store: &Path) {
    let src = tempfile::tempdir().expect("temp dir");
    for file in ["model.py", "sign_handler.py", "feature_engineering.py", "make_model.py"] {
        std::fs::copy(sources().join(file), src.path().join(file)).expect("copy a source");
    }
    run(Command::new(bin.join("python")).arg(src.path().join("make_model.py")).arg(src.path()));
    let at = |file: &str| src.path().join(file).display().to_string();
    run(Command::new(bin.join("torch-model-archiver"))
        .args(["--model-name", "signs", "--version", "1.0", "--model-file", &at("model.py")])
        .args(["--serialized-file", &at("model.pt"), "--handler", &at("sign_handler.py")])
        .args(["--extra-files", &format!("{},{}", at("feature_engineering.py"), at("index_to_name.json"))])
        .arg("--export-path")
        .arg(store));
    assert!(store.join("signs.mar").is_file());
}

fn run(command: &mut Command) -> String {
    let out = command.output().expect("run a tool of the venv");
    assert!(out.status.success(), "{command:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A configuration serving the store, with the venv's Python and `signs`' settings (`models` JSON).
fn config(bin: &Path, store: &Path, settings: &str) -> Config {
    let mut config = test_config(1 << 20);
    config.model_store = store.to_path_buf();
    config.python_executable = bin.join("python");
    config.apply(vec![("models".into(), format!(r#"{{"signs": {{"1.0": {settings}}}}}"#), None)]).expect("models");
    config
}

/// A server with `signs` loaded from `store` as start-up loads it.
async fn server(bin: &Path, store: &Path, settings: &str) -> TestServer {
    let config = config(bin, store, settings);
    let metrics = metrics_for(&config);
    let (c, m) = (config.clone(), Arc::clone(&metrics));
    let model = tokio::task::spawn_blocking(move || load::load_model(&c, ("signs", "1.0"), "signs.mar", &m.engine))
        .await
        .expect("task")
        .expect("the archive loads");
    assert_eq!(model.runtime(), "python");
    let registry = Arc::new(Registry::new());
    assert!(registry.register(model).is_ok());
    TestServer::start_state(Arc::new(AppState::new(registry, config, metrics))).await
}

/// Landmarks `[30, 21, 3]` drawn from `seed` (a small LCG: the same on every run).
fn landmarks(seed: u64) -> serde_json::Value {
    let mut state = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
    let mut next = move || {
        state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        f64::from(u32::try_from(state >> 40).expect("24 bits")) / f64::from(1_u32 << 24)
    };
    let frames: Vec<Vec<Vec<f64>>> =
        (0..30).map(|_| (0..21).map(|_| (0..3).map(|_| next()).collect()).collect()).collect();
    serde_json::json!({ "landmarks": frames })
}

/// What the handler's own functions answer for `inputs`, called directly in Python (`reference.py`).
fn reference(bin: &Path, store: &Path, inputs: &[serde_json::Value]) -> Vec<serde_json::Value> {
    let unpacked = tempfile::tempdir().expect("temp dir");
    let mut zip = zip::ZipArchive::new(std::fs::File::open(store.join("signs.mar")).expect("mar")).expect("zip");
    zip.extract(unpacked.path()).expect("unzip");
    let file = unpacked.path().join("inputs.json");
    std::fs::write(&file, serde_json::to_vec(inputs).expect("JSON")).expect("write inputs");
    let out = run(Command::new(bin.join("python")).arg(sources().join("reference.py")).arg(unpacked.path()).arg(&file));
    let last = out.lines().last().expect("a line of answers");
    serde_json::from_str(last).expect("JSON answers")
}

async fn predict(server: &TestServer, body: &serde_json::Value) -> Reply {
    server.predict("signs", body.to_string()).await
}

/// Sends `body` while the worker sleeps for `sleep_s` on a request sent just before, so that what is sent
/// meanwhile queues up and is batched.
async fn behind_a_busy_worker(server: &Arc<TestServer>, bodies: Vec<serde_json::Value>, sleep_s: f64) -> Vec<Reply> {
    let busy = {
        let server = Arc::clone(server);
        let mut slow = landmarks(99);
        slow["sleep"] = sleep_s.into();
        tokio::spawn(async move { predict(&server, &slow).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let tasks: Vec<_> = bodies
        .into_iter()
        .map(|body| {
            let server = Arc::clone(server);
            tokio::spawn(async move { predict(&server, &body).await })
        })
        .collect();
    let mut replies = Vec::new();
    for task in tasks {
        replies.push(task.await.expect("task"));
    }
    assert_eq!(busy.await.expect("task").status, StatusCode::OK);
    replies
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_handler_answers_as_called_directly_and_sees_whole_batches() {
    let Some(bin) = venv() else { return };
    let store = tempfile::tempdir().expect("store");
    make_archive(&bin, store.path());
    let server =
        Arc::new(server(&bin, store.path(), r#"{"minWorkers": 1, "batchSize": 8, "maxBatchDelay": 20}"#).await);
    let inputs: Vec<_> = (0..6).map(landmarks).collect();
    let expected = reference(&bin, store.path(), &inputs);
    let replies = behind_a_busy_worker(&server, inputs, 2.0).await;
    let mut largest = 0;
    for (k, (reply, want)) in replies.iter().zip(&expected).enumerate() {
        assert_eq!(reply.status, StatusCode::OK, "input {k}: {}", reply.text);
        assert_eq!(reply.json["label"], want["label"], "input {k}");
        let (got, want) = (reply.json["probability"].as_f64().expect("p"), want["probability"].as_f64().expect("p"));
        assert!((got - want).abs() < 1e-5, "input {k}: {got} against {want} called directly");
        // The handler says the batch it saw, which is the batch ferroserve formed.
        let seen = reply.json["batch_size"].as_u64().expect("the handler's batch size");
        assert_eq!(usize::try_from(seen).expect("small"), reply.batch_size(), "input {k}");
        assert_eq!(reply.headers["x-handler-batch"], seen.to_string().as_str(), "the handler's own header");
        largest = largest.max(seen);
    }
    assert!(largest > 1, "requests queued behind a busy worker reach the handler together");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_raise_a_4xx_a_hang_and_a_death_fail_only_what_they_must() {
    let Some(bin) = venv() else { return };
    let store = tempfile::tempdir().expect("store");
    make_archive(&bin, store.path());
    let settings = r#"{"minWorkers": 1, "batchSize": 4, "maxBatchDelay": 20, "responseTimeout": 6}"#;
    let server = Arc::new(server(&bin, store.path(), settings).await);

    // The handler raises: its batch gets TorchServe's 503, the next request is served.
    let raised = predict(&server, &serde_json::json!({"raise": true})).await;
    assert_eq!(raised.status, StatusCode::SERVICE_UNAVAILABLE, "{}", raised.text);
    assert_eq!(
        raised.json,
        serde_json::json!({"code": 503, "type": "InternalServerException", "message": "Prediction failed"})
    );
    assert_eq!(predict(&server, &landmarks(1)).await.status, StatusCode::OK);

    // One request of a batch refused by the handler (`set_response_status`): it alone gets the 4xx.
    let mut refused = landmarks(2);
    refused["status"] = 422.into();
    let replies = behind_a_busy_worker(&server, vec![refused, landmarks(3), landmarks(4)], 1.5).await;
    assert_eq!(replies[0].status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(replies[0].json, serde_json::json!({"error": "refused with 422"}));
    for reply in &replies[1..] {
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    }
    assert_eq!(replies[0].batch_size(), 3, "the refused request was one of a batch of three");
    assert_eq!(restarts(&server).await, 0.0, "a raise and a 4xx restart nothing");

    // A hang past responseTimeout: 504, the worker is killed and restarted, and the model serves again.
    let hung = predict(&server, &serde_json::json!({"sleep": 600})).await;
    assert_eq!(hung.status, StatusCode::GATEWAY_TIMEOUT, "{}", hung.text);
    served_again(&server).await;
    // One restart each for the hang and the death (a request timed out while a worker restarts, which
    // `served_again` allows, could add one).
    let after_hang = restarts(&server).await;
    assert!(after_hang >= 1.0, "the hang is counted");

    // The worker dies mid-batch: that batch fails, the worker is restarted, the model serves again, and
    // describe names the new process.
    let before = described_pids(&server).await;
    let died = predict(&server, &serde_json::json!({"die": true})).await;
    assert_eq!(died.status, StatusCode::INTERNAL_SERVER_ERROR, "{}", died.text);
    assert!(died.text.contains("Worker died"), "{}", died.text);
    served_again(&server).await;
    assert!(restarts(&server).await > after_hang, "the death is counted");
    let after = described_pids(&server).await;
    assert_eq!(after.len(), 1, "{after:?}");
    assert!(before.is_disjoint(&after), "describe names the restarted process: {before:?}, then {after:?}");
    assert!(before.iter().all(|&pid| gone(pid)), "the dead worker is reaped");
    assert_eq!(after, python_children(std::process::id()).intersection(&after).copied().collect());
}

/// `ferroserve_worker_restarts_total` of `signs`.
async fn restarts(server: &TestServer) -> f64 {
    let text = server.scrape().await;
    metric(&text, "ferroserve_worker_restarts_total", &[("model_name", "signs")]).expect("the restart counter")
}

/// The `pid`s describe gives the workers of `signs`.
async fn described_pids(server: &TestServer) -> BTreeSet<u32> {
    let described = server.manage(Method::GET, "/models/signs").await;
    assert_eq!(described.status, StatusCode::OK, "{}", described.text);
    let workers = described.json[0]["workers"].as_array().expect("workers").clone();
    workers.iter().map(|w| u32::try_from(w["pid"].as_u64().expect("pid")).expect("a pid")).collect()
}

/// Waits until the model answers a good request again (its worker restarting meanwhile): every answer until
/// then is a timeout or a worker failure, never a hang.
async fn served_again(server: &TestServer) {
    let give_up = Instant::now() + Duration::from_secs(120);
    loop {
        let reply = predict(server, &landmarks(5)).await;
        if reply.status == StatusCode::OK {
            return;
        }
        assert!(
            [StatusCode::GATEWAY_TIMEOUT, StatusCode::INTERNAL_SERVER_ERROR].contains(&reply.status),
            "{}",
            reply.text
        );
        assert!(Instant::now() < give_up, "the worker was never restarted");
    }
}

/// The live Python workers whose parent is `parent`.
fn python_children(parent: u32) -> BTreeSet<u32> {
    let mut found = BTreeSet::new();
    for entry in std::fs::read_dir("/proc").expect("/proc").filter_map(Result::ok) {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else { continue };
        // After the command's name in parentheses: the state, then the parent's pid.
        let mut fields = stat.rsplit_once(')').map(|(_, rest)| rest.split_whitespace()).into_iter().flatten();
        let (state, ppid) = (fields.next(), fields.next().and_then(|p| p.parse::<u32>().ok()));
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let worker = String::from_utf8_lossy(&cmdline).contains("ts.model_service_worker");
        if worker && ppid == Some(parent) && state != Some("Z") {
            found.insert(pid);
        }
    }
    found
}

/// Whether process `pid` is gone (or a zombie nobody waits for).
fn gone(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_or(true, |stat| stat.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')))
}

fn wait_all_gone(pids: &BTreeSet<u32>) {
    let give_up = Instant::now() + Duration::from_secs(30);
    while !pids.iter().all(|&pid| gone(pid)) {
        assert!(Instant::now() < give_up, "Python workers left behind: {pids:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unregistering_and_scaling_down_leave_no_python_process() {
    let Some(bin) = venv() else { return };
    let store = tempfile::tempdir().expect("store");
    make_archive(&bin, store.path());
    let config = config(&bin, store.path(), "{}");
    let metrics = metrics_for(&config);
    let server = TestServer::start_state(Arc::new(AppState::new(Arc::new(Registry::new()), config, metrics))).await;
    let registered = server.manage(Method::POST, "/models?url=signs.mar&initial_workers=2&synchronous=true").await;
    assert_eq!(registered.status, StatusCode::OK, "{}", registered.text);
    // Describe names each worker's Python process (as TorchServe does), children of this process: the other
    // tests of this binary run Python workers too, so these are told apart by describe alone.
    let ours = described_pids(&server).await;
    assert_eq!(ours.len(), 2, "one Python process per worker: {ours:?}");
    assert!(!ours.contains(&std::process::id()), "{ours:?}");
    assert!(ours.is_subset(&python_children(std::process::id())), "{ours:?} are this process's Python workers");
    assert_eq!(predict(&server, &landmarks(1)).await.status, StatusCode::OK);

    let scaled = server.manage(Method::PUT, "/models/signs?min_worker=1&synchronous=true").await;
    assert_eq!(scaled.status, StatusCode::OK, "{}", scaled.text);
    // The retired worker's thread drops its process when it ends, just after the scale is answered.
    let give_up = Instant::now() + Duration::from_secs(30);
    while ours.iter().filter(|&&pid| !gone(pid)).count() != 1 {
        assert!(Instant::now() < give_up, "scaling down to one stops exactly one Python worker");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(predict(&server, &landmarks(2)).await.status, StatusCode::OK, "the other one serves on");
    let left = described_pids(&server).await;
    assert!(left.len() == 1 && left.is_subset(&ours) && left.iter().all(|&pid| !gone(pid)), "{left:?} of {ours:?}");

    let removed = server.manage(Method::DELETE, "/models/signs").await;
    assert_eq!(removed.status, StatusCode::OK, "{}", removed.text);
    tokio::task::spawn_blocking(move || wait_all_gone(&ours)).await.expect("task");
}

#[test]
fn sigterm_leaves_no_python_process() {
    let Some(bin) = venv() else { return };
    let store = tempfile::tempdir().expect("store");
    make_archive(&bin, store.path());
    let keys = tempfile::tempdir().expect("keys");
    let text = format!(
        "inference_address=http://127.0.0.1:0\nmanagement_address=http://127.0.0.1:0\n\
         metrics_address=http://127.0.0.1:0\ngrpc_inference_port=0\ngrpc_management_port=0\nmodel_store={}\nload_models=signs.mar\ndefault_workers_per_model=2\n\
         key_file={}\npython_executable={}\n",
        store.path().display(),
        keys.path().join("key_file.json").display(),
        bin.join("python").display()
    );
    let file = keys.path().join("config.properties");
    std::fs::write(&file, text).expect("config");
    let mut child = Command::new(env!("CARGO_BIN_EXE_ferroserve"))
        .arg("--ts-config")
        .arg(&file)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start ferroserve");
    let stderr = std::io::BufReader::new(child.stderr.take().expect("stderr"));
    // The models are loaded when the APIs listen.
    let mut lines = std::io::BufRead::lines(stderr).map_while(Result::ok);
    assert!(lines.by_ref().any(|line| line.contains("metrics API on")), "the server starts");
    std::thread::spawn(move || lines.for_each(drop));
    let workers = python_children(child.id());
    assert_eq!(workers.len(), 2, "{workers:?}");
    run(Command::new("kill").args(["-TERM", &child.id().to_string()]));
    assert!(child.wait().expect("exit").success(), "a clean exit");
    wait_all_gone(&workers);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_archives_requirements_are_installed_only_when_asked() {
    let Some(bin) = venv() else { return };
    let (store, src) = (tempfile::tempdir().expect("store"), tempfile::tempdir().expect("sources"));
    run(Command::new(bin.join("python")).arg(sources().join("make_wheel.py")).arg(src.path()));
    std::fs::write(src.path().join("requirements.txt"), "./tinydep-0.1-py3-none-any.whl\n").expect("requirements");
    std::fs::copy(sources().join("dep_handler.py"), src.path().join("dep_handler.py")).expect("copy the handler");
    let at = |file: &str| src.path().join(file).display().to_string();
    run(Command::new(bin.join("torch-model-archiver"))
        .args(["--model-name", "deps", "--version", "1.0", "--handler", &at("dep_handler.py")])
        .args(["--requirements-file", &at("requirements.txt"), "--extra-files", &at("tinydep-0.1-py3-none-any.whl")])
        .arg("--export-path")
        .arg(store.path()));
    // Off (the default): the handler cannot import its dependency, and the load says why.
    let (refused, ..) = load_deps(&bin, store.path(), false).await;
    let error = refused.err().expect("the handler cannot load without its requirements").to_string();
    assert!(error.contains("exited while it loaded the model"), "{error}");

    let (model, config, metrics) = load_deps(&bin, store.path(), true).await;
    let registry = Arc::new(Registry::new());
    assert!(registry.register(model.expect("loads with its requirements installed")).is_ok());
    let server = TestServer::start_state(Arc::new(AppState::new(registry, config, metrics))).await;
    let reply = server.predict("deps", "{}").await;
    assert_eq!((reply.status, reply.text.as_str()), (StatusCode::OK, "from tinydep"));
}

/// Loads `deps.mar` from `store`, installing its requirements when `install` is true.
async fn load_deps(
    bin: &Path,
    store: &Path,
    install: bool,
) -> (Result<ferroserve_engine::Model, load::LoadError>, Config, Arc<ferroserve::metrics::ServerMetrics>) {
    let mut config = config(bin, store, "{}");
    config.install_py_dep_per_model = install;
    let metrics = metrics_for(&config);
    let (c, m) = (config.clone(), Arc::clone(&metrics));
    let model = tokio::task::spawn_blocking(move || load::load_model(&c, ("deps", "1.0"), "deps.mar", &m.engine))
        .await
        .expect("task");
    (model, config, metrics)
}
