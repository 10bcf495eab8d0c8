//! The ONNX Runtime backend on the bundled signnet model, against the outputs onnxruntime gave in Python
//! (`models/signnet/reference.json`): the same probabilities within 1e-4 and the same label, whether the
//! reference inputs run one by one, as one batch of 8, or concurrently through a model with two workers; and a
//! model that cannot be loaded is a load error with a message, never a panic. A batch run with its shape stated
//! gives the same rows, and ONNX Runtime's refusal of another shape is the input's error.
#![cfg(feature = "onnx")]

mod support;

use std::{path::Path, time::Duration};

use ferroserve_engine::{
    backend::{OnnxFactory, OnnxOptions},
    BackendError, BackendFactory, Model,
};
use support::{
    options, policy,
    signnet::{self, assert_concurrent_rounds_match, assert_matches, assert_rows_match, reference, stacked},
};

const TOLERANCE: f32 = 1e-4;

fn onnx_options() -> OnnxOptions {
    OnnxOptions {
        dylib: std::env::var_os("ORT_DYLIB_PATH").expect("ORT_DYLIB_PATH is set by .cargo/config.toml").into(),
        intra_threads: 1,
    }
}

fn load(path: &Path) -> Result<OnnxFactory, BackendError> {
    OnnxFactory::load(path, onnx_options())
}

fn signnet() -> OnnxFactory {
    load(&signnet::dir().join("signnet.onnx")).expect("signnet loads (run `make deps` first)")
}

#[test]
fn signnet_has_the_expected_shapes() {
    let spec = signnet().spec().clone();
    assert_eq!(spec.input_name, "landmarks");
    assert_eq!(spec.input_shape, vec![30, 21, 3]);
    assert_eq!(spec.output_name, "probabilities");
    assert_eq!(spec.output_shape, vec![10]);
}

#[test]
fn one_by_one_matches_the_reference() {
    let mut backend = signnet().create(0).expect("a session");
    for sample in reference() {
        let got = backend.infer(1, &sample.input).expect("inference");
        assert_matches(&sample, &got, TOLERANCE);
    }
}

#[test]
fn one_batch_of_eight_matches_the_reference() {
    let samples = reference();
    let mut backend = signnet().create(0).expect("a session");
    let got = backend.infer(samples.len(), &stacked(&samples)).expect("inference");
    assert_rows_match(&samples, &got, TOLERANCE);
}

#[test]
fn a_batch_with_its_shape_matches_the_reference_and_another_shape_is_rejected() {
    let samples = reference();
    let mut backend = signnet().create(0).expect("a session");
    let got = backend.infer_shaped(samples.len(), &[30, 21, 3], &stacked(&samples)).expect("inference");
    assert_eq!(got.shape, [signnet::CLASSES]);
    assert_rows_match(&samples, &got.values, TOLERANCE);
    match backend.infer_shaped(1, &[30, 20, 3], &[0.5; 30 * 20 * 3]) {
        Err(BackendError::Input(message)) => assert!(!message.is_empty()),
        other => panic!("expected ONNX Runtime to reject the shape, got {other:?}"),
    }
}

#[test]
fn concurrent_requests_through_a_model_match_the_reference() {
    let model = Model::start(&signnet(), options(2, policy(8, Duration::from_millis(2)))).expect("two sessions");
    assert_concurrent_rounds_match(&model, 4, TOLERANCE);
    model.shutdown();
}

fn assert_load_error(path: &Path) {
    match load(path) {
        Err(BackendError::Load(msg)) => {
            assert!(msg.contains(&*path.to_string_lossy()), "{msg}");
        }
        Err(other) => panic!("expected a load error, got {other}"),
        Ok(_) => panic!("{} loaded", path.display()),
    }
}

#[test]
fn a_missing_file_is_a_load_error() {
    assert_load_error(&signnet::dir().join("no-such-model.onnx"));
}

#[test]
fn a_file_that_is_not_onnx_is_a_load_error() {
    assert_load_error(&signnet::dir().join("index_to_name.json"));
}

/// `fixtures/int64_identity.onnx` is one Identity node over an int64 `[batch, 3]` tensor, made with the `onnx`
/// package: `helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], ...)`, opset 13.
#[test]
fn a_model_whose_input_is_not_float32_is_refused_by_name() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/int64_identity.onnx");
    match load(&path) {
        Err(BackendError::Load(msg)) => {
            assert!(msg.contains("its input is Int64: ferroserve serves float32 inputs and outputs only"), "{msg}");
        }
        Err(other) => panic!("expected a load error, got {other}"),
        Ok(_) => panic!("an int64 model loaded"),
    }
}
