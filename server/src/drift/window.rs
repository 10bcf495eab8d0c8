//! Windows of live traffic and their comparison with the reference: a plain struct fed observations and the
//! time, tested without threads or clocks.
//!
//! A window closes when it holds `drift_window_size` requests, or when `drift_window_seconds` have passed since
//! its first request and it holds at least `drift_min_window_size` (a window too small to test keeps
//! collecting). Each closed window is compared with the reference, feature by feature and on the predicted
//! classes; see [`compare`] for the verdict.

use std::time::{Duration, Instant};

use serde::Serialize;

use super::{profile::Profile, stats, Observation};

/// When windows close and what counts as drift.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Settings {
    /// Requests that close a window.
    pub size: usize,
    /// Age (since its first request) that closes a window of at least `min_size` requests.
    pub max_age: Duration,
    /// Fewest requests a window closed by age is tested with.
    pub min_size: usize,
    /// Significance level of the tests, shared among them (Bonferroni).
    pub alpha: f64,
    /// PSI from which a significant shift counts (the "moderate" band).
    pub psi_threshold: f64,
    /// Jensen-Shannon distance from which a significant shift counts.
    pub js_threshold: f64,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            size: 1000,
            max_age: Duration::from_secs(600),
            min_size: 100,
            alpha: 0.05,
            psi_threshold: 0.1,
            js_threshold: 0.1,
        }
    }
}

/// The requests of the window being filled.
#[derive(Debug, Default)]
pub struct Window {
    opened: Option<Instant>,
    /// Per feature (the confidence last), the window's values.
    values: Vec<Vec<f64>>,
    classes: Vec<u64>,
    len: usize,
}

impl Window {
    /// Adds one request, seen at `now`.
    pub fn push(&mut self, observation: &Observation, now: Instant) {
        self.opened.get_or_insert(now);
        let features = observation.features.iter().copied().chain([observation.confidence]);
        self.values.resize_with(observation.features.len() + 1, Vec::new);
        for (column, x) in self.values.iter_mut().zip(features) {
            column.push(f64::from(x));
        }
        if self.classes.len() <= observation.class {
            self.classes.resize(observation.class + 1, 0);
        }
        self.classes[observation.class] += 1;
        self.len += 1;
    }

    /// Requests in the window.
    #[must_use]
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether it has none.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether the window should close at `now`.
    #[must_use]
    pub fn is_due(&self, settings: &Settings, now: Instant) -> bool {
        let old = self.opened.is_some_and(|t| now.saturating_duration_since(t) >= settings.max_age);
        self.len >= settings.size || (old && self.len >= settings.min_size)
    }

    /// Closes the window: compares it with `reference` and starts an empty one.
    #[must_use]
    pub fn close(&mut self, reference: &Profile, settings: &Settings) -> Report {
        let window = std::mem::take(self);
        compare(reference, window, settings)
    }
}

/// How one feature of a window compares with the reference.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FeatureDrift {
    /// The feature.
    pub feature: String,
    /// Population Stability Index on the reference's quantile bins.
    pub psi: f64,
    /// Jensen-Shannon distance on the same bins.
    pub jensenshannon: f64,
    /// Kolmogorov-Smirnov D against the reference sample.
    pub ks: f64,
    /// Its asymptotic p-value.
    pub ks_pvalue: f64,
    /// The verdict (see [`compare`]).
    pub drifted: bool,
}

/// How a window's predicted classes compare with the reference.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ClassDrift {
    /// Pearson's chi-squared against the reference proportions.
    pub chi2: f64,
    /// Its p-value.
    pub chi2_pvalue: f64,
    /// Jensen-Shannon distance between the two class distributions.
    pub jensenshannon: f64,
    /// The window's count per class index.
    pub counts: Vec<u64>,
    /// The verdict (see [`compare`]).
    pub drifted: bool,
}

/// A closed window's comparison with the reference.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    /// Requests in the window.
    pub samples: usize,
    /// Whether any feature or the predicted classes drifted.
    pub detected: bool,
    /// Per feature, the confidence last.
    pub features: Vec<FeatureDrift>,
    /// The predicted classes.
    pub predictions: ClassDrift,
}

