//! A model's reference profile: what live traffic is compared with. Per feature (the confidence included) its
//! ten quantile bins and their counts (for PSI and Jensen-Shannon), and a sorted sample of at most
//! [`MAX_SAMPLE`] values (for Kolmogorov-Smirnov); and the predicted-class counts. Built by
//! `ferroserve drift-profile` from a file of requests, or by the server from a model's first requests; stored
//! as JSON (`<model>.drift.json`).

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::{features::CONFIDENCE, stats, Observation};

/// Quantile bins per feature (Evidently's and NannyML's default).
pub const BINS: usize = 10;
/// Most reference values kept per feature for the KS test: a larger reference keeps this many evenly spaced
/// order statistics, which draw its distribution function to within 1/`MAX_SAMPLE`.
pub const MAX_SAMPLE: usize = 5_000;
/// The format version written into profiles.
const FORMAT: u32 = 1;

/// The reference distribution of one feature.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeatureProfile {
    /// The feature's name.
    pub name: String,
    /// Inner edges of its quantile bins (see [`stats::quantile_edges`]).
    pub edges: Vec<f64>,
    /// Reference counts in those bins (`edges.len() + 1`).
    pub counts: Vec<u64>,
    /// Mean of the reference values.
    pub mean: f64,
    /// Standard deviation of the reference values.
    pub std: f64,
    /// At most [`MAX_SAMPLE`] reference values, sorted.
    pub sample: Vec<f64>,
}

/// A model's reference profile.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Profile {
    /// Format version (1).
    pub format: u32,
    /// The model it was made for.
    pub model_name: String,
    /// Its version.
    pub model_version: String,
    /// Where the reference came from (a file's name, or "first N requests").
    pub source: String,
    /// Requests in the reference.
    pub samples: u64,
    /// Per feature, the confidence last.
    pub features: Vec<FeatureProfile>,
    /// Reference count of each predicted class, by class index.
    pub classes: Vec<u64>,
}

/// A profile that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    /// The file cannot be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The system's error.
        source: std::io::Error,
    },
    /// The file is not a profile.
    #[error("{path} is not a drift profile: {message}")]
    Invalid {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
}

impl Profile {
    /// The profile of `observations` of the features `names` (the confidence is added after them).
    ///
    /// # Errors
    /// When there are no observations, or one has another number of features than `names`.
    pub fn build(
        model: (&str, &str),
        source: String,
        names: &[String],
        observations: &[Observation],
    ) -> Result<Self, String> {
        if observations.is_empty() {
            return Err("no requests to build a reference from".into());
        }
        if let Some(bad) = observations.iter().find(|o| o.features.len() != names.len()) {
            return Err(format!("a request gave {} features, expected {}", bad.features.len(), names.len()));
        }
        let mut features: Vec<FeatureProfile> = names
            .iter()
            .enumerate()
            .map(|(i, name)| feature(name, observations.iter().map(|o| f64::from(o.features[i]))))
            .collect();
        features.push(feature(CONFIDENCE, observations.iter().map(|o| f64::from(o.confidence))));
        let mut classes = vec![0; observations.iter().map(|o| o.class + 1).max().unwrap_or(0)];
        for o in observations {
            classes[o.class] += 1;
        }
        Ok(Self {
            format: FORMAT,
            model_name: model.0.into(),
            model_version: model.1.into(),
            source,
            samples: observations.len() as u64,
            features,
            classes,
        })
    }

    /// The feature names the profile holds, the confidence included.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.features.iter().map(|f| f.name.as_str())
    }

    /// Reads a profile written by [`Self::write`].
    ///
    /// # Errors
    /// [`ProfileError`] naming the file.
    pub fn read(path: &Path) -> Result<Self, ProfileError> {
        let text =
            std::fs::read(path).map_err(|source| ProfileError::Io { path: path.display().to_string(), source })?;
        let invalid = |message: String| ProfileError::Invalid { path: path.display().to_string(), message };
        let profile: Self = serde_json::from_slice(&text).map_err(|e| invalid(e.to_string()))?;
        profile.check().map_err(invalid)?;
        Ok(profile)
    }

    /// Writes the profile as JSON.
    ///
    /// # Errors
    /// [`ProfileError::Io`] naming the file.
    pub fn write(&self, path: &Path) -> Result<(), ProfileError> {
        let text = serde_json::to_vec_pretty(self)
            .map_err(|e| ProfileError::Invalid { path: path.display().to_string(), message: e.to_string() })?;
        std::fs::write(path, text).map_err(|source| ProfileError::Io { path: path.display().to_string(), source })
    }

    /// That the profile is one this version reads and is consistent.
    fn check(&self) -> Result<(), String> {
        if self.format != FORMAT {
            return Err(format!("format {} (this ferroserve reads {FORMAT})", self.format));
        }
        for f in &self.features {
            let sorted = f.sample.windows(2).all(|w| w[0] <= w[1]);
            if f.counts.len() != f.edges.len() + 1 || f.sample.is_empty() || !sorted {
                return Err(format!("feature {} has inconsistent bins or sample", f.name));
            }
        }
        if self.features.last().map(|f| f.name.as_str()) != Some(CONFIDENCE) {
            return Err(format!("the last feature must be `{CONFIDENCE}`"));
        }
        Ok(())
    }
}

