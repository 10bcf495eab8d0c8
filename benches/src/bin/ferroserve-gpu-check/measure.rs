//! The figures: samples per second of direct forward calls (one backend, one thread: the plugin's forward on a
//! stacked batch, nothing of ferroserve's queue) against the same model behind ferroserve's engine (a `Model` with
//! one worker whose batches fill to the size measured), and one worker against two on one GPU (each worker's
//! thread computing on its own stream of libtorch's pool).

use std::{
    collections::VecDeque,
    sync::Barrier,
    time::{Duration, Instant},
};

use ferroserve_engine::{
    backend::torch::{current_cuda_stream, TorchFactory},
    request::InferResult,
    Backend, BackendFactory, BatchPolicy, Device, Model, ModelOptions,
};
use tokio::sync::oneshot;

use crate::reference::Reference;

/// Samples per second.
pub(crate) type Rate = f64;

/// Batches run before the clock starts: CUDA's lazy initialisation, cuDNN's algorithm search, the host allocator.
const WARM_UP_BATCHES: usize = 5;

/// Runs `batch`-sample forwards back to back on one backend for `time`, after a warm-up.
///
/// # Errors
/// The backend failing.
pub(crate) fn raw(factory: &TorchFactory, input: &Reference, batch: usize, time: Duration) -> Result<Rate, String> {
    let mut backend = factory.create(0).map_err(|e| e.to_string())?;
    let stacked = input.batch(batch);
    for _ in 0..WARM_UP_BATCHES {
        backend.infer(batch, &stacked).map_err(|e| e.to_string())?;
    }
    let began = Instant::now();
    let mut samples = 0;
    while began.elapsed() < time {
        backend.infer(batch, &stacked).map_err(|e| e.to_string())?;
        samples += batch;
    }
    Ok(samples as f64 / began.elapsed().as_secs_f64())
}

/// The same model behind ferroserve's engine: one worker, batches of `batch`, fed one-sample requests by
/// `clients` threads that each keep `2 x batch` requests in flight (so that a full batch is always queued when
/// the worker is free, and the figure is the engine's, not the clients').
///
/// # Errors
/// The model failing to start or to answer.
pub(crate) fn engine(
    factory: &TorchFactory,
    input: &Reference,
    batch: usize,
    clients: usize,
    time: Duration,
) -> Result<Rate, String> {
    let options = ModelOptions {
        name: "signnet".into(),
        version: "1.0".into(),
        workers: 1,
        queue_size: 4 * batch * clients,
        policy: BatchPolicy { max_batch_size: batch, max_delay: Duration::from_millis(5) },
        response_timeout: Duration::from_secs(60),
    };
    let model = Model::start(factory, options).map_err(|e| e.to_string())?;
    let sample = input.batch(1);
    let started = Barrier::new(clients + 1);
    let result = std::thread::scope(|s| {
        let handles: Vec<_> =
            (0..clients).map(|_| s.spawn(|| feed(&model, &sample, 2 * batch, time, &started))).collect();
        started.wait();
        let began = Instant::now();
        let mut samples = 0;
        for handle in handles {
            samples += handle.join().map_err(|_| "a client thread panicked".to_string())??;
        }
        Ok(samples as f64 / began.elapsed().as_secs_f64())
    });
    model.shutdown();
    result
}

/// One client: keeps `window` requests in flight until `time` has passed, then collects them. Returns the samples
/// answered after the warm-up. Waits at `started` (after its warm-up) whatever happens, so that no thread is left
/// waiting there.
fn feed(model: &Model, sample: &[f32], window: usize, time: Duration, started: &Barrier) -> Result<usize, String> {
    let submit = || model.submit(sample.to_vec()).map_err(|e| format!("submit: {e}"));
    let mut in_flight = VecDeque::with_capacity(window);
    let warm_up = (0..window * WARM_UP_BATCHES).try_for_each(|_| {
        in_flight.push_back(submit()?);
        if in_flight.len() < window {
            return Ok(());
        }
        in_flight.pop_front().map_or(Ok(()), wait)
    });
    let warm_up = warm_up.and_then(|()| in_flight.drain(..).try_for_each(wait));
    started.wait();
    warm_up?;
    let began = Instant::now();
    let mut answered = 0;
    while began.elapsed() < time {
        in_flight.push_back(submit()?);
        if in_flight.len() == window {
            in_flight.pop_front().map_or(Ok(()), wait)?;
            answered += 1;
        }
    }
    answered += in_flight.len();
    in_flight.into_iter().try_for_each(wait)?;
    Ok(answered)
}

/// Waits for one answer.
fn wait(rx: oneshot::Receiver<InferResult>) -> Result<(), String> {
    match rx.blocking_recv() {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(format!("inference: {e}")),
        Err(_) => Err("the model dropped a request".into()),
    }
}

/// What [`workers`] measured.
pub(crate) struct Workers {
    /// Samples per second of all the workers together.
    pub(crate) rate: Rate,
    /// Each worker's current CUDA stream (empty off CUDA).
    pub(crate) streams: Vec<i64>,
}

/// `workers` threads, each with its own backend, running `batch`-sample forwards for `time` after one warm-up
/// batch, all starting together.
///
/// # Errors
/// A backend failing, or its stream unreadable.
pub(crate) fn workers(
    factory: &TorchFactory,
    input: &Reference,
    workers: usize,
    batch: usize,
    time: Duration,
) -> Result<Workers, String> {
    let stacked = input.batch(batch);
    let start = Barrier::new(workers + 1);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..workers)
            .map(|w| {
                let (stacked, start) = (&stacked, &start);
                s.spawn(move || -> Result<(usize, Option<i64>), String> {
                    let ready = warm_worker(factory, w, batch, stacked);
                    // Every thread passes the barrier, ready or not, so that none is left waiting there.
                    start.wait();
                    let (mut backend, stream) = ready?;
                    let began = Instant::now();
                    let mut samples = 0;
                    while began.elapsed() < time {
                        backend.infer(batch, stacked).map_err(|e| format!("worker {w}: {e}"))?;
                        samples += batch;
                    }
                    Ok((samples, stream))
                })
            })
            .collect();
        start.wait();
        let began = Instant::now();
        let mut samples = 0;
        let mut streams = Vec::new();
        for handle in handles {
            let (done, stream) = handle.join().map_err(|_| "a worker thread panicked".to_string())??;
            samples += done;
            streams.extend(stream);
        }
        Ok(Workers { rate: samples as f64 / began.elapsed().as_secs_f64(), streams })
    })
}

/// Worker `w`'s backend after one batch, and the stream its thread then computes on (CUDA).
fn warm_worker(
    factory: &TorchFactory,
    w: usize,
    batch: usize,
    stacked: &[f32],
) -> Result<(Box<dyn Backend>, Option<i64>), String> {
    let mut backend = factory.create(w).map_err(|e| e.to_string())?;
    backend.infer(batch, stacked).map_err(|e| format!("worker {w}: {e}"))?;
    let stream = match factory.device() {
        Device::Cuda(index) => Some(current_cuda_stream(index).map_err(|e| e.to_string())?),
        _ => None,
    };
    Ok((backend, stream))
}
