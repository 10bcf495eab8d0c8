//! In-process benchmarks: the ONNX and TorchScript backends alone on signnet (`Backend::infer` on a stacked batch,
//! no queue), and the echo fake behind a full `Model` (submit, batch, answer), which is what the engine adds per
//! request.
//!
//! Throughput is counted in samples, so criterion prints samples/s next to the time per batch. Environment:
//! `FERROSERVE_BENCH_INTRA_THREADS`, intra-op threads per ONNX Runtime session and of libtorch (default 1);
//! `FERROSERVE_BENCH_DEVICE`, the device of both backends (`cpu`, `cuda`, `cuda:N`, `mps`; default `cpu`);
//! `FERROSERVE_BENCH_BATCHES`, comma-separated batch sizes (default `1,16`).

use std::{hint::black_box, path::Path, time::Duration};

use criterion::{criterion_group, criterion_main, BenchmarkGroup, BenchmarkId, Criterion, Throughput};
use ferroserve_engine::{
    backend::{FakeBackend, FakeMode, OnnxFactory, OnnxOptions},
    device::{self, Availability, DeviceRequest},
    Backend, BackendFactory, BatchPolicy, Device, Model, ModelOptions,
};

/// The batch sizes to measure.
fn batches() -> Vec<usize> {
    std::env::var("FERROSERVE_BENCH_BATCHES").map_or_else(
        |_| vec![1, 16],
        |v| v.split(',').map(|b| b.trim().parse().expect("FERROSERVE_BENCH_BATCHES is a list of sizes")).collect(),
    )
}

/// The device both backends run on.
fn device() -> Device {
    let request: DeviceRequest =
        std::env::var("FERROSERVE_BENCH_DEVICE").unwrap_or_else(|_| "cpu".into()).parse().expect("a device");
    device::select(request, Availability::detect()).expect("FERROSERVE_BENCH_DEVICE is on this machine")
}

fn intra_threads() -> usize {
    std::env::var("FERROSERVE_BENCH_INTRA_THREADS")
        .map_or(1, |v| v.parse().expect("FERROSERVE_BENCH_INTRA_THREADS is a number of threads"))
}

/// The reference inputs of signnet, flattened, repeated to `batch` samples and stacked.
fn signnet_batch(batch: usize) -> Vec<f32> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/signnet/reference.json");
    let text = std::fs::read_to_string(&path).expect("models/signnet/reference.json is there");
    let json: serde_json::Value = serde_json::from_str(&text).expect("valid JSON");
    let samples: Vec<Vec<Vec<Vec<f32>>>> =
        serde_json::from_value(json["landmarks"].clone()).expect("landmarks [8, 30, 21, 3]");
    samples.into_iter().cycle().take(batch).flatten().flatten().flatten().collect()
}

fn signnet_onnx(device: Device) -> Result<OnnxFactory, ferroserve_engine::BackendError> {
    let options = OnnxOptions {
        dylib: std::env::var_os("ORT_DYLIB_PATH")
            .expect("ORT_DYLIB_PATH is set (cargo sets it from .cargo/config.toml)")
            .into(),
        intra_threads: intra_threads(),
    };
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/signnet/signnet.onnx");
    OnnxFactory::load_on(&path, options, device)
}

fn signnet() -> OnnxFactory {
    signnet_onnx(Device::Cpu).expect("signnet loads (run `make deps` first)")
}

/// `infer` at every batch size, in `group`; off the CPU the function is named after the device.
fn bench_infer(group: &mut BenchmarkGroup<'_, criterion::measurement::WallTime>, mut backend: Box<dyn Backend>) {
    let device = device();
    let name = if device == Device::Cpu { "infer".to_string() } else { format!("infer_{device}") };
    for batch in batches() {
        let input = signnet_batch(batch);
        group.throughput(Throughput::Elements(batch as u64));
        group.bench_with_input(BenchmarkId::new(&name, batch), &input, |b, input| {
            b.iter(|| backend.infer(batch, black_box(input)).expect("inference"));
        });
    }
}

fn onnx_backend(c: &mut Criterion) {
    // Off the CPU, ONNX Runtime needs its GPU build; without it, the TorchScript figures still come.
    let factory = match signnet_onnx(device()) {
        Ok(factory) => factory,
        Err(error) if device() != Device::Cpu => return eprintln!("onnx_signnet skipped on {}: {error}", device()),
        Err(error) => panic!("signnet loads (run `make deps` first): {error}"),
    };
    let mut group = c.benchmark_group("onnx_signnet");
    bench_infer(&mut group, factory.create(0).expect("a session"));
    group.finish();
}

/// The same model from `signnet.pt`, with libtorch's intra-op threads set as ONNX Runtime's.
#[cfg(feature = "torch")]
fn torchscript_backend(c: &mut Criterion) {
    use ferroserve_engine::backend::torch::{set_intra_op_threads, TorchFactory};
    set_intra_op_threads(intra_threads())
        .expect("the TorchScript plugin (cargo build --release -p ferroserve-torch-plugin)");
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/signnet/signnet.pt");
    let factory = TorchFactory::load(&path, device()).expect("signnet.pt loads (run `make deps` first)");
    let mut group = c.benchmark_group("torchscript_signnet");
    bench_infer(&mut group, factory.create(0).expect("a backend"));
    group.finish();
}

#[cfg(not(feature = "torch"))]
fn torchscript_backend(_: &mut Criterion) {
    eprintln!("torchscript_signnet skipped: built without the torch feature");
}

/// A model of one worker on the echo fake with signnet's shapes, whose batches are always `batch` requests: the
/// delay is never reached because each iteration submits exactly a full batch.
fn echo_model(batch: usize) -> Model {
    let fake = FakeBackend::new(signnet().spec().clone(), FakeMode::Echo);
    let options = ModelOptions {
        name: "echo".into(),
        version: "1.0".into(),
        workers: 1,
        queue_size: 1024,
        policy: BatchPolicy { max_batch_size: batch, max_delay: Duration::from_secs(60) },
        response_timeout: Duration::from_secs(60),
    };
    Model::start(&fake, options).expect("the fake always starts")
}

fn engine_overhead(c: &mut Criterion) {
    let mut group = c.benchmark_group("fake_model_echo");
    for batch in batches() {
        let model = echo_model(batch);
        let input = signnet_batch(1);
        group.throughput(Throughput::Elements(batch as u64));
        group.bench_function(BenchmarkId::new("submit_and_wait", batch), |b| {
            b.iter(|| {
                let pending: Vec<_> =
                    (0..batch).map(|_| model.submit(input.clone()).expect("the queue has room")).collect();
                for rx in pending {
                    black_box(rx.blocking_recv().expect("answered").expect("success"));
                }
            });
        });
        model.shutdown();
    }
    group.finish();
}

fn config() -> Criterion {
    Criterion::default().warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(5)).sample_size(30)
}

criterion_group! {
    name = benches;
    config = config();
    targets = onnx_backend, torchscript_backend, engine_overhead
}
criterion_main!(benches);
