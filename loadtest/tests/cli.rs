//! The binary end to end against the fake server: the SLO gate's exit status, the JSON report, the
//! HdrHistogram interval log and the server's metrics.

mod support;

use std::{process::Output, time::Duration};

use ferroserve_loadtest::report::Report;
use hdrhistogram::serialization::{
    interval_log::{IntervalLogIterator, LogEntry},
    Deserializer,
};
use support::{FakeServer, Profile};

async fn run_binary(args: &[&str]) -> Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_ferroserve-loadtest"))
        .args(args)
        .output()
        .await
        .expect("the binary runs")
}

async fn slow_server() -> FakeServer {
    FakeServer::start(|_| Profile { capacity: None, latency: Duration::from_millis(20) }).await
}

#[tokio::test(flavor = "current_thread")]
async fn the_slo_gate_fails_exactly_when_the_objective_is_missed() {
    let server = slow_server().await;
    let url = server.url();
    let base = ["--target", &url, "--requests", "30", "--concurrency", "2", "--quiet"];

    let missed = run_binary(&[&base[..], &["--slo", "p99=5ms"]].concat()).await;
    assert_eq!(missed.status.code(), Some(2), "every answer takes 20 ms");
    assert!(String::from_utf8_lossy(&missed.stdout).contains("p99=5ms: measured"));
    assert!(String::from_utf8_lossy(&missed.stdout).contains("MISSED"));

    let met = run_binary(&[&base[..], &["--slo", "p99=2s", "--slo", "errors=0%"]].concat()).await;
    assert_eq!(met.status.code(), Some(0), "{}", String::from_utf8_lossy(&met.stdout));

    let one_of_two = run_binary(&[&base[..], &["--slo", "p50=2s,max=10ms"]].concat()).await;
    assert_eq!(one_of_two.status.code(), Some(2));

    let bad_flag = run_binary(&[&base[..], &["--slo", "p99=25"]].concat()).await;
    assert_eq!(bad_flag.status.code(), Some(2), "clap's usage error");
    assert!(String::from_utf8_lossy(&bad_flag.stderr).contains("is not an SLO"));
}

#[tokio::test(flavor = "current_thread")]
async fn the_json_report_and_the_interval_log_parse() {
    let server = FakeServer::instant().await;
    let url = server.url();
    let metrics = format!("{url}/metrics");
    let dir = tempfile::tempdir().expect("tempdir");
    let (json, log) = (dir.path().join("report.json"), dir.path().join("run.hlog"));
    let out = run_binary(&[
        "--target",
        &url,
        "--rate",
        "100",
        "--duration",
        "1s",
        "--interval",
        "250ms",
        "--metrics-url",
        &metrics,
        "--server-pid",
        &std::process::id().to_string(),
        "--percentiles",
        "--quiet",
        "--json",
        json.to_str().expect("utf-8"),
        "--hdr-log",
        log.to_str().expect("utf-8"),
    ])
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("Percentile") && stdout.contains("open loop at 100 req/s"), "{stdout}");

    let report: Report = serde_json::from_slice(&std::fs::read(&json).expect("json")).expect("parses");
    assert_eq!((report.requests, report.successes), (100, 100));
    assert_eq!(report.settings.rate, Some(100.0));
    assert!(report.latency.count == 100 && report.latency.p99_ms >= report.latency.p50_ms);
    assert!(report.schedule_lag.is_some() && !report.spectrum.is_empty());
    assert!(report.cpu.server_s.is_some() && report.cpu.generator_s > 0.0);
    let server_side = report.server_metrics.expect("metrics scraped");
    assert_eq!(server_side.requests, Some(100.0));
    assert_eq!(server_side.mean_queue_ms, Some(0.5));
    assert_eq!(server_side.mean_batch_size, Some(4.0));
    assert_eq!(report.server_headers.and_then(|h| h.mean_inference_ms), Some(1.0));

    let text = std::fs::read(&log).expect("log");
    let mut deserializer = Deserializer::new();
    let mut total = 0;
    let mut intervals = 0;
    for entry in IntervalLogIterator::new(&text) {
        if let LogEntry::Interval(h) = entry.expect("a valid log entry") {
            let bytes = base64_decode(h.encoded_histogram());
            let histogram: hdrhistogram::Histogram<u64> =
                deserializer.deserialize(&mut bytes.as_slice()).expect("a histogram");
            total += histogram.len();
            intervals += 1;
        }
    }
    assert!(intervals >= 4, "{intervals} intervals of 250 ms in 1 s");
    assert_eq!(total, 100, "every latency is in the log once");
}

/// Standard base64, enough for the log's histograms.
fn base64_decode(text: &str) -> Vec<u8> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::new();
    let (mut buffer, mut bits) = (0u32, 0);
    for c in text.bytes().filter(|&c| c != b'=') {
        let value = ALPHABET.iter().position(|&a| a == c).expect("base64") as u32;
        buffer = (buffer << 6) | value;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((buffer >> bits) as u8);
            buffer &= (1 << bits) - 1;
        }
    }
    out
}
