//! The report of one run: a serde struct that is both the `--json` file and the source of the text printed
//! on the terminal, built from a [`Recording`] and what was measured around it (CPU, the server's metrics,
//! SLO verdicts).

mod hdrlog;
mod text;

use std::collections::BTreeMap;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

pub use hdrlog::write_hdr_log;
pub use text::{render, render_spectrum};

use crate::{
    cpu::CpuUsage,
    metrics::ServerSide,
    recorder::{Recording, TimingSums},
    slo::{error_rate, Slo, SloResult},
};

/// Latency statistics in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// Values recorded.
    pub count: u64,
    /// Smallest.
    pub min_ms: f64,
    /// Mean.
    pub mean_ms: f64,
    /// Standard deviation.
    pub stdev_ms: f64,
    /// Median.
    pub p50_ms: f64,
    /// 90th percentile.
    pub p90_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// 99.9th percentile.
    pub p99_9_ms: f64,
    /// Largest.
    pub max_ms: f64,
}

impl Summary {
    /// Statistics of a histogram of microseconds.
    pub fn of(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Self::default();
        }
        let q = |q: f64| h.value_at_quantile(q) as f64 / 1e3;
        Self {
            count: h.len(),
            min_ms: h.min() as f64 / 1e3,
            mean_ms: h.mean() / 1e3,
            stdev_ms: h.stdev() / 1e3,
            p50_ms: q(0.5),
            p90_ms: q(0.9),
            p99_ms: q(0.99),
            p99_9_ms: q(0.999),
            max_ms: h.max() as f64 / 1e3,
        }
    }
}

/// One step of the percentile spectrum (HdrHistogram's `outputPercentileDistribution`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SpectrumPoint {
    /// Percentile, 0 to 100.
    pub percentile: f64,
    /// Latency at it, ms.
    pub latency_ms: f64,
    /// Values at or under it.
    pub total_count: u64,
}

/// The full percentile spectrum, two steps per halving of the distance to 100 %.
pub fn spectrum(h: &Histogram<u64>) -> Vec<SpectrumPoint> {
    let mut total = 0;
    h.iter_quantiles(2)
        .map(|v| {
            total += v.count_since_last_iteration();
            SpectrumPoint {
                percentile: v.quantile_iterated_to() * 100.0,
                latency_ms: v.value_iterated_to() as f64 / 1e3,
                total_count: total,
            }
        })
        .collect()
}

/// The server's timing headers averaged over the successful answers that carried them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct HeaderTiming {
    /// Mean `x-queue-time`, ms.
    pub mean_queue_ms: Option<f64>,
    /// Mean `x-inference-time`, ms.
    pub mean_inference_ms: Option<f64>,
    /// Mean `x-batch-size`.
    pub mean_batch_size: Option<f64>,
}

impl HeaderTiming {
    /// Means of the sums; `None` when no answer had any of the headers.
    pub fn of(sums: &TimingSums) -> Option<Self> {
        let mean = |(sum, n): (f64, u64)| (n > 0).then(|| sum / n as f64);
        let timing = Self {
            mean_queue_ms: mean(sums.queue_ms),
            mean_inference_ms: mean(sums.inference_ms),
            mean_batch_size: mean(sums.batch_size),
        };
        (timing != Self::default()).then_some(timing)
    }
}

/// Throughput and latency of one interval of the run.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct IntervalSummary {
    /// Start, seconds after recording began.
    pub start_s: f64,
    /// Length, seconds.
    pub length_s: f64,
    /// Requests finished in it.
    pub requests: u64,
    /// Of which failed.
    pub errors: u64,
    /// Requests per second.
    pub throughput_rps: f64,
    /// Latency statistics.
    pub latency: Summary,
}

