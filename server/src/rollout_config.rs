//! A canary's automatic analysis as `config.properties` states it (`"canaryAnalysis"` on the canary version's
//! `models` entry) or the management API's `PUT /models/{m}/{v}/canary` gives it, checked when read, with
//! Flagger's meaning and defaults where Flagger has them. [`crate::rollout`] judges with it.

use std::time::Duration;

use ferroserve_engine::canary::Weight;
use serde::Deserialize;

/// The analysis settings as written; every one is optional ([`Analysis`] holds them resolved).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AnalysisConfig {
    /// How often the canary is judged: a duration such as `1m` or `30s` (default `1m`).
    pub interval: Option<String>,
    /// Failed checks that roll the canary back (default 5).
    pub threshold: Option<u32>,
    /// Percentage points the canary's share grows by after a passed check (default 10).
    pub step_weight: Option<f64>,
    /// The share at which a passed check promotes the canary (default 50).
    pub max_weight: Option<f64>,
    /// The most 5xx answers a check allows, in percent of the canary's requests (default 1, Flagger's 99 %
    /// success rate).
    pub max_error_percent: Option<f64>,
    /// The canary's p99 latency passes when at most the larger of this (ms) and `p99Factor` times the default
    /// version's p99 over the same interval (default 500 ms, Flagger's request-duration).
    pub max_p99_ms: Option<f64>,
    /// See `maxP99Ms` (default 1.5).
    pub p99_factor: Option<f64>,
    /// Requests the canary must have answered in an interval for the check to count (default 20).
    pub min_requests: Option<u64>,
}

/// The analysis settings, resolved and checked.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Analysis {
    /// How often the canary is judged.
    pub interval: Duration,
    /// Failed checks that roll the canary back.
    pub threshold: u32,
    /// What a passed check adds to the canary's share.
    pub step_weight: Weight,
    /// The share at which a passed check promotes it.
    pub max_weight: Weight,
    /// The most 5xx answers a check allows, in percent.
    pub max_error_percent: f64,
    /// The absolute p99 bound, in seconds.
    pub max_p99: f64,
    /// The bound relative to the default version's p99.
    pub p99_factor: f64,
    /// Requests a check needs.
    pub min_requests: u64,
}

impl AnalysisConfig {
    /// These settings over `base` (each one given here wins).
    #[must_use]
    pub fn over(self, base: AnalysisConfig) -> AnalysisConfig {
        AnalysisConfig {
            interval: self.interval.or(base.interval),
            threshold: self.threshold.or(base.threshold),
            step_weight: self.step_weight.or(base.step_weight),
            max_weight: self.max_weight.or(base.max_weight),
            max_error_percent: self.max_error_percent.or(base.max_error_percent),
            max_p99_ms: self.max_p99_ms.or(base.max_p99_ms),
            p99_factor: self.p99_factor.or(base.p99_factor),
            min_requests: self.min_requests.or(base.min_requests),
        }
    }