/// The profile of one feature's reference values.
fn feature(name: &str, values: impl Iterator<Item = f64>) -> FeatureProfile {
    let mut sorted: Vec<f64> = values.collect();
    sorted.sort_by(f64::total_cmp);
    let edges = stats::quantile_edges(&sorted, BINS);
    let counts = stats::bin_counts(&edges, sorted.iter().copied());
    #[allow(clippy::cast_precision_loss)]
    let n = sorted.len().max(1) as f64;
    let mean = sorted.iter().sum::<f64>() / n;
    let std = (sorted.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / n).sqrt();
    FeatureProfile { name: name.into(), edges, counts, mean, std, sample: thin(sorted) }
}

/// At most [`MAX_SAMPLE`] evenly spaced order statistics of `sorted` (all of them when there are fewer).
fn thin(sorted: Vec<f64>) -> Vec<f64> {
    if sorted.len() <= MAX_SAMPLE {
        return sorted;
    }
    (0..MAX_SAMPLE)
        .map(|i| {
            #[allow(clippy::cast_precision_loss)]
            let q = (i as f64 + 0.5) / MAX_SAMPLE as f64;
            stats::quantile(&sorted, q).unwrap_or_default()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn observation(x: f32, class: usize) -> Observation {
        Observation { features: smallvec::smallvec![x], class, confidence: 0.9 }
    }

    #[test]
    fn a_profile_holds_bins_a_sorted_sample_and_class_counts() {
        let observations: Vec<_> = (0..100).rev().map(|i| observation(i as f32, i % 3)).collect();
        let p = Profile::build(("m", "1.0"), "test".into(), &["x".into()], &observations).expect("profile");
        assert_eq!(p.names().collect::<Vec<_>>(), ["x", "confidence"]);
        let x = &p.features[0];
        assert_eq!((x.edges.len(), x.counts.iter().sum::<u64>()), (9, 100));
        assert!(x.counts.iter().all(|&c| c == 10), "{:?}", x.counts);
        assert_eq!((x.sample.len(), x.sample[0], x.mean), (100, 0.0, 49.5));
        assert_eq!(p.classes, vec![34, 33, 33]);
        // A constant confidence: one edge, everything in the upper bin.
        assert_eq!(p.features[1].counts, vec![0, 100]);
    }

    #[test]
    fn a_profile_round_trips_and_a_broken_one_is_named() {
        let observations: Vec<_> = (0..20).map(|i| observation(i as f32, 0)).collect();
        let p = Profile::build(("m", "1.0"), "test".into(), &["x".into()], &observations).expect("profile");
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("m.drift.json");
        p.write(&path).expect("written");
        let read = Profile::read(&path).expect("read");
        // serde_json reads a float back to within an ulp.
        let edges = |p: &Profile| p.features.iter().flat_map(|f| f.edges.clone()).collect::<Vec<_>>();
        assert!(edges(&read).iter().zip(edges(&p)).all(|(a, b)| (a - b).abs() < 1e-12));
        assert_eq!(
            (read.features[0].counts.clone(), read.features[0].sample.clone()),
            (p.features[0].counts.clone(), p.features[0].sample.clone())
        );
        assert_eq!((read.classes, read.samples, read.source), (p.classes.clone(), p.samples, p.source.clone()));
        std::fs::write(&path, br#"{"format": 1}"#).expect("written");
        let e = Profile::read(&path).expect_err("incomplete").to_string();
        assert!(e.contains("m.drift.json is not a drift profile"), "{e}");
        assert!(Profile::build(("m", "1.0"), "t".into(), &["x".into()], &[]).is_err());
    }

    #[test]
    fn a_large_reference_keeps_evenly_spaced_order_statistics() {
        let thinned = thin((0..20_000).map(f64::from).collect());
        assert_eq!(thinned.len(), MAX_SAMPLE);
        assert!((thinned[MAX_SAMPLE / 2] - 10_000.0).abs() < 5.0);
    }
}
