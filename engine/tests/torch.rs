//! The TorchScript backend on the CPU with the bundled `models/signnet/signnet.pt` (traced from the weights of
//! `signnet.onnx` by the same script): the reference probabilities within 1e-4, one by one, as a batch and through a
//! model whose two workers share one module; the same output as the ONNX backend within 1e-5 (parity between the
//! backends); and files that are not TorchScript (a `torch.save` archive, a legacy pickle) refused at load with a
//! message that says how to export, never a crash.
#![cfg(feature = "torch")]

mod support;

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use ferroserve_engine::{
    backend::torch::{config_path, TorchFactory},
    BackendError, BackendFactory, Device, Model,
};
use support::{
    options, policy,
    signnet::{self, assert_concurrent_rounds_match, assert_matches, assert_rows_match, reference, stacked},
};

const TOLERANCE: f32 = 1e-4;

fn signnet() -> TorchFactory {
    TorchFactory::load(&signnet::dir().join("signnet.pt"), Device::Cpu).expect("signnet.pt loads (run `make deps`)")
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

/// The load error's message, which must name the file.
fn load_error(path: &Path) -> String {
    match TorchFactory::load(path, Device::Cpu) {
        Err(BackendError::Load(msg)) => {
            assert!(msg.contains(&*path.to_string_lossy()), "{msg}");
            msg.to_string()
        }
        Err(other) => panic!("expected a load error, got {other}"),
        Ok(_) => panic!("{} loaded", path.display()),
    }
}

/// A copy of signnet.pt in a folder of its own, with `config` as its config file (none when `None`).
fn signnet_copy(test: &str, config: Option<&str>) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("fs-torch-{test}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp folder");
    let path = dir.join("copy.pt");
    std::fs::copy(signnet::dir().join("signnet.pt"), &path).expect("copy");
    if let Some(config) = config {
        std::fs::write(config_path(&path), config).expect("config");
    }
    path
}

#[test]
fn the_spec_comes_from_the_config_and_a_first_forward() {
    let factory = signnet();
    let spec = factory.spec();
    assert_eq!((spec.input_name.as_str(), spec.input_shape.as_slice()), ("landmarks", &[30, 21, 3][..]));
    assert_eq!((spec.output_name.as_str(), spec.output_shape.as_slice()), ("probabilities", &[10][..]));
    assert_eq!((factory.runtime(), factory.device()), ("torchscript", Device::Cpu));
}

#[test]
fn one_by_one_and_as_one_batch_match_the_reference() {
    let samples = reference();
    let mut backend = signnet().create(0).expect("a backend");
    for sample in &samples {
        assert_matches(sample, &backend.infer(1, &sample.input).expect("inference"), TOLERANCE);
    }
    let got = backend.infer(samples.len(), &stacked(&samples)).expect("inference");
    assert_rows_match(&samples, &got, TOLERANCE);
}

#[cfg(feature = "onnx")]
#[test]
fn torchscript_and_onnx_give_the_same_probabilities() {
    use ferroserve_engine::backend::{OnnxFactory, OnnxOptions};
    let dylib = std::env::var_os("ORT_DYLIB_PATH").expect("ORT_DYLIB_PATH is set by .cargo/config.toml");
    let onnx =
        OnnxFactory::load(&signnet::dir().join("signnet.onnx"), OnnxOptions { dylib: dylib.into(), intra_threads: 1 })
            .expect("signnet.onnx loads");
    let torch = signnet();
    assert_eq!(onnx.spec(), torch.spec(), "both backends describe the model alike");
    let input = stacked(&reference());
    for batch in [1, 8] {
        let input = &input[..batch * torch.spec().input_len()];
        let a = onnx.create(0).and_then(|mut b| b.infer(batch, input)).expect("ONNX inference");
        let b = torch.create(0).and_then(|mut b| b.infer(batch, input)).expect("TorchScript inference");
        let worst = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0.0_f32, f32::max);
        assert!(worst <= 1e-5, "batch {batch}: the backends differ by {worst}");
    }
}

#[test]
fn two_workers_share_one_module_and_match_the_reference() {
    let model = Model::start(&signnet(), options(2, policy(8, Duration::from_millis(2)))).expect("two workers");
    assert_eq!((model.runtime(), model.device()), ("torchscript", Device::Cpu));
    assert_concurrent_rounds_match(&model, 4, TOLERANCE);
    model.shutdown();
}

#[test]
fn torch_save_files_are_refused_with_the_way_to_export() {
    for (file, what) in [
        ("torch_save_module.pt", "a torch.save archive (a pickled model or a state_dict), not TorchScript"),
        ("state_dict_legacy.pth", "a pickle (torch.save in the legacy format), not TorchScript"),
    ] {
        let msg = load_error(&fixture(file));
        assert!(msg.contains(what), "{file}: {msg}");
        assert!(msg.contains("torch.jit.trace") && msg.contains("torch.jit.script"), "{file}: {msg}");
    }
}

#[test]
fn other_files_are_load_errors() {
    let msg = load_error(&signnet::dir().join("index_to_name.json"));
    assert!(msg.contains("not a TorchScript file (PytorchStreamReader failed reading zip archive"), "{msg}");
    assert!(load_error(&signnet::dir().join("no-such-model.pt")).ends_with("no such file"));
}

#[test]
fn a_missing_config_says_where_the_shape_goes() {
    let path = signnet_copy("no-config", None);
    let msg = load_error(&path);
    assert!(msg.contains("copy.pt.json") && msg.contains("input shape"), "{msg}");
    std::fs::remove_dir_all(path.parent().expect("folder")).ok();
}

#[test]
fn a_config_that_disagrees_with_the_model_is_refused() {
    for (config, why) in [
        (r#"{"input": {"shape": [30, 21, 3]}, "output": {"shape": [9]}}"#, "the model returns [10]"),
        (r#"{"input": {"shape": [30, 21]}}"#, "the first forward failed"),
        (r#"{"input": {"name": "landmarks"}}"#, "input.shape is missing"),
        (r#"{"input": {"shape": "30x21x3"}}"#, "input.shape must be a list of sizes"),
    ] {
        let path = signnet_copy("bad-config", Some(config));
        let msg = load_error(&path);
        assert!(msg.contains(why), "{config}: {msg}");
        std::fs::remove_dir_all(path.parent().expect("folder")).ok();
    }
}
