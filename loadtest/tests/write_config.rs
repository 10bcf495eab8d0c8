//! `--write-config` on a multi-line config.properties: only batchSize and maxBatchDelay of the intended
//! model change; every other line, key, comment and continuation stays as it was.

use std::time::Duration;

use ferroserve_loadtest::tune::{management::BatchSetting, properties::write_batch_setting};

/// A `config.properties` with a multi-line `models` value: two models, one of them with two versions.
const CONFIG: &str = include_str!("fixtures/multiline.properties");

const SETTING: BatchSetting = BatchSetting { batch_size: 8, max_batch_delay: Duration::from_micros(1500) };

/// The lines that differ, as (before, after) pairs; both texts must have the same number of lines.
fn changed_lines<'a>(before: &'a str, after: &'a str) -> Vec<(&'a str, &'a str)> {
    before.lines().zip(after.lines()).filter(|(a, b)| a != b).collect()
}

fn models_json(text: &str) -> serde_json::Value {
    let start = text.find("models=").expect("models") + "models=".len();
    let end = text[start..].find("\n}\n").expect("end") + start + 2;
    serde_json::from_str(&text[start..end].replace("\\\n", "")).expect("valid JSON")
}

#[test]
fn every_version_of_the_model_changes_and_nothing_else() {
    let out = write_batch_setting(CONFIG, "signnet", None, &SETTING).expect("edit");
    assert_eq!(out.lines().count(), CONFIG.lines().count() + 2, "two keys added to version 2.0");
    let json = models_json(&out);
    assert_eq!(json["signnet"]["1.0"]["batchSize"], 8);
    assert_eq!(json["signnet"]["1.0"]["maxBatchDelay"], 1.5);
    assert_eq!(json["signnet"]["1.0"]["defaultVersion"], true);
    assert_eq!(json["signnet"]["2.0"]["batchSize"], 8);
    assert_eq!(json["signnet"]["2.0"]["minWorkers"], 1);
    assert_eq!(json["other"], models_json(CONFIG)["other"], "another model is untouched");
    assert!(out.contains(
        "    \"2.0\": {\\\n      \"batchSize\": 8,\\\n      \"maxBatchDelay\": 1.5,\\\n      \"minWorkers\": 1\\\n"
    ));
    assert!(out.starts_with("# ferroserve's configuration\n") && out.ends_with("}\njob_queue_size=100\n"));
}

#[test]
fn one_version_changes_in_place() {
    let out = write_batch_setting(CONFIG, "signnet", Some("1.0"), &SETTING).expect("edit");
    assert_eq!(
        changed_lines(CONFIG, &out),
        vec![
            ("      \"batchSize\": 16,\\", "      \"batchSize\": 8,\\"),
            ("      \"maxBatchDelay\": 2\\", "      \"maxBatchDelay\": 1.5\\"),
        ]
    );
}

#[test]
fn the_repository_example_config_can_be_rewritten() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/config.properties");
    let Ok(text) = std::fs::read_to_string(&path) else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let copy = dir.path().join("config.properties");
    std::fs::write(&copy, &text).expect("copy");
    let out =
        write_batch_setting(&std::fs::read_to_string(&copy).expect("read"), "signnet", None, &SETTING).expect("edit");
    for (before, after) in changed_lines(&text, &out) {
        assert!(before.contains("batchSize") || before.contains("maxBatchDelay"), "{before} -> {after}");
    }
    assert_eq!(out.lines().count(), text.lines().count());
}
