//! The tuner against a fake server whose latency depends on its batch setting: it must pick the setting
//! known to be best, restore the server's setting, and write the winner into a config.properties.

mod support;

use std::time::Duration;

use ferroserve_loadtest::cli::Command;
use support::{FakeServer, Profile};

/// Batch 1: 100 req/s at 1 ms; batch 4: 400 req/s at 4 ms; batch 16: fast but always 120 ms, over the SLO.
/// The SLO (p99 50 ms) is far from every latency that holds, so that timer jitter on a busy machine cannot
/// make the windows of a sustainable rate disagree.
fn profile(batch_size: u32) -> Profile {
    match batch_size {
        1 => Profile { capacity: Some(100.0), latency: Duration::from_millis(1) },
        4 => Profile { capacity: Some(400.0), latency: Duration::from_millis(4) },
        _ => Profile { capacity: Some(1000.0), latency: Duration::from_millis(120) },
    }
}

const CONFIG: &str = "\
# tuned by the test
inference_address=http://127.0.0.1:8080
models={\\
  \"signnet\": {\\
    \"1.0\": {\\
      \"batchSize\": 16,\\
      \"maxBatchDelay\": 2,\\
      \"minWorkers\": 2\\
    }\\
  }\\
}
job_queue_size=100
";

#[tokio::test(flavor = "current_thread")]
async fn the_tuner_picks_the_known_best_setting() {
    let server = FakeServer::start(profile).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("config.properties");
    std::fs::write(&config, CONFIG).expect("write config");
    let (plot, json) = (dir.path().join("tune.svg"), dir.path().join("tune.json"));
    let key_file = dir.path().join("key_file.json");
    let keys = format!(r#"{{"management": {{"key": "{}"}}, "inference": {{"key": "i"}}}}"#, support::MANAGEMENT_KEY);
    std::fs::write(&key_file, keys).expect("write key file");
    let url = server.url();
    let cli = support::cli(&[
        "tune",
        "--target",
        &url,
        "--management-url",
        &url,
        "--model",
        "signnet",
        "--slo",
        "p99=50ms",
        "--batch-sizes",
        "1,4,16",
        "--delays",
        "1ms",
        "--start-rate",
        "100",
        "--min-rate",
        "50",
        "--precision",
        "0.3",
        "--window",
        "100ms",
        "--window-requests",
        "30",
        "--max-windows",
        "6",
        "--trial-warmup",
        "50ms",
        "--cooldown",
        "50ms",
        "--quiet",
        "--key-file",
        key_file.to_str().expect("utf-8 path"),
        "--write-config",
        config.to_str().expect("utf-8 path"),
        "--plot",
        plot.to_str().expect("utf-8 path"),
        "--json",
        json.to_str().expect("utf-8 path"),
    ]);
    let Some(Command::Tune(args)) = cli.command else { panic!("tune") };
    let report = ferroserve_loadtest::tune::tune(&args).await.expect("tune");

    let winner = &report.settings[report.winner.expect("a winner")];
    assert_eq!(winner.batch_size, 4, "{report:#?}");
    let best = winner.best_rate.expect("a rate");
    assert!((200.0..=420.0).contains(&best), "batch 4 carries about 400 req/s: {best}");
    let batch1 = report.settings[0].best_rate.expect("batch 1 holds at low rates");
    assert!(batch1 <= 110.0, "batch 1 cannot pass its capacity: {batch1}");
    assert_eq!(report.settings[2].best_rate, None, "batch 16 always misses the SLO");
    assert_eq!(winner.best.as_ref().and_then(|t| t.server).and_then(|s| s.mean_batch_size), Some(4.0));

    let puts = server.puts();
    assert_eq!(puts[..3], [(1, 1.0), (4, 1.0), (16, 1.0)]);
    assert_eq!(server.setting(), (16, 2.0), "the original setting is restored");

    let written = std::fs::read_to_string(&config).expect("config");
    assert_eq!(
        written,
        CONFIG.replace("\"batchSize\": 16", "\"batchSize\": 4").replace("\"maxBatchDelay\": 2", "\"maxBatchDelay\": 1")
    );
    let svg = std::fs::read_to_string(&plot).expect("plot");
    assert!(svg.starts_with("<svg") && svg.contains("batch 4, 1ms"));
    let parsed: ferroserve_loadtest::tune::TuneReport =
        serde_json::from_slice(&std::fs::read(&json).expect("json")).expect("the JSON report parses");
    assert_eq!(parsed.winner, report.winner);
    let rates = |r: &ferroserve_loadtest::tune::TuneReport| -> Vec<Option<f64>> {
        r.settings.iter().map(|s| s.best_rate).collect()
    };
    assert_eq!(rates(&parsed), rates(&report));

    let replot = dir.path().join("replay.svg");
    let replay = support::cli(&[
        "tune",
        "--slo",
        "p99=50ms",
        "--replay",
        json.to_str().expect("utf-8 path"),
        "--plot",
        replot.to_str().expect("utf-8 path"),
    ]);
    let Some(Command::Tune(args)) = replay.command else { panic!("tune") };
    let replayed = ferroserve_loadtest::tune::tune(&args).await.expect("replay without a server");
    assert_eq!(replayed.winner, report.winner);
    assert!(std::fs::read_to_string(&replot).expect("plot").contains("batch 4, 1ms"));
}
