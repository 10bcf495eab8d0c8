//! Service-level objectives (`--slo p99=25ms`, `--slo max=1s`, `--slo errors=0.1%`) and their verdicts: the
//! gate a CI pipeline uses, and the bar the tuner holds every batch setting to.

use std::{fmt, str::FromStr, time::Duration};

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::units::{self, format_duration};

/// An `--slo` argument that could not be read.
#[derive(Debug, Error, PartialEq, Eq)]
#[error("`{0}` is not an SLO: write p99=25ms, p99.9=100ms, p50=5ms, mean=10ms, max=1s or errors=0.1%")]
pub struct SloParseError(String);

/// Which latency statistic an objective bounds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Stat {
    /// A percentile, 0 < p <= 100 (`p99.9` is 99.9).
    Percentile(f64),
    /// The mean.
    Mean,
    /// The largest latency seen.
    Max,
}

impl Stat {
    /// Reads the statistic from a latency histogram recorded in microseconds.
    pub fn of(self, histogram: &Histogram<u64>) -> Duration {
        let micros = match self {
            Stat::Percentile(p) => histogram.value_at_quantile(p / 100.0) as f64,
            Stat::Mean => histogram.mean(),
            Stat::Max => histogram.max() as f64,
        };
        Duration::from_secs_f64(micros / 1e6)
    }
}

impl fmt::Display for Stat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Stat::Percentile(p) => write!(f, "p{}", units::trim_float(*p, 4)),
            Stat::Mean => f.write_str("mean"),
            Stat::Max => f.write_str("max"),
        }
    }
}

/// One objective.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Slo {
    /// A latency statistic must stay at or under the limit.
    Latency {
        /// What is bounded.
        stat: Stat,
        /// The bound.
        limit: Duration,
    },
    /// The fraction of requests that fail (non-2xx, timeouts, connection errors) must stay at or under this.
    ErrorRate(f64),
}

impl FromStr for Slo {
    type Err = SloParseError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = || SloParseError(text.to_string());
        let (key, value) = text.split_once('=').ok_or_else(bad)?;
        let key = key.trim();
        if key == "errors" {
            let percent: f64 = value.trim().trim_end_matches('%').parse().map_err(|_| bad())?;
            if !(0.0..=100.0).contains(&percent) {
                return Err(bad());
            }
            return Ok(Slo::ErrorRate(percent / 100.0));
        }
        let stat = match key {
            "mean" => Stat::Mean,
            "max" => Stat::Max,
            _ => {
                let p: f64 = key.strip_prefix('p').ok_or_else(bad)?.parse().map_err(|_| bad())?;
                if !(p > 0.0 && p <= 100.0) {
                    return Err(bad());
                }
                Stat::Percentile(p)
            }
        };
        let limit = units::parse_duration(value).map_err(|_| bad())?;
        Ok(Slo::Latency { stat, limit })
    }
}

impl fmt::Display for Slo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Slo::Latency { stat, limit } => write!(f, "{stat}={}", format_duration(*limit)),
            Slo::ErrorRate(rate) => write!(f, "errors={}%", units::trim_float(rate * 100.0, 4)),
        }
    }
}

/// What a run measured against one objective.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SloResult {
    /// The objective as written (`p99=25ms`).
    pub slo: String,
    /// The measured value: milliseconds for latency, a percentage for errors.
    pub observed: f64,
    /// The limit, in the same unit.
    pub limit: f64,
    /// Whether the objective holds.
    pub met: bool,
}

impl Slo {
    /// Judges the objective on a latency histogram (microseconds) and request counts.
    pub fn check(&self, latency: &Histogram<u64>, requests: u64, errors: u64) -> SloResult {
        let (observed, limit) = match self {
            Slo::Latency { stat, limit } => (units::ms(stat.of(latency)), units::ms(*limit)),
            Slo::ErrorRate(rate) => (error_rate(requests, errors) * 100.0, rate * 100.0),
        };
        SloResult {
            slo: self.to_string(),
            observed,
            limit,
            // An empty histogram has no latency to judge: it cannot meet a latency objective.
            met: observed <= limit && (!latency.is_empty() || matches!(self, Slo::ErrorRate(_))),
        }
    }

    /// How far the measurement is from the limit: 1.0 at the limit, 2.0 at twice it.
    pub fn ratio(&self, latency: &Histogram<u64>, requests: u64, errors: u64) -> f64 {
        let result = self.check(latency, requests, errors);
        if result.limit > 0.0 {
            result.observed / result.limit
        } else if result.observed > 0.0 {
            f64::INFINITY
        } else {
            0.0
        }
    }
}

/// The fraction of failed requests, 0 when nothing was sent.
pub fn error_rate(requests: u64, errors: u64) -> f64 {
    if requests == 0 {
        0.0
    } else {
        errors as f64 / requests as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn histogram(values_us: &[u64]) -> Histogram<u64> {
        let mut h = Histogram::new(3).expect("histogram");
        for v in values_us {
            h.record(*v).expect("record");
        }
        h
    }

    #[test]
    fn parses_and_prints() {
        let slo: Slo = "p99=25ms".parse().expect("slo");
        assert_eq!(slo, Slo::Latency { stat: Stat::Percentile(99.0), limit: Duration::from_millis(25) });
        assert_eq!(slo.to_string(), "p99=25ms");
        assert_eq!("p99.9=1.5ms".parse::<Slo>().expect("slo").to_string(), "p99.9=1.5ms");
        assert_eq!("max=1s".parse::<Slo>().expect("slo").to_string(), "max=1s");
        assert_eq!("errors=0.1%".parse::<Slo>().expect("slo"), Slo::ErrorRate(0.001));
        for bad in ["p99", "p0=1ms", "p101=1ms", "q99=1ms", "p99=25", "errors=x"] {
            assert!(bad.parse::<Slo>().is_err(), "{bad}");
        }
    }

    #[test]
    fn verdicts() {
        let h = histogram(&[1_000; 99]);
        let slo: Slo = "p99=2ms".parse().expect("slo");
        assert!(slo.check(&h, 99, 0).met);
        let mut slow = h.clone();
        slow.record(10_000).expect("record");
        slow.record(10_000).expect("record");
        assert!(!slo.check(&slow, 101, 0).met);
        assert!(!slo.check(&histogram(&[]), 0, 0).met, "no data never meets a latency SLO");
        let errors = Slo::ErrorRate(0.01);
        assert!(errors.check(&h, 100, 1).met);
        assert!(!errors.check(&h, 100, 2).met);
    }
}
