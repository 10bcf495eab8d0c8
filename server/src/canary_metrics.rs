//! The canary's own metric families: its share of the traffic, the failed checks of its analysis, and the
//! rollout's events (`ferroserve_canary_*`). Its latency and errors are the per-version series every model has
//! (`ferroserve_request_latency_seconds`, `ferroserve_model_responses_total`), so that the canary is compared with
//! the default version on the same families.

use prometheus::{GaugeVec, IntCounterVec, IntGaugeVec, Opts, Registry};

/// The canary families, registered once.
#[derive(Clone)]
pub struct CanaryMetrics {
    weight: GaugeVec,
    failed_checks: IntGaugeVec,
    events: IntCounterVec,
}

const LABELS: [&str; 2] = ["model_name", "model_version"];

impl CanaryMetrics {
    /// Registers the families in `registry`.
    ///
    /// # Errors
    /// When a family of the same name is registered already.
    pub fn new(registry: &Registry) -> prometheus::Result<Self> {
        let weight = GaugeVec::new(
            Opts::new(
                "ferroserve_canary_weight_percent",
                "The canary version's share of the requests that name no version, in percent",
            ),
            &LABELS,
        )?;
        registry.register(Box::new(weight.clone()))?;
        let failed_checks = IntGaugeVec::new(
            Opts::new("ferroserve_canary_failed_checks", "Failed analysis checks of the canary's current rollout"),
            &LABELS,
        )?;
        registry.register(Box::new(failed_checks.clone()))?;
        let events = IntCounterVec::new(
            Opts::new(
                "ferroserve_canary_events_total",
                "Canary rollout events by kind (started, advanced, failed_check, promoted, rolled_back, cleared)",
            ),
            &["model_name", "model_version", "event"],
        )?;
        registry.register(Box::new(events.clone()))?;
        Ok(Self { weight, failed_checks, events })
    }

    /// Records the canary `version` of `name` at `percent` with `failed` checks failed so far.
    pub fn set(&self, name: &str, version: &str, percent: f64, failed: u32) {
        self.weight.with_label_values(&[name, version]).set(percent);
        self.failed_checks.with_label_values(&[name, version]).set(i64::from(failed));
    }

    /// Counts one `event` of the rollout of `version`.
    pub fn event(&self, name: &str, version: &str, event: &str) {
        self.events.with_label_values(&[name, version, event]).inc();
    }
}
