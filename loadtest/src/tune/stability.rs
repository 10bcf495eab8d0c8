//! When a trial at a fixed rate is decided. The load runs in windows; the result counts when the last three
//! windows agree within 10 % (throughput relative to its mean; each SLO statistic relative to the larger of
//! its mean and the SLO limit, so that sub-millisecond jitter far below the limit does not count as
//! instability). Agreeing windows are sustainable when each meets every latency objective, their errors
//! stay within the allowance and they carry the offered rate. A window at twice the limit or more ends the
//! trial at once: a queue is building. No agreement within the allowed windows is unsustainable.

use hdrhistogram::Histogram;

use crate::{
    recorder::{new_histogram, Interval},
    slo::{error_rate, Slo},
};

/// How windows are judged.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StabilityConfig {
    /// Consecutive windows that must agree (3).
    pub needed: usize,
    /// Relative agreement (0.10).
    pub agreement: f64,
    /// Windows after which an undecided trial is unsustainable.
    pub max_windows: usize,
    /// Failed fraction a sustainable rate may have.
    pub max_error_rate: f64,
    /// A window whose SLO statistic is this many times the limit fails the trial at once (2.0).
    pub give_up_ratio: f64,
}

/// The state of a trial.
#[derive(Debug, Clone, PartialEq)]
pub enum Judgement {
    /// More windows are needed.
    Continue,
    /// The rate holds.
    Sustainable,
    /// The rate does not hold, and why.
    Unsustainable(String),
}

fn spread(values: &[f64]) -> (f64, f64) {
    let mean = values.iter().sum::<f64>() / values.len().max(1) as f64;
    let max = values.iter().copied().fold(f64::MIN, f64::max);
    let min = values.iter().copied().fold(f64::MAX, f64::min);
    (max - min, mean)
}

/// Judges the windows so far of a trial offered `rate` requests per second.
pub fn judge(windows: &[Interval], slos: &[Slo], rate: f64, config: &StabilityConfig) -> Judgement {
    let Some(last) = windows.last() else { return Judgement::Continue };
    let latency_slos: Vec<&Slo> = slos.iter().filter(|s| matches!(s, Slo::Latency { .. })).collect();
    for slo in &latency_slos {
        let ratio = slo.ratio(&last.latency, last.requests, last.errors);
        if !last.latency.is_empty() && ratio >= config.give_up_ratio {
            return Judgement::Unsustainable(format!("{slo} missed {ratio:.1}x"));
        }
    }
    if windows.len() >= config.needed {
        let recent = &windows[windows.len() - config.needed..];
        if agree(recent, &latency_slos, config.agreement) {
            return verdict(recent, slos, rate, config);
        }
    }
    if windows.len() >= config.max_windows {
        return Judgement::Unsustainable(format!("no {} windows agreed within {}", config.needed, windows.len()));
    }
    Judgement::Continue
}

fn agree(windows: &[Interval], slos: &[&Slo], agreement: f64) -> bool {
    let throughput: Vec<f64> = windows.iter().map(Interval::throughput).collect();
    let (range, mean) = spread(&throughput);
    if range > agreement * mean {
        return false;
    }
    slos.iter().all(|slo| {
        let Slo::Latency { stat, limit } = slo else { return true };
        let values: Vec<f64> = windows.iter().map(|w| stat.of(&w.latency).as_secs_f64()).collect();
        let (range, mean) = spread(&values);
        range <= agreement * mean.max(limit.as_secs_f64())
    })
}

fn verdict(windows: &[Interval], slos: &[Slo], rate: f64, config: &StabilityConfig) -> Judgement {
    let requests: u64 = windows.iter().map(|w| w.requests).sum();
    let errors: u64 = windows.iter().map(|w| w.errors).sum();
    let errors_allowed = slos
        .iter()
        .filter_map(|s| if let Slo::ErrorRate(r) = s { Some(*r) } else { None })
        .fold(config.max_error_rate, f64::min);
    if error_rate(requests, errors) > errors_allowed {
        return Judgement::Unsustainable(format!("{errors} errors in {requests} requests"));
    }
    for window in windows {
        for slo in slos.iter().filter(|s| matches!(s, Slo::Latency { .. })) {
            if !slo.check(&window.latency, window.requests, window.errors).met {
                return Judgement::Unsustainable(format!("{slo} missed"));
            }
        }
    }
    let length: f64 = windows.iter().map(|w| w.length.as_secs_f64()).sum();
    let throughput = requests as f64 / length.max(1e-9);
    if throughput < (1.0 - config.agreement) * rate {
        return Judgement::Unsustainable(format!("carried {throughput:.1} of {rate} req/s"));
    }
    Judgement::Sustainable
}

