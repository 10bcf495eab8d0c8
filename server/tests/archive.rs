//! TorchServe model archives through the real server: a `.mar` made as `torch-model-archiver` makes it (a zip with
//! `MAR-INF/MANIFEST.json`, the serialized file and the extra files) and a no-archive folder are loaded at start-up
//! and registered, named and versioned by their manifest, and serve signnet's answers; broken archives are 400s
//! that say what is wrong.

mod support;

use std::{io::Write, path::Path, sync::Arc};

use ferroserve::{config::LoadModels, load, AppState};
use hyper::{Method, StatusCode};
use serde_json::json;
use support::{metrics_for, models_dir, test_config, TestServer};
use zip::{write::SimpleFileOptions, CompressionMethod, ZipWriter};

/// The manifest `torch-model-archiver 0.12` writes, for `name` at `version` serialized as `file`.
fn manifest(name: &str, version: &str, file: &str) -> String {
    serde_json::json!({
        "createdOn": "29/11/2026 08:36:41",
        "runtime": "python",
        "model": {"modelName": name, "serializedFile": file, "handler": "base_handler", "modelVersion": version},
        "archiverVersion": "0.12.0"
    })
    .to_string()
}

/// Writes a `.mar` (deflated, as the archiver does) holding `manifest` and these files of the bundled signnet.
fn write_mar(path: &Path, manifest: &str, files: &[&str]) {
    write_mar_with(path, manifest, files, &[]);
}

/// [`write_mar`] with `extra` entries (name, content) too.
fn write_mar_with(path: &Path, manifest: &str, files: &[&str], extra: &[(&str, &str)]) {
    let mut zip = ZipWriter::new(std::fs::File::create(path).expect("archive"));
    let options = SimpleFileOptions::default().compression_method(CompressionMethod::Deflated);
    for file in files {
        zip.start_file(*file, options).expect("entry");
        zip.write_all(&std::fs::read(models_dir().join("signnet").join(file)).expect("bundled file")).expect("write");
    }
    for (name, content) in extra {
        zip.start_file(*name, options).expect("entry");
        zip.write_all(content.as_bytes()).expect("write");
    }
    zip.start_file("MAR-INF/MANIFEST.json", options).expect("entry");
    zip.write_all(manifest.as_bytes()).expect("write");
    zip.finish().expect("zip");
}

/// A store holding signnet as `signnet.mar` (ONNX), named `sign-mar` at version 2.0 by its manifest.
fn store_with_mar() -> tempfile::TempDir {
    let store = tempfile::tempdir().expect("store");
    let manifest = manifest("sign-mar", "2.0", "signnet.onnx");
    write_mar(&store.path().join("signnet.mar"), &manifest, &["signnet.onnx", "index_to_name.json"]);
    store
}

async fn server_over(store: &Path, load_models: &str) -> TestServer {
    server_with(store, load_models, "{}").await
}

async fn server_with(store: &Path, load_models: &str, models: &str) -> TestServer {
    let mut config = test_config(1 << 20);
    config.model_store = store.to_path_buf();
    let settings = [
        ("load_models", load_models),
        ("default_workers_per_model", "1"),
        ("intra_op_threads", "1"),
        ("models", models),
    ];
    config.apply(settings.iter().map(|(k, v)| ((*k).to_string(), (*v).to_string(), None)).collect()).expect("valid");
    let metrics = metrics_for(&config);
    let (registry, failed) = load::load_all(&config, &metrics.engine).expect("start-up");
    assert!(failed.is_empty(), "{failed:?}");
    TestServer::start_state(Arc::new(AppState::new(registry, config, metrics))).await
}

