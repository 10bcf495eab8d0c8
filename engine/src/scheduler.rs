//! The worker threads of one model on one device: each collects a batch when it is free (one collector at a
//! time, so that batches fill up instead of being split between idle workers), runs it on its own backend and
//! answers every request with its own row.

use std::{
    panic::{catch_unwind, AssertUnwindSafe},
    sync::{Arc, Mutex, PoisonError, RwLock},
    time::Instant,
};

use crate::{
    backend::{check_output, Backend, BackendError, Device, ModelSpec},
    batcher::{collect, BatchPolicy, Skip},
    error::EngineError,
    queue::ChannelSource,
    request::{InferOutput, InferRequest, Timing},
    stats::ModelStats,
};

/// What the workers of one model share.
pub(crate) struct Shared {
    pub(crate) source: ChannelSource,
    pub(crate) policy: RwLock<BatchPolicy>,
    /// Held while a worker forms a batch.
    pub(crate) collector: Mutex<()>,
    pub(crate) stats: Arc<ModelStats>,
    pub(crate) spec: ModelSpec,
    pub(crate) device: Device,
}

/// Runs one worker until the queue is closed and drained.
pub(crate) fn worker_loop(mut backend: Box<dyn Backend>, shared: &Shared) {
    while let Some(batch) = next_batch(shared) {
        run_batch(backend.as_mut(), batch, shared);
    }
    tracing::debug!("worker stops: queue closed");
}

fn next_batch(shared: &Shared) -> Option<Vec<InferRequest>> {
    let _collecting = shared
        .collector
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    let policy = *shared.policy.read().unwrap_or_else(PoisonError::into_inner);
    collect(&policy, &shared.source, |request, why| {
        answer_skipped(request, why, &shared.stats)
    })
}

fn answer_skipped(request: InferRequest, why: Skip, stats: &ModelStats) {
    match why {
        Skip::CallerGone => ModelStats::bump(&stats.caller_gone),
        Skip::Expired => {
            ModelStats::bump(&stats.expired);
            let waited_ms =
                u64::try_from(request.arrived.elapsed().as_millis()).unwrap_or(u64::MAX);
            // The caller may have gone in the meantime; nobody is left to tell then.
            let _ = request.reply.send(Err(EngineError::Timeout { waited_ms }));
        }
    }
}

/// Stacks the batch into one buffer (one copy per request), runs it, and answers each request with its row.
fn run_batch(backend: &mut dyn Backend, batch: Vec<InferRequest>, shared: &Shared) {
    let n = batch.len();
    let dispatched = Instant::now();
    let mut input = Vec::with_capacity(n * shared.spec.input_len());
    for request in &batch {
        input.extend_from_slice(&request.input);
    }
    let result = catch_unwind(AssertUnwindSafe(|| backend.infer(n, &input)))
        .unwrap_or_else(|panic| Err(BackendError::inference(panic_message(&*panic))))
        .and_then(|out| check_output(&shared.spec, n, &out).map(|()| out));
    let inference = dispatched.elapsed();
    ModelStats::bump(&shared.stats.batches);
    shared
        .stats
        .batched
        .fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
    match result {
        Ok(output) => {
            let rows = output.chunks_exact(shared.spec.output_len().max(1));
            for (request, row) in batch.into_iter().zip(rows) {
                let timing = Timing {
                    queue: dispatched - request.arrived,
                    inference,
                    batch_size: n,
                };
                let answer = InferOutput {
                    output: row.to_vec(),
                    device: shared.device,
                    timing,
                };
                let _ = request.reply.send(Ok(answer));
            }
        }
        Err(error) => {
            ModelStats::bump(&shared.stats.failed_batches);
            tracing::warn!(%error, batch = n, "batch failed");
            for request in batch {
                let _ = request.reply.send(Err(EngineError::Backend(error.clone())));
            }
        }
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    let text = panic
        .downcast_ref::<&str>()
        .map(ToString::to_string)
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into());
    format!("the backend panicked: {text}")
}