    /// The settings with their defaults, checked.
    ///
    /// # Errors
    /// A message naming the key: an interval that is not a duration of at least 1 ms, a threshold of 0, a step
    /// or maximum weight that is not a percentage above 0, a step above the maximum, a negative error percentage,
    /// a p99 bound that is not a positive number of milliseconds, or a factor below 1.
    pub fn resolve(&self) -> Result<Analysis, String> {
        let interval = match &self.interval {
            Some(text) => {
                humantime::parse_duration(text).map_err(|e| format!("canaryAnalysis.interval: {text:?}: {e}"))?
            }
            None => Duration::from_secs(60),
        };
        if interval < Duration::from_millis(1) {
            return Err("canaryAnalysis.interval: must be at least 1ms".into());
        }
        let weight = |key: &str, percent: f64| match Weight::from_percent(percent) {
            Ok(w) if w > Weight::ZERO => Ok(w),
            _ => Err(format!("canaryAnalysis.{key}: {percent} is not a percentage in (0, 100]")),
        };
        let step_weight = weight("stepWeight", self.step_weight.unwrap_or(10.0))?;
        let max_weight = weight("maxWeight", self.max_weight.unwrap_or(50.0))?;
        if step_weight > max_weight {
            return Err("canaryAnalysis.stepWeight: larger than maxWeight".into());
        }
        let max_error_percent = self.max_error_percent.unwrap_or(1.0);
        if !(max_error_percent.is_finite() && (0.0..=100.0).contains(&max_error_percent)) {
            return Err(format!("canaryAnalysis.maxErrorPercent: {max_error_percent} is not a percentage"));
        }
        let max_p99_ms = self.max_p99_ms.unwrap_or(500.0);
        if !(max_p99_ms.is_finite() && max_p99_ms > 0.0) {
            return Err(format!("canaryAnalysis.maxP99Ms: {max_p99_ms} is not a positive number of milliseconds"));
        }
        let p99_factor = self.p99_factor.unwrap_or(1.5);
        if !(p99_factor.is_finite() && p99_factor >= 1.0) {
            return Err(format!("canaryAnalysis.p99Factor: {p99_factor} is not a number of at least 1"));
        }
        let threshold = self.threshold.unwrap_or(5);
        if threshold == 0 {
            return Err("canaryAnalysis.threshold: must be at least 1".into());
        }
        Ok(Analysis {
            interval,
            threshold,
            step_weight,
            max_weight,
            max_error_percent,
            max_p99: max_p99_ms / 1000.0,
            p99_factor,
            min_requests: self.min_requests.unwrap_or(20),
        })
    }
}

/// Checks `canaryPercent`.
///
/// # Errors
/// A message naming the key when it is not a percentage above 0 up to 100.
pub fn canary_weight(percent: f64) -> Result<Weight, String> {
    match Weight::from_percent(percent) {
        Ok(w) if w > Weight::ZERO => Ok(w),
        _ => Err(format!("canaryPercent: {percent} is not a percentage in (0, 100]")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(json: &str) -> AnalysisConfig {
        serde_json::from_str(json).unwrap_or_else(|e| panic!("{json}: {e}"))
    }

    #[test]
    fn defaults_are_flaggers() {
        let a = config("{}").resolve().expect("defaults");
        assert_eq!(a.interval, Duration::from_secs(60));
        assert_eq!((a.threshold, a.min_requests), (5, 20));
        assert_eq!((a.step_weight.percent(), a.max_weight.percent()), (10.0, 50.0));
        assert_eq!((a.max_error_percent, a.max_p99, a.p99_factor), (1.0, 0.5, 1.5));
        let a = config(r#"{"interval": "250ms", "stepWeight": 5, "maxWeight": 20}"#).resolve().expect("valid");
        assert_eq!(a.interval, Duration::from_millis(250));
    }

    #[test]
    fn errors_name_the_key() {
        for (json, key) in [
            (r#"{"interval": "soon"}"#, "canaryAnalysis.interval"),
            (r#"{"interval": "0s"}"#, "canaryAnalysis.interval"),
            (r#"{"threshold": 0}"#, "canaryAnalysis.threshold"),
            (r#"{"stepWeight": 0}"#, "canaryAnalysis.stepWeight"),
            (r#"{"maxWeight": 101}"#, "canaryAnalysis.maxWeight"),
            (r#"{"stepWeight": 60}"#, "canaryAnalysis.stepWeight"),
            (r#"{"maxErrorPercent": -1}"#, "canaryAnalysis.maxErrorPercent"),
            (r#"{"maxP99Ms": 0}"#, "canaryAnalysis.maxP99Ms"),
            (r#"{"p99Factor": 0.5}"#, "canaryAnalysis.p99Factor"),
        ] {
            let message = config(json).resolve().expect_err(json);
            assert!(message.starts_with(key), "{json}: {message}");
        }
        assert!(serde_json::from_str::<AnalysisConfig>(r#"{"intervall": "1m"}"#).is_err(), "unknown keys refused");
        assert!(canary_weight(0.0).is_err() && canary_weight(100.5).is_err() && canary_weight(10.0).is_ok());
    }

    #[test]
    fn given_settings_win_over_the_base() {
        let given = config(r#"{"threshold": 2}"#).over(config(r#"{"threshold": 9, "interval": "5s"}"#));
        assert_eq!((given.threshold, given.interval.as_deref()), (Some(2), Some("5s")));
    }
}
