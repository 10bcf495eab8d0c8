//! `ferroserve-loadtest tune --write-config` writes its winner into a `config.properties`: what it writes must
//! read back through the server's own parser as the setting it meant, with every other key as it was.

use std::{path::Path, time::Duration};

use ferroserve::{batching_config::MaxBatchDelay, Config};
use ferroserve_loadtest::tune::{management::BatchSetting, properties::write_batch_setting};

/// A configuration a user might have: a multi-line `models` value with two models, one of them with two
/// versions, and keys on either side of it (the fixture of the load generator's own tests).
const CONFIG: &str = include_str!("../../loadtest/tests/fixtures/multiline.properties");

fn parse(text: &str) -> Config {
    Config::from_reader(text.as_bytes(), Path::new("config.properties")).expect("the server reads it")
}

#[test]
fn a_written_setting_reads_back_through_the_servers_parser() {
    let setting = BatchSetting { batch_size: 8, max_batch_delay: Duration::from_micros(1500) };
    let before = parse(CONFIG);
    let after = parse(&write_batch_setting(CONFIG, "signnet", None, &setting).expect("written"));
    for version in ["1.0", "2.0"] {
        let m = after.model_config("signnet", version).expect("the version is still there");
        assert_eq!(m.batch_size, Some(8), "version {version}");
        assert_eq!(m.max_batch_delay, Some(MaxBatchDelay::Ms(1.5)), "version {version}");
    }
    let first = after.model_config("signnet", "1.0").expect("1.0");
    assert_eq!(first.default_version, Some(true), "other keys of the entry are kept");
    assert_eq!(after.model_config("signnet", "2.0").and_then(|m| m.min_workers), Some(1));
    assert_eq!(after.models["other"], before.models["other"], "another model is untouched");
    let without_models = |c: &Config| Config { models: Default::default(), ..c.clone() };
    assert_eq!(without_models(&after), without_models(&before), "every other key reads as before");
}

#[test]
fn a_setting_for_one_version_into_a_file_without_models_reads_back() {
    let setting = BatchSetting { batch_size: 32, max_batch_delay: Duration::from_millis(5) };
    let text = "load_models=signnet\njob_queue_size=10";
    let after = parse(&write_batch_setting(text, "signnet", Some("3.0"), &setting).expect("written"));
    let m = after.model_config("signnet", "3.0").expect("the version is added");
    assert_eq!((m.batch_size, m.max_batch_delay), (Some(32), Some(MaxBatchDelay::Ms(5.0))));
    assert_eq!(after.job_queue_size, 10, "the last line before the added key still parses");
}
