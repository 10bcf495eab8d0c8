//! The `ferroserve` binary itself: it starts from a config.properties, serves the bundled model, stops cleanly on
//! SIGTERM, and refuses a bad configuration naming the key.

use std::{
    io::{BufRead, BufReader, Write},
    path::Path,
    process::{Command, Stdio},
};

fn models_dir() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../models").display().to_string()
}

fn config_file(text: &str) -> tempfile::NamedTempFile {
    let mut file = tempfile::NamedTempFile::new().expect("temp file");
    file.write_all(text.as_bytes()).expect("write config");
    file
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
fn a_missing_model_stops_start_up_naming_it() {
    let config = config_file(&format!("inference_address=http://127.0.0.1:0\nmodel_store={}\n", models_dir()));
    let out = Command::new(env!("CARGO_BIN_EXE_ferroserve"))
        .args(["--ts-config"])
        .arg(config.path())
        .args(["--models", "ghost"])
        .output()
        .expect("run ferroserve");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("ghost"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_the_bundled_model_and_stops_on_sigterm() {
    let config = config_file(&format!(
        "inference_address=http://127.0.0.1:0\nmanagement_address=http://127.0.0.1:0\nmetrics_address=http://127.0.0.1:0\nmodel_store={}\nload_models=signnet\ndefault_workers_per_model=1\n",
        models_dir()
    ));
    let mut child = Command::new(env!("CARGO_BIN_EXE_ferroserve"))
        .arg("--ts-config")
        .arg(config.path())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start ferroserve");
    let mut lines = BufReader::new(child.stderr.take().expect("stderr")).lines();
    let addr = lines
        .by_ref()
        .map_while(Result::ok)
        .find_map(|line| line.split("inference API on http://").nth(1).map(str::to_string))
        .expect("the server says where it listens");
    let example = std::fs::read(Path::new(&models_dir()).join("signnet/example.json")).expect("example");
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http();
    let request = hyper::Request::post(format!("http://{addr}/predictions/signnet"))
        .body(http_body_util::Full::new(bytes::Bytes::from(example)))
        .expect("request");
    let response = client.request(request).await.expect("answer");
    assert_eq!(response.status(), hyper::StatusCode::OK);
    let body = http_body_util::BodyExt::collect(response.into_body()).await.expect("body").to_bytes();
    let json: serde_json::Value = serde_json::from_slice(&body).expect("JSON");
    assert_eq!(json["predictions"][0]["label"], "hello");

    let status = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().expect("kill");
    assert!(status.success());
    assert!(child.wait().expect("exit").success(), "a clean exit after SIGTERM");
}