/// Compares `window` with `reference`. A feature has drifted when its KS test rejects the reference at
/// `alpha / tests` (Bonferroni over the features and the class test) **and** the shift is large enough to matter:
/// PSI at least `psi_threshold` or Jensen-Shannon at least `js_threshold`. The predicted classes have drifted
/// when the chi-squared test rejects at the same level and their Jensen-Shannon distance is at least
/// `js_threshold`. Significance alone would flag shifts too small to matter once windows are large; a threshold
/// alone would flag noise in small windows.
#[must_use]
pub fn compare(reference: &Profile, mut window: Window, settings: &Settings) -> Report {
    let tests = reference.features.len() + 1;
    #[allow(clippy::cast_precision_loss)]
    let level = settings.alpha / tests as f64;
    let features: Vec<FeatureDrift> = reference
        .features
        .iter()
        .zip(window.values.iter_mut())
        .map(|(reference, values)| {
            values.sort_by(f64::total_cmp);
            let counts = stats::bin_counts(&reference.edges, values.iter().copied());
            let psi = stats::psi(&reference.counts, &counts);
            let jensenshannon = stats::jensen_shannon(&to_f64(&reference.counts), &to_f64(&counts));
            let ks = stats::ks_statistic(&reference.sample, values);
            let ks_pvalue = stats::ks_pvalue(ks, reference.sample.len(), values.len());
            let large = psi >= settings.psi_threshold || jensenshannon >= settings.js_threshold;
            FeatureDrift {
                feature: reference.name.clone(),
                psi,
                jensenshannon,
                ks,
                ks_pvalue,
                drifted: ks_pvalue < level && large,
            }
        })
        .collect();
    let predictions = compare_classes(&reference.classes, window.classes, level, settings.js_threshold);
    let detected = predictions.drifted || features_drifted(&features);
    Report { samples: window.len, detected, features, predictions }
}

fn features_drifted(features: &[FeatureDrift]) -> bool {
    features.iter().any(|f| f.drifted)
}

/// The class test: the reference's proportions, each count plus one half (so that a class the reference never
/// predicted is expected rarely rather than never), against the window's counts.
fn compare_classes(reference: &[u64], mut counts: Vec<u64>, level: f64, js_threshold: f64) -> ClassDrift {
    let k = reference.len().max(counts.len());
    counts.resize(k, 0);
    let mut expected: Vec<f64> = to_f64(reference);
    expected.resize(k, 0.0);
    let smoothed: Vec<f64> = expected.iter().map(|c| c + 0.5).collect();
    let total_reference: f64 = smoothed.iter().sum();
    #[allow(clippy::cast_precision_loss)]
    let n = counts.iter().sum::<u64>() as f64;
    let expected: Vec<f64> = smoothed.iter().map(|c| c / total_reference * n).collect();
    let observed = to_f64(&counts);
    let (chi2, chi2_pvalue) = stats::chi_square(&observed, &expected);
    let jensenshannon = stats::jensen_shannon(&to_f64(reference), &observed);
    let drifted = chi2_pvalue < level && jensenshannon >= js_threshold;
    ClassDrift { chi2, chi2_pvalue, jensenshannon, counts, drifted }
}

