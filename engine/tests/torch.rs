//! The TorchScript backend on the CPU with the bundled `models/signnet/signnet.pt` (traced from the weights of
//! `signnet.onnx` by the same script): the reference probabilities within 1e-4, one by one, as a batch and through a
//! model whose two workers share one module; the same output as the ONNX backend within 1e-5 (parity between the
//! backends); and files that are not TorchScript (a `torch.save` archive, a legacy pickle) refused at load with a
//! message that says how to export, never a crash.
//!
//! Without a declaration the file alone serves: the requests give the shape, batches of the reference match it,
//! and a shape the model cannot take is the client's error with libtorch's message, the worker going on. A
//! declaration is read from beside the file, from the archive's config, or from the file's own `_extra_files`, in
//! that order.
#![cfg(feature = "torch")]

mod support;

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use ferroserve_engine::{
    backend::{
        torch::{config_path, TorchFactory},
        Declaration, Shape,
    },
    BackendError, BackendFactory, Device, EngineError, Model,
};
use support::{
    options, policy,
    signnet::{self, assert_concurrent_rounds_match, assert_matches, assert_rows_match, reference, stacked, CLASSES},
};

/// signnet's per-sample input shape.
const LANDMARKS: [usize; 3] = [30, 21, 3];

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
    assert_eq!((spec.input_name.as_str(), &spec.input_shape), ("landmarks", &Shape::fixed(LANDMARKS)));
    assert_eq!((spec.output_name.as_str(), &spec.output_shape), ("probabilities", &Shape::fixed([10])));
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
        let input = &input[..batch * torch.spec().input_len().expect("fixed")];
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

/// Loads the copy of signnet at `path`, which must load.
fn load(path: &Path, archived: Option<&Declaration>) -> TorchFactory {
    TorchFactory::load_declared(path, Device::Cpu, archived).expect("the copy loads")
}

#[test]
fn without_a_declaration_the_requests_give_the_shape() {
    let path = signnet_copy("alone", None);
    let factory = load(&path, None);
    let spec = factory.spec();
    assert_eq!((spec.input_name.as_str(), spec.output_name.as_str()), ("input", "output"));
    assert_eq!((&spec.input_shape, &spec.output_shape), (&Shape::unknown(), &Shape::unknown()));
    let samples = reference();
    let mut backend = factory.create(0).expect("a backend");
    for sample in &samples {
        let out = backend.infer_shaped(1, &LANDMARKS, &sample.input).expect("inference");
        assert_eq!(out.shape, [CLASSES], "the forward gives the output's shape");
        assert_matches(sample, &out.values, TOLERANCE);
    }
    let out = backend.infer_shaped(samples.len(), &LANDMARKS, &stacked(&samples)).expect("a batch");
    assert_rows_match(&samples, &out.values, TOLERANCE);
    std::fs::remove_dir_all(path.parent().expect("folder")).ok();
}

#[test]
fn a_shape_the_model_cannot_take_is_the_clients_error_with_libtorchs_message() {
    let path = signnet_copy("rejected", None);
    let mut backend = load(&path, None).create(0).expect("a backend");
    // 20 points a frame: the per-frame layer takes 21 x 3 values.
    match backend.infer_shaped(2, &[30, 20, 3], &vec![0.5; 2 * 30 * 20 * 3]) {
        Err(BackendError::Input(message)) => {
            assert!(message.starts_with("the model rejected input of shape [30, 20, 3]: "), "{message}");
            assert!(message.contains("mat1 and mat2 shapes cannot be multiplied"), "libtorch's words: {message}");
        }
        other => panic!("expected the input to be rejected, got {other:?}"),
    }
    let sample = &reference()[0];
    let out = backend.infer_shaped(1, &LANDMARKS, &sample.input).expect("the backend goes on");
    assert_matches(sample, &out.values, TOLERANCE);
    std::fs::remove_dir_all(path.parent().expect("folder")).ok();
}

