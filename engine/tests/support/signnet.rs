//! The bundled signnet model and its reference (`models/signnet/reference.json`: eight inputs with the
//! probabilities onnxruntime gave in Python), shared by the tests of every backend.

use std::path::{Path, PathBuf};

use ferroserve_engine::Model;
use serde_json::Value;

/// Classes signnet scores.
pub(crate) const CLASSES: usize = 10;

/// `models/signnet`.
pub(crate) fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/signnet")
}

fn read_json(name: &str) -> Value {
    let text = std::fs::read_to_string(dir().join(name)).expect("the bundled model's files are there");
    serde_json::from_str(&text).expect("valid JSON")
}

/// One reference sample: its flattened input, the probabilities and the label onnxruntime gave.
pub(crate) struct Sample {
    pub(crate) input: Vec<f32>,
    pub(crate) probabilities: Vec<f32>,
    pub(crate) label: String,
}

/// The eight reference samples.
pub(crate) fn reference() -> Vec<Sample> {
    let json = read_json("reference.json");
    let field = |key: &str| json[key].clone();
    let why = "reference.json has the documented fields";
    let landmarks: Vec<Vec<Vec<Vec<f32>>>> = serde_json::from_value(field("landmarks")).expect(why);
    let probabilities: Vec<Vec<f32>> = serde_json::from_value(field("probabilities")).expect(why);
    let labels: Vec<String> = serde_json::from_value(field("labels")).expect(why);
    let samples: Vec<_> = landmarks
        .into_iter()
        .zip(probabilities)
        .zip(labels)
        .map(|((frames, probabilities), label)| Sample {
            input: frames.into_iter().flatten().flatten().collect(),
            probabilities,
            label,
        })
        .collect();
    assert_eq!(samples.len(), 8);
    samples
}

/// The inputs of `samples` stacked into one batch.
pub(crate) fn stacked(samples: &[Sample]) -> Vec<f32> {
    samples.iter().flat_map(|s| s.input.iter().copied()).collect()
}

/// The label name of the most probable class.
pub(crate) fn label_of(probabilities: &[f32]) -> String {
    let best = probabilities.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map(|(i, _)| i).expect("classes");
    read_json("index_to_name.json")[best.to_string()].as_str().expect("every class has a name").to_string()
}

/// Checks one output row against the reference: every probability within `tolerance`, and the same label.
pub(crate) fn assert_matches(sample: &Sample, got: &[f32], tolerance: f32) {
    assert_eq!(got.len(), sample.probabilities.len());
    for (i, (g, w)) in got.iter().zip(&sample.probabilities).enumerate() {
        assert!((g - w).abs() <= tolerance, "{}: class {i} is {g}, onnxruntime gave {w}", sample.label);
    }
    assert_eq!(label_of(got), sample.label);
}

/// Checks a batch's output, row by row, against the samples it was made of.
pub(crate) fn assert_rows_match(samples: &[Sample], got: &[f32], tolerance: f32) {
    assert_eq!(got.len(), samples.len() * CLASSES);
    for (sample, row) in samples.iter().zip(got.chunks_exact(CLASSES)) {
        assert_matches(sample, row, tolerance);
    }
}

/// Submits every reference sample from `rounds` threads at once through `model`, checks each answer (within
/// `tolerance`, from the model's device), then that every request ran and no batch failed.
pub(crate) fn assert_concurrent_rounds_match(model: &Model, rounds: usize, tolerance: f32) {
    let samples = reference();
    std::thread::scope(|s| {
        for _ in 0..rounds {
            let samples = &samples;
            s.spawn(move || {
                let pending: Vec<_> =
                    samples.iter().map(|x| model.submit(x.input.clone()).expect("accepted")).collect();
                for (sample, rx) in samples.iter().zip(pending) {
                    let out = rx.blocking_recv().expect("answered").expect("success");
                    assert_eq!(out.device, model.device());
                    assert_matches(sample, &out.output, tolerance);
                }
            });
        }
    });
    let stats = model.stats();
    assert_eq!((stats.batched, stats.failed_batches), ((rounds * samples.len()) as u64, 0));
}