async fn assert_serves_signnet(server: &TestServer, model: &str) {
    let example = std::fs::read(models_dir().join("signnet/example.json")).expect("example");
    let answer = server.predict(model, example).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.json);
    assert_eq!(answer.json["predictions"][0]["label"], "hello", "{}", answer.json);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mar_loaded_at_start_up_is_named_and_versioned_by_its_manifest() {
    let store = store_with_mar();
    for load_models in ["signnet.mar", "all"] {
        let server = server_over(store.path(), load_models).await;
        assert_serves_signnet(&server, "sign-mar").await;
        let described = server.manage(Method::GET, "/models/sign-mar").await;
        let d = &described.json[0];
        assert_eq!((d["modelVersion"].as_str(), d["modelUrl"].as_str()), (Some("2.0"), Some("signnet.mar")), "{d}");
        assert_eq!(server.predict("signnet", "{}").await.status, StatusCode::NOT_FOUND, "named by the manifest");
    }
    // A name given in load_models wins over the manifest's.
    let server = server_over(store.path(), "mine=signnet.mar").await;
    assert_serves_signnet(&server, "mine").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn archives_register_through_the_management_api() {
    let store = store_with_mar();
    let folder = store.path().join("noarch");
    std::fs::create_dir_all(folder.join("MAR-INF")).expect("no-archive folder");
    for file in ["signnet.onnx", "index_to_name.json"] {
        std::fs::copy(models_dir().join("signnet").join(file), folder.join(file)).expect("copy");
    }
    std::fs::write(folder.join("MAR-INF/MANIFEST.json"), manifest("sign-folder", "3.0", "signnet.onnx"))
        .expect("write");
    let server = server_over(store.path(), "").await;

    let created = server.manage(Method::POST, "/models?url=signnet.mar&initial_workers=1&synchronous=true").await;
    assert_eq!(created.status, StatusCode::OK, "{}", created.json);
    assert!(created.json["status"].as_str().expect("status").contains("\"sign-mar\" Version: 2.0"), "{}", created.json);
    assert_serves_signnet(&server, "sign-mar").await;
    let renamed = server.manage(Method::POST, "/models?url=signnet.mar&model_name=other&synchronous=true").await;
    assert_eq!(renamed.status, StatusCode::OK, "{}", renamed.json);
    assert_serves_signnet(&server, "other").await;

    let from_folder = server.manage(Method::POST, "/models?url=noarch&synchronous=true").await;
    assert_eq!(from_folder.status, StatusCode::OK, "{}", from_folder.json);
    assert_serves_signnet(&server, "sign-folder").await;
    assert_eq!(server.manage(Method::GET, "/models/sign-folder").await.json[0]["modelVersion"], "3.0");

    let unpacked =
        server.state.registry.get("sign-mar", None).expect("registered").archive_folder().map(Path::to_path_buf);
    let unpacked = unpacked.expect("a .mar is served from where it was unpacked");
    assert!(unpacked.join("signnet.onnx").is_file());
    assert_eq!(server.manage(Method::DELETE, "/models/sign-mar").await.status, StatusCode::OK);
    assert_eq!(server.predict("sign-mar", "{}").await.status, StatusCode::NOT_FOUND);
    assert!(!unpacked.exists(), "unregistering removes the unpacked archive");
    let folder_model = server.state.registry.get("sign-folder", None).expect("registered");
    assert_eq!(folder_model.archive_folder(), None, "a no-archive folder is read in place");
    assert_serves_signnet(&server, "other").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tgz_archive_is_served_like_a_mar() {
    // As `torch-model-archiver --archive-format tgz` writes it: the files under a folder named after the model.
    let store = tempfile::tempdir().expect("store");
    let gz = flate2::write::GzEncoder::new(
        std::fs::File::create(store.path().join("signtgz.tar.gz")).expect("archive"),
        flate2::Compression::fast(),
    );
    let mut tar = tar::Builder::new(gz);
    let manifest = manifest("signtgz", "1.0", "signnet.onnx");
    let bundled = |file: &str| std::fs::read(models_dir().join("signnet").join(file)).expect("bundled file");
    let entries = [
        ("signtgz/signnet.onnx", bundled("signnet.onnx")),
        ("signtgz/index_to_name.json", bundled("index_to_name.json")),
        ("signtgz/MAR-INF/MANIFEST.json", manifest.into_bytes()),
    ];
    for (name, data) in entries {
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        tar.append_data(&mut header, name, data.as_slice()).expect("entry");
    }
    tar.into_inner().expect("tar").finish().expect("gzip");
    let server = server_over(store.path(), "all").await;
    assert_serves_signnet(&server, "signtgz").await;
    assert_eq!(server.manage(Method::GET, "/models/signtgz").await.json[0]["modelUrl"], "signtgz.tar.gz");
}

#[cfg(feature = "torch")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_torchscript_archive_carries_its_shape_config() {
    let store = tempfile::tempdir().expect("store");
    let manifest = manifest("sign-ts", "1.0", "signnet.pt");
    let files = ["signnet.pt", "signnet.pt.json", "index_to_name.json"];
    write_mar(&store.path().join("sign-ts.mar"), &manifest, &files);
    let server = server_over(store.path(), "sign-ts.mar").await;
    assert_serves_signnet(&server, "sign-ts").await;
    assert_eq!(server.manage(Method::GET, "/models/sign-ts").await.json[0]["runtime"], "torchscript");
}

#[cfg(feature = "torch")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_torchscript_archive_without_its_json_answers_the_reference() {
    // As `torch-model-archiver --serialized-file signnet.pt --extra-files index_to_name.json` makes it.
    let store = tempfile::tempdir().expect("store");
    let files = ["signnet.pt", "index_to_name.json"];
    write_mar(&store.path().join("sign-ts.mar"), &manifest("sign-ts", "1.0", "signnet.pt"), &files);
    let server = server_over(store.path(), "sign-ts.mar").await;
    support::assert_answers_signnet_reference(&server, "sign-ts").await;
    assert_serves_signnet(&server, "sign-ts").await;
    let metadata = server.send(Method::GET, "/v2/models/sign-ts", "").await;
    assert_eq!(
        (&metadata.json["inputs"][0]["shape"], &metadata.json["outputs"][0]["shape"]),
        (&json!([-1]), &json!([-1]))
    );
}

