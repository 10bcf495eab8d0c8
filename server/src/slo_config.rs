//! The service level objectives of a model version as `config.properties` states them (`"slo"` in its `models`
//! entry), checked when the configuration is read. [`crate::slo`] renders them as Prometheus rules.

use serde::Deserialize;

/// The per-model objectives of a model version (`"slo"` in its `models` entry).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SloConfig {
    /// Percent of requests answered without a 5xx (e.g. 99.9).
    pub availability: Option<f64>,
    /// Percent of requests answered within a threshold.
    pub latency: Option<LatencyObjective>,
    /// The period the error budget covers, in days (default 30).
    pub period_days: Option<u32>,
}

/// "`objective` percent of requests answered within `threshold_ms`".
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LatencyObjective {
    /// Percent of requests (e.g. 99).
    pub objective: f64,
    /// The threshold in milliseconds, from arrival at the server to the response (fractions allowed).
    pub threshold_ms: f64,
}

/// The period of an error budget when `periodDays` is not given, as in the SRE workbook.
const DEFAULT_PERIOD_DAYS: u32 = 30;

/// The longest period accepted: a year.
const MAX_PERIOD_DAYS: u32 = 366;

impl SloConfig {
    /// The period of the error budget in days: `periodDays`, else 30.
    #[must_use]
    pub fn period(&self) -> u32 {
        self.period_days.unwrap_or(DEFAULT_PERIOD_DAYS)
    }

    /// Checks that the objectives can be rendered.
    ///
    /// # Errors
    /// A message naming the key: an objective that is not strictly between 0 and 100 (100 % leaves no error
    /// budget to burn), a threshold that is not a positive number of milliseconds up to an hour, a period that is
    /// not 1 to 366 days, or no objective at all.
    pub fn validate(&self) -> Result<(), String> {
        if self.availability.is_none() && self.latency.is_none() {
            return Err("slo: give `availability` and/or `latency`".into());
        }
        if let Some(percent) = self.availability {
            check_percent("slo.availability", percent)?;
        }
        if let Some(latency) = &self.latency {
            check_percent("slo.latency.objective", latency.objective)?;
            let ms = latency.threshold_ms;
            if !(ms.is_finite() && ms > 0.0 && ms <= 3_600_000.0) {
                return Err(format!("slo.latency.thresholdMs: {ms} is not a number of milliseconds in (0, 3600000]"));
            }
        }
        match self.period_days {
            Some(days) if !(1..=MAX_PERIOD_DAYS).contains(&days) => {
                Err(format!("slo.periodDays: {days} is not between 1 and {MAX_PERIOD_DAYS}"))
            }
            _ => Ok(()),
        }
    }
}

fn check_percent(key: &str, percent: f64) -> Result<(), String> {
    if percent.is_finite() && percent > 0.0 && percent < 100.0 {
        Ok(())
    } else {
        Err(format!("{key}: {percent} is not a percentage strictly between 0 and 100"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slo(json: &str) -> SloConfig {
        serde_json::from_str(json).unwrap_or_else(|e| panic!("{json}: {e}"))
    }

    #[test]
    fn the_period_defaults_to_thirty_days() {
        assert_eq!(slo(r#"{"availability": 99}"#).period(), 30);
        assert_eq!(slo(r#"{"availability": 99, "periodDays": 7}"#).period(), 7);
    }

    #[test]
    fn errors_name_the_key() {
        for (json, key) in [
            (r#"{"availability": 100}"#, "slo.availability"),
            (r#"{"latency": {"objective": 0, "thresholdMs": 5}}"#, "slo.latency.objective"),
            (r#"{"latency": {"objective": 99, "thresholdMs": -1}}"#, "slo.latency.thresholdMs"),
            (r#"{"availability": 99, "periodDays": 400}"#, "slo.periodDays"),
        ] {
            let message = slo(json).validate().expect_err(json);
            assert!(message.starts_with(key), "{json}: {message}");
        }
        assert!(slo(r#"{"availability": 99.99, "latency": {"objective": 50, "thresholdMs": 0.5}}"#).validate().is_ok());
    }
}
