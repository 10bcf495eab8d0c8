//! How a model version's batches go, as `config.properties` (its `models` entry), an archive's
//! `model-config.yaml` and the management API state it: `"maxBatchDelay"` is milliseconds (TorchServe's) or
//! `"auto"`, which batches for the latency objective `"sloP99Ms"` instead ([`ferroserve_engine::adaptive`]).
//! Without `sloP99Ms`, `auto` takes the threshold of the version's latency objective (`"slo": {"latency":
//! {"thresholdMs": ...}}`, [`crate::slo_config`]), so that one number states it once.

use std::{fmt, time::Duration};

use serde::{de, Deserialize, Deserializer};

use crate::slo_config::SloConfig;

/// `maxBatchDelay` as written: a number of milliseconds, or `"auto"`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum MaxBatchDelay {
    /// Milliseconds (fractions allowed).
    Ms(f64),
    /// Batch for the latency objective.
    Auto,
}

impl MaxBatchDelay {
    /// Reads a query parameter or a property: `auto`, or milliseconds.
    ///
    /// # Errors
    /// A message saying what was expected.
    pub fn parse(text: &str) -> Result<Self, String> {
        if text == "auto" {
            return Ok(Self::Auto);
        }
        let ms: f64 = text.parse().map_err(|_| format!("`{text}` is neither milliseconds nor \"auto\""))?;
        delay_ms(ms)?;
        Ok(Self::Ms(ms))
    }

    /// The fixed delay, when it is one (checked: [`delay_ms`]).
    #[must_use]
    pub fn fixed(self) -> Option<Duration> {
        match self {
            Self::Ms(ms) => delay_ms(ms).ok(),
            Self::Auto => None,
        }
    }
}

impl fmt::Display for MaxBatchDelay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Ms(ms) => write!(f, "{ms}"),
            Self::Auto => f.write_str("auto"),
        }
    }
}

