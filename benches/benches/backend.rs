//! In-process benchmarks: the ONNX backend alone on signnet (`Backend::infer` on a stacked batch, no queue), and
//! the echo fake behind a full `Model` (submit, batch, answer), which is what the engine adds per request.
//!
//! Throughput is counted in samples, so criterion prints samples/s next to the time per batch.
//! `FERROSERVE_BENCH_INTRA_THREADS` sets ONNX Runtime's intra-op threads per session (default 1).

use std::{hint::black_box, path::Path, time::Duration};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ferroserve_engine::{
    backend::{FakeBackend, FakeMode, OnnxFactory, OnnxOptions},
    BackendFactory, BatchPolicy, Model, ModelOptions,
};

const BATCHES: [usize; 2] = [1, 16];

/// The reference inputs of signnet, flattened, repeated to `batch` samples and stacked.
fn signnet_batch(batch: usize) -> Vec<f32> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/signnet/reference.json");
    let text = std::fs::read_to_string(&path).expect("models/signnet/reference.json is there");
    let json: serde_json::Value = serde_json::from_str(&text).expect("valid JSON");
    let samples: Vec<Vec<Vec<Vec<f32>>>> =
        serde_json::from_value(json["landmarks"].clone()).expect("landmarks [8, 30, 21, 3]");
    samples.into_iter().cycle().take(batch).flatten().flatten().flatten().collect()
}

fn signnet() -> OnnxFactory {
    let intra_threads = std::env::var("FERROSERVE_BENCH_INTRA_THREADS")
        .map_or(1, |v| v.parse().expect("FERROSERVE_BENCH_INTRA_THREADS is a number of threads"));
    let options = OnnxOptions {
        dylib: std::env::var_os("ORT_DYLIB_PATH")
            .expect("ORT_DYLIB_PATH is set (cargo sets it from .cargo/config.toml)")
            .into(),
        intra_threads,
    };
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/signnet/signnet.onnx");
    OnnxFactory::load(&path, options).expect("signnet loads (run `make deps` first)")
}

fn onnx_backend(c: &mut Criterion) {
    let mut backend = signnet().create(0).expect("a session");
    let mut group = c.benchmark_group("onnx_signnet");
    for batch in BATCHES {
        let input = signnet_batch(batch);
        group.throughput(Throughput::Elements(batch as u64));
        group.bench_with_input(BenchmarkId::new("infer", batch), &input, |b, input| {
            b.iter(|| backend.infer(batch, black_box(input)).expect("inference"));
        });
    }
    group.finish();
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
    for batch in BATCHES {
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
    targets = onnx_backend, engine_overhead
}
criterion_main!(benches);
