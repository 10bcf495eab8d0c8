//! One trial of the tuner: an open-loop load at a fixed rate, cut into stability windows, that stops as soon
//! as [`judge`] decides.

use std::{sync::Arc, time::Duration};

use serde::{Deserialize, Serialize};

use super::stability::{judge, merge, Judgement, StabilityConfig};
use crate::{
    client::Target,
    load::{Load, LoadSpec, Mode, Stop},
    report::{HeaderTiming, Summary},
    slo::Slo,
};

/// How a trial is run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TrialConfig {
    /// Load before the first window.
    pub warmup: Duration,
    /// Shortest window.
    pub window: Duration,
    /// Windows are stretched to hold this many requests at the offered rate.
    pub window_requests: u64,
    /// Open-loop cap on requests in flight.
    pub max_in_flight: usize,
    /// The decision rules.
    pub stability: StabilityConfig,
}

impl TrialConfig {
    /// The window length at `rate`.
    pub fn window_at(&self, rate: f64) -> Duration {
        let for_requests = Duration::from_secs_f64(self.window_requests as f64 / rate.max(1e-6));
        self.window.max(for_requests)
    }
}

/// What a trial measured over the windows that decided it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Trial {
    /// Offered rate, requests per second.
    pub rate: f64,
    /// Whether the rate holds under the SLO.
    pub sustainable: bool,
    /// Why not, when it does not.
    pub reason: Option<String>,
    /// Windows run.
    pub windows: usize,
    /// Requests finished per second in the deciding windows.
    pub throughput_rps: f64,
    /// Failed fraction in the deciding windows.
    pub error_rate: f64,
    /// Latency in the deciding windows (corrected, from each request's scheduled send).
    pub latency: Summary,
    /// Mean batch size and server times from the response headers, over the whole trial.
    pub server: Option<HeaderTiming>,
}

/// Runs a trial at `rate`.
pub async fn run_trial(target: Arc<Target>, rate: f64, slos: &[Slo], config: &TrialConfig) -> Trial {
    let window = config.window_at(rate);
    let stop = Stop::default();
    let spec = LoadSpec {
        mode: Mode::Open { rate, max_in_flight: config.max_in_flight },
        warmup: config.warmup,
        duration: Some(window * config.stability.max_windows as u32 + window / 2),
        requests: None,
    };
    let load = Load::new(target, spec, stop.clone());
    let recorder = load.recorder();
    let decide = async {
        let mut windows = Vec::new();
        let mut end = recorder.start();
        loop {
            end += window;
            tokio::time::sleep_until(end).await;
            windows.push(recorder.rotate(end));
            let judgement = judge(&windows, slos, rate, &config.stability);
            if judgement != Judgement::Continue {
                stop.set();
                return (judgement, windows);
            }
        }
    };
    let (recording, (judgement, windows)) = tokio::join!(load.run(), decide);
    let deciding = &windows[windows.len().saturating_sub(config.stability.needed)..];
    let merged = merge(deciding);
    let (sustainable, reason) = match judgement {
        Judgement::Sustainable => (true, None),
        Judgement::Unsustainable(why) => (false, Some(why)),
        Judgement::Continue => (false, Some("undecided".into())),
    };
    Trial {
        rate,
        sustainable,
        reason,
        windows: windows.len(),
        throughput_rps: merged.throughput(),
        error_rate: crate::slo::error_rate(merged.requests, merged.errors),
        latency: Summary::of(&merged.latency),
        server: HeaderTiming::of(&recording.timing),
    }
}