impl<'de> Deserialize<'de> for MaxBatchDelay {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl de::Visitor<'_> for Visitor {
            type Value = MaxBatchDelay;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("milliseconds or \"auto\"")
            }
            fn visit_f64<E: de::Error>(self, ms: f64) -> Result<MaxBatchDelay, E> {
                Ok(MaxBatchDelay::Ms(ms))
            }
            #[allow(clippy::cast_precision_loss)]
            fn visit_u64<E: de::Error>(self, ms: u64) -> Result<MaxBatchDelay, E> {
                Ok(MaxBatchDelay::Ms(ms as f64))
            }
            #[allow(clippy::cast_precision_loss)]
            fn visit_i64<E: de::Error>(self, ms: i64) -> Result<MaxBatchDelay, E> {
                Ok(MaxBatchDelay::Ms(ms as f64))
            }
            fn visit_str<E: de::Error>(self, text: &str) -> Result<MaxBatchDelay, E> {
                MaxBatchDelay::parse(text).map_err(E::custom)
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

/// A delay in milliseconds (fractions allowed, so that sub-millisecond delays can be set).
///
/// # Errors
/// When it is negative, not finite or over an hour.
pub fn delay_ms(ms: f64) -> Result<Duration, String> {
    if ms.is_finite() && (0.0..=3_600_000.0).contains(&ms) {
        Ok(Duration::from_secs_f64(ms / 1000.0))
    } else {
        Err(format!("{ms} is not a delay in milliseconds between 0 and 3600000"))
    }
}

/// An objective in milliseconds, as `sloP99Ms` or `slo_p99_ms` gives it.
///
/// # Errors
/// When it is not a positive number of milliseconds up to an hour.
pub fn slo_ms(ms: f64) -> Result<Duration, String> {
    if ms.is_finite() && ms > 0.0 && ms <= 3_600_000.0 {
        Ok(Duration::from_secs_f64(ms / 1000.0))
    } else {
        Err(format!("{ms} is not a number of milliseconds in (0, 3600000]"))
    }
}

/// Checks the batching keys of one `models` entry or `model-config.yaml`: `maxBatchDelay`, `sloP99Ms` and its
/// latency objective `slo`.
///
/// # Errors
/// A message naming the key: a delay out of range, an objective that is not a positive number of milliseconds,
/// or `"auto"` with no objective to aim at.
pub fn check(delay: Option<MaxBatchDelay>, slo_p99_ms: Option<f64>, slo: Option<&SloConfig>) -> Result<(), String> {
    if let Some(MaxBatchDelay::Ms(ms)) = delay {
        delay_ms(ms).map_err(|e| format!("maxBatchDelay: {e}"))?;
    }
    if let Some(ms) = slo_p99_ms {
        slo_ms(ms).map_err(|e| format!("sloP99Ms: {e}"))?;
    }
    if delay == Some(MaxBatchDelay::Auto) && objective(slo_p99_ms, slo).is_none() {
        return Err("maxBatchDelay \"auto\" needs an objective: give sloP99Ms (or slo.latency.thresholdMs)".into());
    }
    Ok(())
}

/// The objective `auto` aims at: `sloP99Ms`, else the latency objective's threshold.
#[must_use]
pub fn objective(slo_p99_ms: Option<f64>, slo: Option<&SloConfig>) -> Option<Duration> {
    let threshold = slo.and_then(|s| s.latency.as_ref()).map(|l| l.threshold_ms);
    slo_p99_ms.or(threshold).and_then(|ms| slo_ms(ms).ok())
}

/// The objective a model batches for when its delay is `auto`: `configured` and `objective` come from its
/// settings ([`objective`]); `delay` and `slo_p99`, when given (the management API's parameters), win over them.
/// `None` when the delay is fixed.
///
/// # Errors
/// `auto` with no objective anywhere.
pub fn target(
    configured: Option<MaxBatchDelay>,
    objective: Option<Duration>,
    delay: Option<MaxBatchDelay>,
    slo_p99: Option<Duration>,
) -> Result<Option<Duration>, String> {
    if delay.or(configured) != Some(MaxBatchDelay::Auto) {
        return Ok(None);
    }
    slo_p99
        .or(objective)
        .map(Some)
        .ok_or_else(|| "max_batch_delay=auto needs an objective: give slo_p99_ms (or sloP99Ms in models)".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delay(json: &str) -> Result<MaxBatchDelay, String> {
        serde_json::from_str(json).map_err(|e| e.to_string())
    }

    #[test]
    fn the_delay_is_milliseconds_or_auto() {
        assert_eq!(delay("5"), Ok(MaxBatchDelay::Ms(5.0)));
        assert_eq!(delay("0.25"), Ok(MaxBatchDelay::Ms(0.25)));
        assert_eq!(delay("\"auto\""), Ok(MaxBatchDelay::Auto));
        assert!(delay("\"soon\"").expect_err("refused").contains("neither milliseconds nor \"auto\""));
        assert!(delay("true").is_err());
        assert_eq!(MaxBatchDelay::parse("auto"), Ok(MaxBatchDelay::Auto));
        assert_eq!(MaxBatchDelay::parse("1.5"), Ok(MaxBatchDelay::Ms(1.5)));
        assert!(MaxBatchDelay::parse("-1").is_err());
        assert_eq!(
            (MaxBatchDelay::Ms(2.0).fixed(), MaxBatchDelay::Auto.fixed()),
            (Some(Duration::from_millis(2)), None)
        );
    }

    #[test]
    fn auto_needs_an_objective_and_takes_the_latency_slo_when_no_other() {
        let auto = Some(MaxBatchDelay::Auto);
        assert!(check(auto, None, None).expect_err("no objective").starts_with("maxBatchDelay"));
        assert!(check(auto, Some(25.0), None).is_ok());
        let slo: SloConfig =
            serde_json::from_str(r#"{"latency": {"objective": 99, "thresholdMs": 40}}"#).expect("an slo");
        assert!(check(auto, None, Some(&slo)).is_ok());
        assert_eq!(objective(None, Some(&slo)), Some(Duration::from_millis(40)));
        assert_eq!(objective(Some(25.0), Some(&slo)), Some(Duration::from_millis(25)));
        assert!(check(None, Some(0.0), None).expect_err("zero").starts_with("sloP99Ms"));
        assert!(check(None, Some(-3.0), None).is_err());
        assert!(check(Some(MaxBatchDelay::Ms(-1.0)), None, None).expect_err("negative").starts_with("maxBatchDelay"));
    }

    #[test]
    fn parameters_win_over_the_configuration() {
        let ms = Duration::from_millis;
        let fixed = Some(MaxBatchDelay::Ms(2.0));
        assert_eq!(target(fixed, Some(ms(25)), None, None), Ok(None), "an objective alone leaves the fixed delay");
        assert_eq!(target(fixed, Some(ms(25)), Some(MaxBatchDelay::Auto), None), Ok(Some(ms(25))));
        assert_eq!(target(fixed, Some(ms(25)), Some(MaxBatchDelay::Auto), Some(ms(9))), Ok(Some(ms(9))));
        let auto = Some(MaxBatchDelay::Auto);
        assert_eq!(target(auto, Some(ms(25)), None, None), Ok(Some(ms(25))));
        assert_eq!(target(auto, Some(ms(25)), Some(MaxBatchDelay::Ms(1.0)), None), Ok(None));
        assert!(target(None, None, Some(MaxBatchDelay::Auto), None).is_err());
    }
}
