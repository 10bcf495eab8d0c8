//! The load loops against the in-process fake server: the open loop holds its rate, a stall shows in the
//! corrected latency, the closed loop sends exactly what it is asked, and generated KServe v2 bodies follow
//! the model's metadata.

mod support;

use std::{sync::Arc, time::Duration};

use ferroserve_loadtest::{
    body::BodySet,
    client::{http_client, join_url, Protocol, Target},
    load::{Load, LoadSpec, Mode, Stop},
    recorder::Recording,
};
use support::FakeServer;

fn target(server: &FakeServer, max_bodies: usize) -> Arc<Target> {
    let uri = join_url(&server.url(), &Protocol::Torchserve.infer_path("signnet", None)).expect("uri");
    let bodies = BodySet::landmarks(30, 21, max_bodies, 1);
    Arc::new(Target::new(http_client(), uri, bodies, Duration::from_secs(5)))
}

async fn open_loop(server: &FakeServer, rate: f64, seconds: f64, max_in_flight: usize) -> Recording {
    let spec = LoadSpec {
        mode: Mode::Open { rate, max_in_flight },
        warmup: Duration::ZERO,
        duration: Some(Duration::from_secs_f64(seconds)),
        requests: None,
    };
    Load::new(target(server, 4), spec, Stop::default()).run().await
}

#[tokio::test(flavor = "current_thread")]
async fn the_open_loop_holds_its_rate() {
    let server = FakeServer::instant().await;
    let rec = open_loop(&server, 200.0, 1.0, 1024).await;
    assert_eq!(rec.requests, 200, "one request per 5 ms slot of the second");
    assert_eq!(rec.successes, 200);
    assert_eq!(server.bad_bodies(), 0);
    let lag_p99 = Duration::from_micros(rec.lag.value_at_quantile(0.99));
    assert!(lag_p99 < Duration::from_millis(50), "the sender kept its schedule: lag p99 {lag_p99:?}");
    assert!(rec.elapsed >= Duration::from_millis(990) && rec.elapsed < Duration::from_secs(3), "{:?}", rec.elapsed);
    assert_eq!(rec.lag.len(), 200);
}

/// 100 req/s for 1.5 s to a server that stalls 300 ms once, at its 20th request.
async fn stalled_open_loop(max_in_flight: usize) -> Recording {
    let server = FakeServer::instant().await;
    server.stall_once(20, Duration::from_millis(300));
    let rec = open_loop(&server, 100.0, 1.5, max_in_flight).await;
    assert_eq!(rec.requests, 150);
    rec
}

#[tokio::test(flavor = "current_thread")]
async fn a_stall_shows_in_the_corrected_percentiles() {
    let rec = stalled_open_loop(1024).await;
    let p99 = rec.latency.value_at_quantile(0.99);
    let p50 = rec.latency.value_at_quantile(0.50);
    assert!(rec.latency.max() >= 250_000, "max {}us", rec.latency.max());
    assert!(p99 >= 250_000, "p99 {p99}us");
    assert!(p50 < 100_000, "most requests never saw the stall: p50 {p50}us");
}

#[tokio::test(flavor = "current_thread")]
async fn a_stalled_sender_cannot_hide_the_stall() {
    // One request in flight at most, as a connection-bound generator: the stall holds the sender back, so
    // the requests due meanwhile are sent late and served fast. Their corrected latency still shows it.
    let rec = stalled_open_loop(1).await;
    let corrected_p99 = rec.latency.value_at_quantile(0.99);
    let service_p90 = rec.service.value_at_quantile(0.90);
    assert!(corrected_p99 >= 250_000, "corrected p99 {corrected_p99}us");
    assert!(service_p90 < 100_000, "uncorrected p90 {service_p90}us hides the stall");
    assert!(rec.lag.max() >= 250_000, "the schedule lag shows the sender fell behind");
}

#[tokio::test(flavor = "current_thread")]
async fn the_closed_loop_sends_exactly_what_it_is_asked() {
    let server = FakeServer::instant().await;
    let spec = LoadSpec {
        mode: Mode::Closed { concurrency: 4 },
        warmup: Duration::from_millis(50),
        duration: None,
        requests: Some(100),
    };
    let rec = Load::new(target(&server, 3), spec, Stop::default()).run().await;
    assert_eq!(rec.requests, 100);
    assert_eq!(rec.successes, 100);
    assert!(server.requests() >= 100, "warm-up requests are sent but not recorded");
    assert_eq!(rec.timing.batch_size, (1600.0, 100), "x-batch-size read from every answer");
    assert!(rec.bytes_sent > 100 * 10_000 && rec.bytes_received > 100 * 50);
}

#[tokio::test(flavor = "current_thread")]
async fn kserve_v2_bodies_come_from_the_metadata() {
    let server = FakeServer::instant().await;
    let cli = support::cli(&["--target", &server.url(), "--kserve-v2", "--requests", "20", "--quiet"]);
    let report = ferroserve_loadtest::run::run(&cli.run).await.expect("run");
    assert_eq!(report.successes, 20);
    assert_eq!(server.bad_bodies(), 0);
    assert!(report.settings.url.ends_with("/v2/models/signnet/infer"));
}

#[tokio::test(flavor = "current_thread")]
async fn a_held_back_sender_stops_at_the_end_and_counts_what_it_never_sent() {
    let server = FakeServer::instant().await;
    server.stall_once(1, Duration::from_millis(1500));
    let started = std::time::Instant::now();
    let rec = open_loop(&server, 100.0, 0.5, 5).await;
    assert!(started.elapsed() < Duration::from_secs(4), "the run ends at its duration, then drains");
    assert_eq!(rec.requests, 5, "five in flight, all stalled");
    assert_eq!(rec.unsent, 45, "50 were due in half a second");
    assert!(rec.latency.min() >= 1_000_000, "each waited for the stall");
}