fn to_f64(counts: &[u64]) -> Vec<f64> {
    #[allow(clippy::cast_precision_loss)]
    counts.iter().map(|&c| c as f64).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A deterministic stand-in for a normal variable: evenly spaced quantiles of a uniform, shuffled by a
    /// multiplicative step so that windows are spread over the whole range.
    fn values(n: usize, shift: f64) -> Vec<f32> {
        (0..n).map(|i| ((i * 7919) % n) as f64 / n as f64 + shift).map(|x| x as f32).collect()
    }

    fn observations(n: usize, shift: f64, classes: usize) -> Vec<Observation> {
        values(n, shift)
            .into_iter()
            .enumerate()
            .map(|(i, x)| Observation { features: smallvec::smallvec![x, 0.5], class: i % classes, confidence: 0.9 })
            .collect()
    }

    fn reference() -> Profile {
        let names = ["x".to_string(), "flat".to_string()];
        Profile::build(("m", "1"), "test".into(), &names, &observations(5000, 0.0, 4)).expect("profile")
    }

    fn window_of(observations: &[Observation]) -> Window {
        let now = Instant::now();
        let mut w = Window::default();
        for o in observations {
            w.push(o, now);
        }
        w
    }

    #[test]
    fn a_window_closes_at_its_size_or_when_old_enough_to_test() {
        let settings = Settings { size: 3, min_size: 2, max_age: Duration::from_secs(10), ..Settings::default() };
        let t0 = Instant::now();
        let mut w = Window::default();
        let o = Observation { features: smallvec::smallvec![1.0], class: 0, confidence: 1.0 };
        assert!(!w.is_due(&settings, t0 + Duration::from_secs(60)), "an empty window never closes");
        w.push(&o, t0);
        assert!(!w.is_due(&settings, t0 + Duration::from_secs(60)), "one request is too few to test");
        w.push(&o, t0 + Duration::from_secs(1));
        assert!(!w.is_due(&settings, t0 + Duration::from_secs(9)));
        assert!(w.is_due(&settings, t0 + Duration::from_secs(10)), "old enough, large enough");
        w.push(&o, t0 + Duration::from_secs(2));
        assert!(w.is_due(&settings, t0 + Duration::from_secs(2)), "full");
    }

    #[test]
    fn the_reference_itself_does_not_drift() {
        let report = compare(&reference(), window_of(&observations(1000, 0.0, 4)), &Settings::default());
        assert!(!report.detected, "{report:#?}");
        assert_eq!(report.samples, 1000);
        assert_eq!(report.features.iter().map(|f| f.feature.as_str()).collect::<Vec<_>>(), ["x", "flat", "confidence"]);
        assert!(report.features[0].psi < 0.01 && report.features[0].ks < 0.01, "{report:#?}");
    }

    #[test]
    fn a_shifted_feature_drifts_and_names_itself() {
        // Half a standard deviation of the uniform (0.29 / 2).
        let report = compare(&reference(), window_of(&observations(1000, 0.144, 4)), &Settings::default());
        assert!(report.detected);
        let drifted: Vec<_> = report.features.iter().filter(|f| f.drifted).map(|f| f.feature.as_str()).collect();
        assert_eq!(drifted, ["x"]);
        assert!(report.features[0].psi >= 0.1 && report.features[0].ks_pvalue < 1e-10, "{report:#?}");
        assert!(!report.predictions.drifted);
    }

    #[test]
    fn a_small_but_significant_shift_is_not_drift() {
        // 0.05 of the range: KS rejects with 5,000 requests, but PSI and Jensen-Shannon stay under 0.1.
        let settings = Settings { size: 5000, ..Settings::default() };
        let report = compare(&reference(), window_of(&observations(5000, 0.05, 4)), &settings);
        let x = &report.features[0];
        assert!(x.ks_pvalue < 0.001 && x.psi < 0.1 && x.jensenshannon < 0.1, "{report:#?}");
        assert!(!report.detected);
    }

    #[test]
    fn a_huge_output_counts_its_high_classes_as_one() {
        let mut scores = vec![0.0; 5000];
        scores[4321] = 1.0;
        let o = Observation::of(smallvec::smallvec![0.5], &scores).expect("an output");
        assert_eq!((o.class, o.confidence), (super::super::MAX_CLASSES, 1.0));
        let mut w = Window::default();
        w.push(&o, Instant::now());
        assert_eq!(w.classes.len(), super::super::MAX_CLASSES + 1);
        assert!(Observation::of(smallvec::smallvec![], &[]).is_none());
    }

    #[test]
    fn predictions_of_one_class_only_drift() {
        let mut window = observations(1000, 0.0, 4);
        for o in &mut window {
            o.class = 2;
        }
        let report = compare(&reference(), window_of(&window), &Settings::default());
        assert!(report.predictions.drifted && report.detected, "{report:#?}");
        assert_eq!(report.predictions.counts, vec![0, 0, 1000, 0]);
        // A class the reference never predicted counts too, without an infinite statistic.
        let mut window = observations(1000, 0.0, 4);
        window[0].class = 7;
        let report = compare(&reference(), window_of(&window), &Settings::default());
        assert!(report.predictions.chi2.is_finite() && report.predictions.counts.len() == 8);
    }
}