#[cfg(feature = "torch")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_config_yaml_declares_the_tensors_of_a_torchscript_archive() {
    let store = tempfile::tempdir().expect("store");
    let with_config = |name: &str| {
        let mut manifest: serde_json::Value = serde_json::from_str(&manifest(name, "1.0", "signnet.pt")).expect("JSON");
        manifest["model"]["configFile"] = "model-config.yaml".into();
        manifest.to_string()
    };
    let yaml =
        "batchSize: 4\nferroserve:\n  input: {name: landmarks, shape: [-1, 21, 3]}\n  output: {name: probabilities}\n";
    let files = ["signnet.pt", "index_to_name.json"];
    write_mar_with(&store.path().join("declared.mar"), &with_config("sign-ts"), &files, &[("model-config.yaml", yaml)]);
    let bad = "ferroserve:\n  input: {shape: [30, -3]}\n";
    write_mar_with(&store.path().join("bad.mar"), &with_config("bad"), &files, &[("model-config.yaml", bad)]);
    let server = server_over(store.path(), "declared.mar").await;
    let metadata = server.send(Method::GET, "/v2/models/sign-ts", "").await;
    assert_eq!(
        (&metadata.json["inputs"], &metadata.json["outputs"]),
        (
            &json!([{ "name": "landmarks", "datatype": "FP32", "shape": [-1, -1, 21, 3] }]),
            &json!([{ "name": "probabilities", "datatype": "FP32", "shape": [-1] }])
        ),
        "the frames are left to the requests, and so the output to the forward"
    );
    support::assert_answers_signnet_reference(&server, "sign-ts").await;
    let refused = server.predict("sign-ts", json!({ "landmarks": [vec![[0.5, 0.5, 0.0]; 20]] }).to_string()).await;
    assert_eq!(refused.status, StatusCode::BAD_REQUEST);
    assert!(refused.json["message"].as_str().expect("message").contains("has 20 points, the model takes 21"));
    assert_refused(&server, &[("bad.mar", "ferroserve: input.shape must be a list of sizes")]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_archives_are_refused_with_the_reason() {
    let store = tempfile::tempdir().expect("store");
    let dir = store.path();
    std::fs::write(dir.join("notzip.mar"), b"PK but not really").expect("write");
    write_mar(&dir.join("nomanifest.mar"), "{\"model\": {}}", &["signnet.onnx"]);
    write_mar(&dir.join("missing.mar"), &manifest("m", "1.0", "absent.onnx"), &["signnet.onnx"]);
    // Without a handler (with one, a model that is not ONNX or TorchScript goes to the Python worker).
    let json_model = serde_json::json!({"model": {"modelName": "m", "serializedFile": "index_to_name.json"}});
    write_mar(&dir.join("python.mar"), &json_model.to_string(), &["index_to_name.json"]);
    // No handler: an archive with one runs in the Python worker (tests/python_handler.rs).
    let eager = serde_json::json!({"model": {"modelName": "m", "modelFile": "model.py"}});
    write_mar(&dir.join("eager.mar"), &eager.to_string(), &[]);
    let mut evil = ZipWriter::new(std::fs::File::create(dir.join("evil.mar")).expect("archive"));
    evil.start_file("../escape.onnx", SimpleFileOptions::default()).expect("entry");
    evil.finish().expect("zip");
    let server = server_over(dir, "").await;
    assert_refused(
        &server,
        &[
            ("notzip.mar", "not a model archive"),
            ("nomanifest.mar", "modelName"),
            ("missing.mar", "has no absent.onnx"),
            ("python.mar", "is not .onnx, .pt or .pth"),
            ("eager.mar", "eager-mode"),
            ("evil.mar", "outside the archive"),
        ],
    )
    .await;
    assert!(!store.path().parent().expect("tmp").join("escape.onnx").exists());
    assert_eq!(server.manage(Method::POST, "/models?url=absent.mar").await.status, StatusCode::NOT_FOUND);
}

/// The manifest of an archive made with `torch-model-archiver -c model-config.yaml`.
fn manifest_with_config(name: &str) -> String {
    let mut manifest: serde_json::Value = serde_json::from_str(&manifest(name, "1.0", "signnet.onnx")).expect("JSON");
    manifest["model"]["configFile"] = "model-config.yaml".into();
    manifest.to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_archives_model_config_yaml_sets_its_batching_over_models() {
    let store = tempfile::tempdir().expect("store");
    let yaml =
        "minWorkers: 1\nmaxWorkers: 3\nbatchSize: 4\nmaxBatchDelay: 7\nresponseTimeout: 9\nhandler:\n  topk: 3\n";
    let files = ["signnet.onnx", "index_to_name.json"];
    write_mar_with(
        &store.path().join("y.mar"),
        &manifest_with_config("sign-yaml"),
        &files,
        &[("model-config.yaml", yaml)],
    );
    // models sets batchSize too, and jobQueueSize: the archive's YAML wins where both speak, as in TorchServe.
    let models = r#"{"sign-yaml": {"1.0": {"batchSize": 16, "jobQueueSize": 5}}}"#;
    let server = server_with(store.path(), "y.mar", models).await;
    assert_serves_signnet(&server, "sign-yaml").await;
    let d = &server.manage(Method::GET, "/models/sign-yaml").await.json[0];
    assert_eq!(
        (d["batchSize"].as_u64(), d["maxBatchDelay"].as_f64(), d["minWorkers"].as_u64(), d["responseTimeout"].as_u64()),
        (Some(4), Some(7.0), Some(1), Some(9)),
        "{d}"
    );
    assert_eq!(d["jobQueueStatus"]["remainingCapacity"], 5, "{d}");
    assert_eq!((d["maxWorkers"].as_u64(), d["loadedAtStartup"].as_bool()), (Some(3), Some(true)), "{d}");
    // The register call's parameters win over the YAML; what it does not give comes from the YAML, as at
    // start-up (one load plan for both).
    let url = "/models?url=y.mar&model_name=other&batch_size=2&synchronous=true";
    assert_eq!(server.manage(Method::POST, url).await.status, StatusCode::OK);
    let d = &server.manage(Method::GET, "/models/other").await.json[0];
    assert_eq!((d["batchSize"].as_u64(), d["maxBatchDelay"].as_f64()), (Some(2), Some(7.0)), "{d}");
    assert_eq!(
        (d["minWorkers"].as_u64(), d["maxWorkers"].as_u64(), d["responseTimeout"].as_u64()),
        (Some(1), Some(3), Some(9)),
        "{d}"
    );
    assert_eq!((d["modelUrl"].as_str(), d["loadedAtStartup"].as_bool()), (Some("y.mar"), Some(false)), "{d}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_model_config_yaml_is_refused_with_the_reason() {
    let store = tempfile::tempdir().expect("store");
    let files = ["signnet.onnx"];
    for (archive, yaml) in
        [("zero.mar", "batchSize: 0\n"), ("words.mar", "batchSize: many\n"), ("list.mar", "- 1\n- 2\n")]
    {
        write_mar_with(&store.path().join(archive), &manifest_with_config("m"), &files, &[("model-config.yaml", yaml)]);
    }
    write_mar(&store.path().join("absent.mar"), &manifest_with_config("m"), &files);
    let server = server_over(store.path(), "").await;
    assert_refused(
        &server,
        &[
            ("zero.mar", "batchSize must be at least 1"),
            ("words.mar", "model-config.yaml"),
            ("list.mar", "model-config.yaml"),
            ("absent.mar", "has no model-config.yaml"),
        ],
    )
    .await;
}

/// Registering each archive is a 400 whose message says what is wrong.
async fn assert_refused(server: &TestServer, cases: &[(&str, &str)]) {
    for (archive, says) in cases {
        let reply = server.manage(Method::POST, &format!("/models?url={archive}&synchronous=true")).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{archive}: {}", reply.json);
        let message = reply.json["message"].as_str().expect("message");
        assert!(message.contains(says), "{archive}: {message}");
    }
}

#[test]
fn load_models_keeps_given_names_apart_from_derived_ones() {
    let mut config = test_config(1 << 20);
    config.apply(vec![("load_models".into(), "a.mar,b=b.mar".into(), None)]).expect("valid");
    let expected = vec![(None, "a.mar".to_string()), (Some("b".to_string()), "b.mar".to_string())];
    assert_eq!(config.load_models, LoadModels::List(expected));
}

/// The start-up path the README gives for a canary: signnet's folder as 1.0 (marked the default) and a
/// no-archive folder of the same files as 2.0, the canary of `canaryPercent`; each key reaches the version the
/// split gives it, and both answer signnet's answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_version_from_a_no_archive_folder_is_the_configured_canary() {
    let store = tempfile::tempdir().expect("store");
    for folder in ["signnet", "signnet-v2"] {
        std::fs::create_dir_all(store.path().join(folder).join("MAR-INF")).expect("folder");
        for file in ["signnet.onnx", "index_to_name.json"] {
            std::fs::copy(models_dir().join("signnet").join(file), store.path().join(folder).join(file)).expect("copy");
        }
    }
    std::fs::remove_dir(store.path().join("signnet/MAR-INF")).expect("a plain folder");
    std::fs::write(store.path().join("signnet-v2/MAR-INF/MANIFEST.json"), manifest("signnet", "2.0", "signnet.onnx"))
        .expect("write");
    let models = r#"{"signnet": {"1.0": {"defaultVersion": true}, "2.0": {"canaryPercent": 50}}}"#;
    let server = server_with(store.path(), "signnet,signnet-v2", models).await;
    let example = std::fs::read(models_dir().join("signnet/example.json")).expect("example");
    let mut seen = std::collections::BTreeSet::new();
    for i in 0..40 {
        let key = format!("user-{i}");
        let reply =
            server.send_with_header(Method::POST, "/predictions/signnet", example.clone(), "x-canary-key", &key).await;
        assert_eq!((reply.status, &reply.json["predictions"][0]["label"]), (StatusCode::OK, &json!("hello")));
        let version = reply.headers["x-model-version"].to_str().expect("ASCII").to_string();
        let canary = ferroserve_engine::canary::bucket("signnet", key.as_bytes()) < 5000;
        assert_eq!(version, if canary { "2.0" } else { "1.0" }, "{key}");
        seen.insert(version);
    }
    assert_eq!(seen.len(), 2, "both versions answered");
}
