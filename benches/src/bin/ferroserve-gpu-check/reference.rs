//! signnet's reference (`reference.json` of the model folder: eight inputs with the probabilities onnxruntime gave
//! in Python), read at run time from the folder the check is given, so that the bundle carries it beside the model.

use std::path::Path;

use serde_json::Value;

/// TF32 convolutions (cuDNN's default) move the probabilities by up to about 1e-3; the CUDA tests allow the same.
pub(crate) const TOLERANCE: f32 = 2e-3;

/// The eight reference samples: each input flattened, and the probabilities expected for it.
pub(crate) struct Reference {
    pub(crate) inputs: Vec<Vec<f32>>,
    pub(crate) probabilities: Vec<Vec<f32>>,
}

impl Reference {
    /// Reads `reference.json` in `models`.
    ///
    /// # Errors
    /// The file missing or not of the documented shape (`landmarks` [8, frames, 21, 3], `probabilities` [8, 10]).
    pub(crate) fn read(models: &Path) -> Result<Self, String> {
        let path = models.join("reference.json");
        let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let json: Value = serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        let field = |key: &str| json.get(key).cloned().ok_or_else(|| format!("{}: no `{key}`", path.display()));
        let bad = |e: serde_json::Error| format!("{}: {e}", path.display());
        let landmarks: Vec<Vec<Vec<Vec<f32>>>> = serde_json::from_value(field("landmarks")?).map_err(bad)?;
        let probabilities: Vec<Vec<f32>> = serde_json::from_value(field("probabilities")?).map_err(bad)?;
        if landmarks.is_empty() || landmarks.len() != probabilities.len() {
            return Err(format!("{}: as many landmarks as probabilities, at least one", path.display()));
        }
        let inputs = landmarks.into_iter().map(|frames| frames.into_iter().flatten().flatten().collect()).collect();
        Ok(Self { inputs, probabilities })
    }

    /// `batch` reference inputs, cycled, stacked into one batch.
    pub(crate) fn batch(&self, batch: usize) -> Vec<f32> {
        self.inputs.iter().cycle().take(batch).flatten().copied().collect()
    }

    /// The largest difference between `output` (the first `rows` samples' probabilities, stacked) and the
    /// reference's.
    ///
    /// # Errors
    /// `output` of another length than the reference's first `rows` rows.
    pub(crate) fn max_difference(&self, rows: usize, output: &[f32]) -> Result<f32, String> {
        let expected: Vec<f32> = self.probabilities.iter().cycle().take(rows).flatten().copied().collect();
        if expected.len() != output.len() {
            return Err(format!("{} values for {rows} samples, expected {}", output.len(), expected.len()));
        }
        Ok(expected.iter().zip(output).map(|(e, o)| (e - o).abs()).fold(0.0, f32::max))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two samples of one frame of 21 points: the first all 0, the second all 1.
    fn two_samples() -> (tempfile::TempDir, Reference) {
        let dir = tempfile::tempdir().expect("a temporary folder");
        let frame = |v: f32| vec![vec![vec![v; 3]; 21]];
        let json = serde_json::json!({
            "landmarks": [frame(0.0), frame(1.0)],
            "probabilities": [[0.25, 0.75], [0.5, 0.5]],
            "labels": ["a", "b"],
        });
        std::fs::write(dir.path().join("reference.json"), json.to_string()).expect("written");
        let reference = Reference::read(dir.path()).expect("a valid reference");
        (dir, reference)
    }

    #[test]
    fn batches_cycle_through_the_samples() {
        let (_dir, reference) = two_samples();
        let batch = reference.batch(3);
        assert_eq!(batch.len(), 3 * 63);
        assert!(batch[..63].iter().all(|&v| v == 0.0) && batch[63..126].iter().all(|&v| v == 1.0));
        assert!(batch[126..].iter().all(|&v| v == 0.0));
    }

    #[test]
    fn the_difference_is_the_largest_over_every_row() {
        let (_dir, reference) = two_samples();
        let got = reference.max_difference(3, &[0.25, 0.75, 0.5, 0.5, 0.2, 0.75]).expect("same length");
        assert!((got - 0.05).abs() < 1e-6, "{got}");
        assert!(reference.max_difference(2, &[0.25, 0.75]).is_err(), "a row short");
    }

    #[test]
    fn a_malformed_reference_is_refused_with_its_path() {
        let dir = tempfile::tempdir().expect("a temporary folder");
        std::fs::write(dir.path().join("reference.json"), r#"{"landmarks": [], "probabilities": []}"#)
            .expect("written");
        let error = Reference::read(dir.path()).err().expect("no samples");
        assert!(error.contains("reference.json") && error.contains("at least one"), "{error}");
        let error = Reference::read(&dir.path().join("missing")).err().expect("no file");
        assert!(error.contains("missing/reference.json"), "{error}");
    }
}
