//! TorchServe model archives through the real server: a `.mar` made as `torch-model-archiver` makes it (a zip with
//! `MAR-INF/MANIFEST.json`, the serialized file and the extra files) and a no-archive folder are loaded at start-up
//! and registered, named and versioned by their manifest, and serve signnet's answers; broken archives are 400s
//! that say what is wrong.

mod support;

use std::{io::Write, path::Path, sync::Arc};

use ferroserve::{app, config::LoadModels, AppState};
use hyper::{Method, StatusCode};
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
    let mut zip = ZipWriter::new(std::fs::File::create(path).expect("archive"));
    let options = SimpleFileOptions::default().compression_method(CompressionMethod::Deflated);
    for file in files {
        zip.start_file(*file, options).expect("entry");
        zip.write_all(&std::fs::read(models_dir().join("signnet").join(file)).expect("bundled file")).expect("write");
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
    let mut config = test_config(1 << 20);
    config.model_store = store.to_path_buf();
    let settings = [("load_models", load_models), ("default_workers_per_model", "1"), ("intra_op_threads", "1")];
    config.apply(settings.iter().map(|(k, v)| ((*k).to_string(), (*v).to_string(), None)).collect()).expect("valid");
    let metrics = metrics_for(&config);
    let (registry, failed) = app::load_all(&config, &metrics.engine).expect("start-up");
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_archives_are_refused_with_the_reason() {
    let store = tempfile::tempdir().expect("store");
    let dir = store.path();
    std::fs::write(dir.join("notzip.mar"), b"PK but not really").expect("write");
    write_mar(&dir.join("nomanifest.mar"), "{\"model\": {}}", &["signnet.onnx"]);
    write_mar(&dir.join("missing.mar"), &manifest("m", "1.0", "absent.onnx"), &["signnet.onnx"]);
    write_mar(&dir.join("python.mar"), &manifest("m", "1.0", "index_to_name.json"), &["index_to_name.json"]);
    let eager = serde_json::json!({"model": {"modelName": "m", "modelFile": "model.py", "handler": "h.py"}});
    write_mar(&dir.join("eager.mar"), &eager.to_string(), &[]);
    let mut evil = ZipWriter::new(std::fs::File::create(dir.join("evil.mar")).expect("archive"));
    evil.start_file("../escape.onnx", SimpleFileOptions::default()).expect("entry");
    evil.finish().expect("zip");
    let server = server_over(dir, "").await;
    for (url, says) in [
        ("notzip.mar", "not a model archive"),
        ("nomanifest.mar", "modelName"),
        ("missing.mar", "has no absent.onnx"),
        ("python.mar", "is not .onnx, .pt or .pth"),
        ("eager.mar", "eager-mode"),
        ("evil.mar", "outside the archive"),
    ] {
        let reply = server.manage(Method::POST, &format!("/models?url={url}&synchronous=true")).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{url}: {}", reply.json);
        let message = reply.json["message"].as_str().expect("message");
        assert!(message.contains(says), "{url}: {message}");
    }
    assert!(!store.path().parent().expect("tmp").join("escape.onnx").exists());
    assert_eq!(server.manage(Method::POST, "/models?url=absent.mar").await.status, StatusCode::NOT_FOUND);
}

#[test]
fn load_models_keeps_given_names_apart_from_derived_ones() {
    let mut config = test_config(1 << 20);
    config.apply(vec![("load_models".into(), "a.mar,b=b.mar".into(), None)]).expect("valid");
    let expected = vec![(None, "a.mar".to_string()), (Some("b".to_string()), "b.mar".to_string())];
    assert_eq!(config.load_models, LoadModels::List(expected));
}
