//! The drift monitor's Prometheus families, registered with the server's others (`crate::metrics`) and written
//! only by the monitor's thread.

use prometheus::{GaugeVec, IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry};

use super::{window::Report, Tap};

/// The feature label of the predicted-class test.
pub const PREDICTED_CLASS: &str = "predicted_class";

/// The drift families.
#[derive(Clone)]
pub struct DriftMetrics {
    score: GaugeVec,
    detected: IntGaugeVec,
    window_samples: IntGaugeVec,
    windows: IntCounterVec,
    reference_samples: IntGaugeVec,
    predictions: IntCounterVec,
    /// Rows the request path could not hand over (the monitor's queue was full).
    pub dropped: IntCounter,
}

const MODEL: [&str; 2] = ["model_name", "model_version"];

impl DriftMetrics {
    /// Registers the families in `registry`.
    ///
    /// # Errors
    /// When a family is registered already.
    pub fn new(registry: &Registry) -> prometheus::Result<Self> {
        let opts = Opts::new;
        let this = Self {
            score: GaugeVec::new(
                opts("ferroserve_drift_score", "Drift statistic of the last window against the reference"),
                &["model_name", "model_version", "feature", "method"],
            )?,
            detected: IntGaugeVec::new(
                opts("ferroserve_drift_detected", "1 when the last window drifted from the reference, else 0"),
                &MODEL,
            )?,
            window_samples: IntGaugeVec::new(
                opts("ferroserve_drift_window_samples", "Requests in the last window compared with the reference"),
                &MODEL,
            )?,
            windows: IntCounterVec::new(
                opts("ferroserve_drift_windows_total", "Windows compared with the reference, by verdict"),
                &["model_name", "model_version", "detected"],
            )?,
            reference_samples: IntGaugeVec::new(
                opts("ferroserve_drift_reference_samples", "Requests in the drift reference (0 while it is collected)"),
                &MODEL,
            )?,
            predictions: IntCounterVec::new(
                opts("ferroserve_predictions_total", "Answered requests by top-1 predicted class"),
                &["model_name", "model_version", "class"],
            )?,
            dropped: IntCounter::with_opts(opts(
                "ferroserve_drift_rows_dropped_total",
                "Requests left out of drift monitoring because the monitor's queue was full",
            ))?,
        };
        registry.register(Box::new(this.score.clone()))?;
        registry.register(Box::new(this.detected.clone()))?;
        registry.register(Box::new(this.window_samples.clone()))?;
        registry.register(Box::new(this.windows.clone()))?;
        registry.register(Box::new(this.reference_samples.clone()))?;
        registry.register(Box::new(this.predictions.clone()))?;
        registry.register(Box::new(this.dropped.clone()))?;
        Ok(this)
    }

    /// The counter of answered requests of `tap`'s model that predicted class `class` (the monitor keeps it, so
    /// that a row costs an increment, not a label lookup).
    pub(super) fn predicted(&self, tap: &Tap, class: usize) -> IntCounter {
        self.predictions.with_label_values(&[&tap.name, &tap.version, &tap.label(class)])
    }

    /// Sets the reference size (0 while it is collected), and the window counts at 0 from then on, so that a
    /// ratio of flagged windows is 0 rather than absent before the first one closes.
    pub(super) fn reference(&self, tap: &Tap, samples: u64) {
        let (name, version) = (tap.name.as_str(), tap.version.as_str());
        self.reference_samples.with_label_values(&[name, version]).set(gauge(samples));
        self.detected.with_label_values(&[name, version]).set(0);
        for detected in ["true", "false"] {
            self.windows.with_label_values(&[name, version, detected]);
        }
    }

    /// Publishes a closed window's report.
    pub(super) fn publish(&self, tap: &Tap, report: &Report) {
        let (name, version) = (tap.name.as_str(), tap.version.as_str());
        for f in &report.features {
            for (method, value) in
                [("psi", f.psi), ("jensenshannon", f.jensenshannon), ("ks", f.ks), ("ks_pvalue", f.ks_pvalue)]
            {
                self.score.with_label_values(&[name, version, &f.feature, method]).set(value);
            }
        }
        let p = &report.predictions;
        for (method, value) in [("chi2", p.chi2), ("chi2_pvalue", p.chi2_pvalue), ("jensenshannon", p.jensenshannon)] {
            self.score.with_label_values(&[name, version, PREDICTED_CLASS, method]).set(value);
        }
        self.detected.with_label_values(&[name, version]).set(i64::from(report.detected));
        self.window_samples.with_label_values(&[name, version]).set(gauge(report.samples as u64));
        self.windows.with_label_values(&[name, version, if report.detected { "true" } else { "false" }]).inc();
    }

    /// Removes every series of `tap`'s model (it was unregistered), `classes` the class indices it predicted.
    pub(super) fn forget(&self, tap: &Tap, classes: impl Iterator<Item = usize>) {
        let (name, version) = (tap.name.as_str(), tap.version.as_str());
        for family in [&self.detected, &self.window_samples, &self.reference_samples] {
            let _ = family.remove_label_values(&[name, version]);
        }
        let features = tap.names.iter().map(String::as_str).chain([super::features::CONFIDENCE]);
        for feature in features {
            for method in ["psi", "jensenshannon", "ks", "ks_pvalue"] {
                let _ = self.score.remove_label_values(&[name, version, feature, method]);
            }
        }
        for method in ["chi2", "chi2_pvalue", "jensenshannon"] {
            let _ = self.score.remove_label_values(&[name, version, PREDICTED_CLASS, method]);
        }
        for detected in ["true", "false"] {
            let _ = self.windows.remove_label_values(&[name, version, detected]);
        }
        for class in classes {
            let _ = self.predictions.remove_label_values(&[name, version, &tap.label(class)]);
        }
    }
}

fn gauge(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}