#[test]
fn a_model_without_a_declaration_batches_by_shape_and_rejects_only_the_bad_shape() {
    let path = signnet_copy("model", None);
    let model = Model::start(&load(&path, None), options(2, policy(8, Duration::from_millis(2)))).expect("starts");
    let samples = reference();
    // Each reference sample, the same sequence cut to its first 15 frames (a shape the model takes: it pools over
    // time), and a sequence of 20-point frames (one it cannot take), submitted together.
    let short = |input: &[f32]| input[..15 * 21 * 3].to_vec();
    let mut pending = Vec::new();
    for sample in &samples {
        let good = model.submit_shaped(sample.input.clone(), Some(&LANDMARKS[..]), None).expect("accepted");
        let cut = model.submit_shaped(short(&sample.input), Some(&[15, 21, 3][..]), None).expect("accepted");
        let bad = model.submit_shaped(vec![0.5; 30 * 20 * 3], Some(&[30, 20, 3][..]), None).expect("accepted");
        pending.push((sample, good, cut, bad));
    }
    let mut alone = load(&path, None).create(0).expect("a backend");
    for (sample, good, cut, bad) in pending {
        let good = good.blocking_recv().expect("answered").expect("the reference shape runs");
        assert_matches(sample, &good.output, TOLERANCE);
        assert_eq!(good.shape.as_deref(), Some(&[CLASSES][..]));
        let cut = cut.blocking_recv().expect("answered").expect("15 frames run");
        let expected = alone.infer_shaped(1, &[15, 21, 3], &short(&sample.input)).expect("15 frames alone");
        assert_eq!(cut.output, expected.values, "the same answer in a batch as alone: no other shape mixed in");
        match bad.blocking_recv().expect("answered") {
            Err(EngineError::Backend(BackendError::Input(message))) => assert!(message.contains("[30, 20, 3]")),
            other => panic!("expected the shape to be rejected, got {other:?}"),
        }
    }
    assert_eq!(model.stats().failed_batches, 0, "rejected shapes are not model failures");
    model.shutdown();
    std::fs::remove_dir_all(path.parent().expect("folder")).ok();
}

#[test]
fn a_declaration_inside_the_file_is_read_from_its_extra_files() {
    // Written by torch.jit.save(traced, path, _extra_files={"ferroserve.json": ...}) (models/signnet/make_signnet.py).
    let factory = TorchFactory::load(&fixture("declared_in_extra_files.pt"), Device::Cpu).expect("loads");
    let spec = factory.spec();
    assert_eq!((spec.input_name.as_str(), spec.output_name.as_str()), ("points", "sums"));
    assert_eq!(spec.input_shape, Shape::partial(vec![None, Some(3)]));
    let mut backend = factory.create(0).expect("a backend");
    let input: Vec<f32> = (0..12).map(|v| v as f32).collect();
    let out = backend.infer_shaped(2, &[2, 3], &input).expect("two samples of two points");
    assert_eq!((out.shape, out.values), (vec![2], vec![6.0, 24.0, 42.0, 60.0]), "twice the sum of each point");
}

#[test]
fn declarations_are_taken_from_beside_the_file_then_the_archive_then_the_file() {
    // signnet with a declaration inside (appended as torch.jit.save writes it) that names its tensors.
    let path = signnet_copy("extra", None);
    let inside = r#"{"input": {"name": "inside", "shape": [30, 21, 3]}, "output": {"name": "p"}}"#;
    append_extra_file(&path, "signnet/extra/ferroserve.json", inside);
    let spec = load(&path, None).spec().clone();
    assert_eq!((spec.input_name.as_str(), &spec.input_shape), ("inside", &Shape::fixed(LANDMARKS)));
    assert_eq!(spec.output_shape, Shape::fixed([CLASSES]), "a fixed input shape gives a first forward at load");

    let archived = Declaration::parse(r#"{"input": {"name": "archived", "shape": [-1, 21, 3]}}"#).expect("valid");
    let spec = load(&path, Some(&archived)).spec().clone();
    assert_eq!((spec.input_name.as_str(), &spec.output_shape), ("archived", &Shape::unknown()));

    std::fs::write(config_path(&path), r#"{"input": {"name": "beside", "shape": [30, 21, 3]}}"#).expect("write");
    assert_eq!(load(&path, Some(&archived)).spec().input_name, "beside");
    std::fs::remove_dir_all(path.parent().expect("folder")).ok();

    let path = signnet_copy("bad-extra", None);
    append_extra_file(&path, "signnet/extra/ferroserve.json", r#"{"input": {"shape": "any"}}"#);
    let message = load_error(&path);
    assert!(message.contains(r#"_extra_files["ferroserve.json"]: input.shape must be a list"#), "{message}");
    std::fs::remove_dir_all(path.parent().expect("folder")).ok();
}

/// Adds `name` to the TorchScript zip at `path`, as `torch.jit.save` stores an `_extra_files` entry.
fn append_extra_file(path: &Path, name: &str, content: &str) {
    let file = std::fs::OpenOptions::new().read(true).write(true).open(path).expect("open");
    let mut zip = zip::ZipWriter::new_append(file).expect("a zip");
    zip.start_file(name, zip::write::SimpleFileOptions::default()).expect("entry");
    std::io::Write::write_all(&mut zip, content.as_bytes()).expect("write");
    zip.finish().expect("finish");
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