/// The windows merged: one histogram, summed counts, total length.
pub fn merge(windows: &[Interval]) -> Interval {
    let mut latency: Histogram<u64> = new_histogram();
    for w in windows {
        // Histograms with the same bounds always merge.
        let _ = latency.add(&w.latency);
    }
    Interval {
        start: windows.first().map(|w| w.start).unwrap_or_default(),
        length: windows.iter().map(|w| w.length).sum(),
        latency,
        requests: windows.iter().map(|w| w.requests).sum(),
        errors: windows.iter().map(|w| w.errors).sum(),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const CONFIG: StabilityConfig =
        StabilityConfig { needed: 3, agreement: 0.10, max_windows: 6, max_error_rate: 0.001, give_up_ratio: 2.0 };

    /// A 1 s window of `requests` requests all at `latency_ms`, with `errors` of them failed.
    fn window(requests: u64, latency_ms: u64, errors: u64) -> Interval {
        let mut latency = new_histogram();
        latency.record_n(latency_ms * 1000, requests - errors).expect("record");
        Interval { start: Duration::ZERO, length: Duration::from_secs(1), latency, requests, errors }
    }

    fn slos() -> Vec<Slo> {
        vec!["p99=25ms".parse().expect("slo")]
    }

    #[test]
    fn three_agreeing_windows_under_the_slo_pass() {
        let w = vec![window(100, 5, 0), window(98, 6, 0), window(101, 5, 0)];
        assert_eq!(judge(&w[..2], &slos(), 100.0, &CONFIG), Judgement::Continue);
        assert_eq!(judge(&w, &slos(), 100.0, &CONFIG), Judgement::Sustainable);
    }

    #[test]
    fn growing_latency_is_not_stable_and_a_blowup_fails_at_once() {
        let growing = vec![window(100, 5, 0), window(100, 12, 0), window(100, 20, 0)];
        assert_eq!(judge(&growing, &slos(), 100.0, &CONFIG), Judgement::Continue);
        let blown = vec![window(100, 5, 0), window(100, 60, 0)];
        assert!(matches!(judge(&blown, &slos(), 100.0, &CONFIG), Judgement::Unsustainable(_)));
        let unstable: Vec<Interval> = (0..6).map(|i| window(100, 5 + 6 * (i % 2), 0)).collect();
        assert!(matches!(judge(&unstable, &slos(), 100.0, &CONFIG), Judgement::Unsustainable(_)));
    }

    #[test]
    fn errors_and_a_missing_rate_fail() {
        let errors = vec![window(100, 5, 1), window(100, 5, 0), window(100, 5, 0)];
        assert!(matches!(judge(&errors, &slos(), 100.0, &CONFIG), Judgement::Unsustainable(_)));
        let short = vec![window(70, 5, 0), window(70, 5, 0), window(70, 5, 0)];
        assert!(matches!(judge(&short, &slos(), 100.0, &CONFIG), Judgement::Unsustainable(_)));
        let over = vec![window(100, 30, 0), window(100, 30, 0), window(100, 31, 0)];
        assert!(matches!(judge(&over, &slos(), 100.0, &CONFIG), Judgement::Unsustainable(_)));
    }

    #[test]
    fn merged_windows_add_up() {
        let merged = merge(&[window(10, 5, 0), window(20, 7, 2)]);
        assert_eq!((merged.requests, merged.errors, merged.latency.len()), (30, 2, 28));
        assert_eq!(merged.length, Duration::from_secs(2));
    }
}
