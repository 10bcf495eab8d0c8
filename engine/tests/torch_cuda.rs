//! CUDA checks of the TorchScript and ONNX backends, for a machine with an NVIDIA GPU. Elsewhere they are compiled
//! and reported as ignored; `scripts/gpu-check.sh` runs them (`cargo test --test torch_cuda -- --ignored`).
//!
//! They check that CUDA is detected first, that signnet gives the reference answers on GPU 0, and that two
//! workers hold two different streams of libtorch's pool (neither the default stream) and run concurrently: two
//! workers sharing the work finish sooner than one doing it all.
#![cfg(feature = "torch")]

mod support;

use std::{
    sync::Barrier,
    time::{Duration, Instant},
};

use ferroserve_engine::{
    backend::torch::{current_cuda_stream, TorchFactory},
    device::{select, Availability, DeviceRequest},
    BackendFactory, Device,
};
use support::signnet::{self, assert_rows_match, reference, stacked};

/// TF32 convolutions (cuDNN's default) move the probabilities by up to about 1e-3.
const TOLERANCE: f32 = 2e-3;
const GPU: Device = Device::Cuda(0);

fn signnet_on_gpu() -> TorchFactory {
    TorchFactory::load(&signnet::dir().join("signnet.pt"), GPU).expect("signnet.pt loads on cuda:0")
}

/// `batch` reference samples, cycled.
fn batch_input(batch: usize) -> Vec<f32> {
    let one = stacked(&reference());
    one.chunks_exact(one.len() / 8).cycle().take(batch).flatten().copied().collect()
}

#[test]
#[ignore = "needs an NVIDIA GPU: scripts/gpu-check.sh runs it"]
fn cuda_is_detected_first() {
    let available = Availability::detect();
    assert!(available.cuda_devices >= 1, "{available:?}");
    assert_eq!(select(DeviceRequest::Auto, available), Ok(GPU));
}

#[test]
#[ignore = "needs an NVIDIA GPU: scripts/gpu-check.sh runs it"]
fn signnet_on_cuda_matches_the_reference() {
    let factory = signnet_on_gpu();
    assert_eq!(factory.device(), GPU);
    let samples = reference();
    let mut backend = factory.create(0).expect("a backend");
    for batch in [1, 8] {
        let got = backend.infer(batch, &stacked(&samples[..batch])).expect("inference");
        assert_rows_match(&samples[..batch], &got, TOLERANCE);
    }
}

#[cfg(feature = "onnx")]
#[test]
#[ignore = "needs an NVIDIA GPU and onnxruntime-gpu: scripts/gpu-check.sh runs it"]
fn onnx_on_cuda_matches_the_reference() {
    use ferroserve_engine::backend::{OnnxFactory, OnnxOptions};
    let dylib = std::env::var_os("ORT_DYLIB_PATH").expect("ORT_DYLIB_PATH is set by .cargo/config.toml");
    let options = OnnxOptions { dylib: dylib.into(), intra_threads: 1 };
    let factory = OnnxFactory::load_on(&signnet::dir().join("signnet.onnx"), options, GPU).expect("the CUDA provider");
    assert_eq!(factory.device(), GPU);
    let samples = reference();
    let got = factory.create(0).and_then(|mut b| b.infer(8, &stacked(&samples))).expect("inference");
    assert_rows_match(&samples, &got, TOLERANCE);
}

/// Runs `rounds` batches of `batch` on each of `workers` threads, each with its own backend, all starting
/// together after one warm-up batch; returns the wall time and each worker's current stream.
fn run_workers(factory: &TorchFactory, workers: usize, rounds: usize, batch: usize) -> (Duration, Vec<i64>) {
    let input = batch_input(batch);
    let start = Barrier::new(workers + 1);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..workers)
            .map(|w| {
                let (input, start) = (&input, &start);
                s.spawn(move || {
                    let mut backend = factory.create(w).expect("a backend");
                    backend.infer(batch, input).expect("warm-up");
                    let stream = current_cuda_stream(0).expect("a stream");
                    start.wait();
                    for _ in 0..rounds {
                        backend.infer(batch, input).expect("inference");
                    }
                    stream
                })
            })
            .collect();
        start.wait();
        let began = Instant::now();
        let streams = handles.into_iter().map(|h| h.join().expect("worker")).collect();
        (began.elapsed(), streams)
    })
}

#[test]
#[ignore = "needs an NVIDIA GPU: scripts/gpu-check.sh runs it"]
fn two_workers_hold_two_streams_and_run_concurrently() {
    const ROUNDS: usize = 400;
    const BATCH: usize = 32;
    let factory = signnet_on_gpu();
    let default_stream = current_cuda_stream(0).expect("the test thread's stream");
    let (alone, _) = run_workers(&factory, 1, 2 * ROUNDS, BATCH);
    let (together, streams) = run_workers(&factory, 2, ROUNDS, BATCH);
    println!("streams {streams:?} (default {default_stream}); one worker {alone:?}, two workers {together:?}");
    assert_ne!(streams[0], streams[1], "each worker has a stream of its own");
    assert!(!streams.contains(&default_stream), "workers never compute on the default stream");
    let speedup = alone.as_secs_f64() / together.as_secs_f64();
    println!("two workers on two streams: {speedup:.2}x the throughput of one");
    assert!(speedup > 1.2, "two workers should overlap: {speedup:.2}x");
}