/// How the run was set up, echoed in the report.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RunSettings {
    /// The inference URL.
    pub url: String,
    /// `closed` or `open`.
    pub mode: String,
    /// Closed loop: senders.
    pub concurrency: Option<usize>,
    /// Open loop: requests per second.
    pub rate: Option<f64>,
    /// Warm-up seconds.
    pub warmup_s: f64,
    /// Recorded seconds asked for.
    pub duration_s: Option<f64>,
    /// Recorded requests asked for.
    pub requests: Option<u64>,
    /// Seed of generated bodies.
    pub seed: u64,
    /// Distinct bodies sent.
    pub bodies: usize,
    /// Runtime worker threads.
    pub threads: usize,
}

/// Everything about one run; `--json` writes it as is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// `ferroserve-loadtest x.y.z`.
    pub tool: String,
    /// The setup.
    pub settings: RunSettings,
    /// Recorded seconds, to the last answer.
    pub elapsed_s: f64,
    /// Requests finished.
    pub requests: u64,
    /// Of which 2xx.
    pub successes: u64,
    /// Failures by status code or `timeout` / `connect` / `io`.
    pub errors: BTreeMap<String, u64>,
    /// Failed fraction.
    pub error_rate: f64,
    /// Requests finished per second.
    pub throughput_rps: f64,
    /// Successful requests per second.
    pub success_rps: f64,
    /// Request bytes.
    pub bytes_sent: u64,
    /// Response body bytes.
    pub bytes_received: u64,
    /// Latency from each request's due instant (corrected for coordinated omission in the open loop).
    pub latency: Summary,
    /// Latency from each request's actual send.
    pub service_time: Summary,
    /// Open loop: how late requests left against the schedule.
    pub schedule_lag: Option<Summary>,
    /// Open loop: requests due before the end that were never sent, because `--max-in-flight` held the sender.
    pub unsent: u64,
    /// The full latency percentile spectrum.
    pub spectrum: Vec<SpectrumPoint>,
    /// The server's timing headers.
    pub server_headers: Option<HeaderTiming>,
    /// The server's metrics (`--metrics-url`).
    pub server_metrics: Option<ServerSide>,
    /// CPU used by the generator (and the server, with `--server-pid`).
    pub cpu: CpuUsage,
    /// One verdict per `--slo`.
    pub slo: Vec<SloResult>,
    /// True when every SLO holds (and when there is none).
    pub slo_met: bool,
    /// Per-interval throughput and latency.
    pub intervals: Vec<IntervalSummary>,
}

impl Report {
    /// Builds the report of a recording.
    pub fn new(settings: RunSettings, rec: &Recording, cpu: CpuUsage, slos: &[Slo]) -> Self {
        let elapsed = rec.elapsed.as_secs_f64().max(1e-9);
        let errors = rec.error_count();
        let slo: Vec<SloResult> = slos.iter().map(|s| s.check(&rec.latency, rec.requests, errors)).collect();
        let open = settings.rate.is_some();
        Self {
            tool: format!("ferroserve-loadtest {}", env!("CARGO_PKG_VERSION")),
            settings,
            elapsed_s: rec.elapsed.as_secs_f64(),
            requests: rec.requests,
            successes: rec.successes,
            errors: rec.errors.clone(),
            error_rate: error_rate(rec.requests, errors),
            throughput_rps: rec.requests as f64 / elapsed,
            success_rps: rec.successes as f64 / elapsed,
            bytes_sent: rec.bytes_sent,
            bytes_received: rec.bytes_received,
            latency: Summary::of(&rec.latency),
            service_time: Summary::of(&rec.service),
            schedule_lag: open.then(|| Summary::of(&rec.lag)),
            unsent: rec.unsent,
            spectrum: spectrum(&rec.latency),
            server_headers: HeaderTiming::of(&rec.timing),
            server_metrics: None,
            cpu,
            slo_met: slo.iter().all(|s| s.met),
            slo,
            intervals: rec
                .intervals
                .iter()
                .map(|i| IntervalSummary {
                    start_s: i.start.as_secs_f64(),
                    length_s: i.length.as_secs_f64(),
                    requests: i.requests,
                    errors: i.errors,
                    throughput_rps: i.throughput(),
                    latency: Summary::of(&i.latency),
                })
                .collect(),
        }
    }
}
