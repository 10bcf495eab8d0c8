//! The worker threads of one model (on one device, or spread over several): each collects a batch when it is
//! free (one collector at a time, so that batches fill up instead of being split between idle workers), runs it
//! on its own backend and answers every request with its own row. The number of workers can change live: workers
//! beyond the number wanted retire between batches, never with a request in hand.
//!
//! A batch holds samples of one shape: the model's own when it fixes its input shape (stacked and run through
//! [`Backend::infer`], as always), else the shape its requests carry ([`Backend::infer_shaped`]). A request of
//! another shape ends the batch being formed and waits, in the collector's hands, to start the next one. A batch
//! the model rejects for its shape answers each of its requests with the client's error, and the worker goes on.
//!
//! Tracing: a worker lives inside its `worker` span (INFO); a batch runs inside a `batch` span (DEBUG) that the
//! spans of its requests follow from, and each request's span gets its queue and inference times.

use std::{
    cell::{Cell, RefCell},
    collections::{BTreeMap, BTreeSet},
    panic::{catch_unwind, AssertUnwindSafe},
    sync::atomic::{AtomicUsize, Ordering},
    time::{Duration, Instant},
};

use crossbeam_channel::{Receiver, RecvTimeoutError};
use parking_lot::{Mutex, MutexGuard, RwLock};
use tracing::Span;

use crate::{
    adaptive::{AutoPolicy, Policy},
    backend::{check_output, check_shaped, Backend, BackendError, BackendFactory, Device, ModelSpec},
    batcher::{collect_with, BatchPolicy, Recv, Skip, Source},
    cost::{Cost, Estimates},
    error::EngineError,
    metrics::ModelMetrics,
    request::{HandlerInput, HandlerOutput, InferOutput, InferRequest, SampleShape, Timing},
};

/// How often an idle worker looks whether it should retire.
const IDLE_POLL: Duration = Duration::from_millis(50);

/// What the workers of one model share.
pub(crate) struct Shared {
    pub(crate) rx: Receiver<InferRequest>,
    pub(crate) policy: RwLock<BatchPolicy>,
    /// The latency objective (`sloP99Ms`) when `maxBatchDelay` is `auto`: batches then go by [`AutoPolicy`].
    pub(crate) slo_target: RwLock<Option<Duration>>,
    /// The batch costs the workers measured and the arrival rate, for the adaptive rule and the metrics.
    pub(crate) estimates: Mutex<Estimates>,
    /// Held while a worker forms a batch (timed waits on it: see `wait_to_collect`). It keeps the request that
    /// ended the last batch by its shape, which starts the next one.
    pub(crate) collector: Mutex<Option<InferRequest>>,
    pub(crate) metrics: ModelMetrics,
    pub(crate) spec: ModelSpec,
    pub(crate) device: Device,
    /// How many workers the model should have: workers `0..target_workers`.
    pub(crate) target_workers: AtomicUsize,
    /// How many are running (the size of `live_ids`, readable without its lock).
    pub(crate) live_workers: AtomicUsize,
    /// The ids of the running workers. Ids decide devices (worker `w` on device `w % n`), so a worker retires only
    /// when its own id is beyond the target, and scaling up starts exactly the missing ids.
    pub(crate) live_ids: Mutex<BTreeSet<usize>>,
    /// Notified whenever `live_ids` changes (see `wait_for_target`).
    pub(crate) workers_changed: parking_lot::Condvar,
    /// The process of each running worker whose backend runs outside the server ([`Backend::process_id`]),
    /// by worker id: kept as the worker starts, after each of its batches (a Python worker is restarted within
    /// one) and removed as it stops.
    pub(crate) processes: Mutex<BTreeMap<usize, u32>>,
    /// The model's name, for the errors the workers answer with and the workers' span.
    pub(crate) name: String,
    /// The model's version, for the workers' span.
    pub(crate) version: String,
    /// Unit tests' fault: this many of the next batches are followed by a panic of their worker outside the
    /// backend call, where nothing but the supervisor catches it.
    #[cfg(test)]
    pub(crate) panic_after_batches: AtomicUsize,
}

impl Shared {
    /// The rule in force for a batch collected by a worker on `device`, with the estimates of this instant.
    pub(crate) fn rule(&self, device: Device) -> Policy {
        let fixed = *self.policy.read();
        let Some(slo_p99) = *self.slo_target.read() else { return Policy::Fixed(fixed) };
        let estimates = self.estimates.lock();
        Policy::Auto(self.auto_policy(fixed, slo_p99, &estimates, estimates.cost(device), Instant::now()))
    }

    /// Counts a request arriving at `now` and, when the model has an objective, gives what admission predicts
    /// with: the adaptive rule and how long each worker running a batch still needs. A new request runs on
    /// whichever worker collects next, so the rule takes the device whose full batch is the fastest (the
    /// workers on a slower device take a smaller share of the queue). One lock of the estimates per request.
    pub(crate) fn arrive(&self, now: Instant) -> Option<(AutoPolicy, Vec<Duration>)> {
        let (fixed, slo_p99) = (*self.policy.read(), *self.slo_target.read());
        let mut estimates = self.estimates.lock();
        estimates.record_arrival(now);
        let cost = estimates.fastest(fixed.max_batch_size);
        let auto = self.auto_policy(fixed, slo_p99?, &estimates, cost, now);
        Some((auto, estimates.busy(now)))
    }

    /// The adaptive rule for the objective `slo_p99` with `cost`, from the estimates at `now`.
    fn auto_policy(
        &self,
        fixed: BatchPolicy,
        slo_p99: Duration,
        estimates: &Estimates,
        cost: Option<Cost>,
        now: Instant,
    ) -> AutoPolicy {
        AutoPolicy {
            max_batch_size: fixed.max_batch_size,
            slo_p99,
            cost,
            arrivals_per_second: estimates.arrivals_per_second(now),
            workers: self.live_workers.load(Ordering::Acquire).max(1),
        }
    }

    /// Whether a new request must be refused for want of workers: none runs (every one died and none could be
    /// restarted), or the model is scaled to zero (its last workers may still finish what was queued before).
    pub(crate) fn has_no_worker(&self) -> bool {
        self.live_workers.load(Ordering::Acquire) == 0 || self.target_workers.load(Ordering::Acquire) == 0
    }

    /// Answers every queued request [`EngineError::NoWorkers`] when no worker runs: nothing would ever run them.
    /// That includes the request the collector holds for the next batch, unless a worker is collecting (and will
    /// run it). The check and the answers hold the workers' lock, so that a worker started meanwhile (which
    /// enlists under that lock) keeps what is queued for itself.
    pub(crate) fn drain_without_workers(&self) {
        let ids = self.ids();
        if !ids.is_empty() {
            return;
        }
        let held = self.collector.try_lock().and_then(|mut held| held.take());
        for request in held.into_iter().chain(self.rx.try_iter()) {
            let _ = request.reply.send(Err(EngineError::NoWorkers(self.name.clone())));
        }
    }

    /// The running workers' ids, locked.
    pub(crate) fn ids(&self) -> MutexGuard<'_, BTreeSet<usize>> {
        self.live_ids.lock()
    }

    /// Records worker `id` as running.
    pub(crate) fn enlist(&self, ids: &mut BTreeSet<usize>, id: usize) {
        ids.insert(id);
        self.live_workers.store(ids.len(), Ordering::Release);
        self.workers_changed.notify_all();
    }

    /// Records that worker `id` no longer runs; returns how many still do.
    pub(crate) fn dismiss(&self, ids: &mut BTreeSet<usize>, id: usize) -> usize {
        ids.remove(&id);
        self.processes.lock().remove(&id);
        self.live_workers.store(ids.len(), Ordering::Release);
        self.workers_changed.notify_all();
        ids.len()
    }

    /// Waits until exactly workers `0..target_workers` run, for `timeout` at most; whether they do.
    pub(crate) fn wait_for_target(&self, timeout: Duration) -> bool {
        let until = crate::request::deadline(Instant::now(), timeout);
        let mut ids = self.ids();
        loop {
            let target = self.target_workers.load(Ordering::Acquire);
            if ids.len() == target && ids.iter().all(|&w| w < target) {
                return true;
            }
            if self.workers_changed.wait_until(&mut ids, until).timed_out() {
                return false;
            }
        }
    }

    /// Records `now` as the process of worker `id` when it is not `known` (the last one recorded), which it
    /// becomes. A worker that has left keeps none.
    fn note_process(&self, id: usize, now: Option<u32>, known: &mut Option<u32>) {
        if now == *known {
            return;
        }
        *known = now;
        let ids = self.ids();
        let mut processes = self.processes.lock();
        match now {
            Some(pid) if ids.contains(&id) => processes.insert(id, pid),
            _ => processes.remove(&id),
        };
    }

    /// Records that worker `id` stopped; returns how many still run.
    pub(crate) fn leave(&self, id: usize) -> usize {
        self.dismiss(&mut self.ids(), id)
    }

    /// Whether worker `id` is beyond the number wanted: it then leaves the running set and must exit. Checked
    /// again under the lock that `Model::scale` raises the target under, so that a worker never leaves for a
    /// target that was raised meanwhile.
    fn try_retire(&self, id: usize) -> bool {
        if id < self.target_workers.load(Ordering::Acquire) {
            return false;
        }
        let mut ids = self.ids();
        if id < self.target_workers.load(Ordering::Acquire) {
            return false;
        }
        // Scaled to zero: the last worker answers what was accepted before it leaves (nothing queued is dropped).
        if ids.len() == 1 && self.has_work_left() {
            return false;
        }
        if self.dismiss(&mut ids, id) == 0 {
            // A request pushed while this worker was leaving would wait for nobody.
            drop(ids);
            self.drain_without_workers();
        }
        true
    }

    /// Whether requests are queued, or one is held for the next batch. A collector lock held by another worker
    /// means that worker is collecting: then this one is not the last.
    fn has_work_left(&self) -> bool {
        !self.rx.is_empty() || self.collector.try_lock().is_some_and(|held| held.is_some())
    }
}

#[cfg(test)]
impl Shared {
    /// Panics when a unit test asked for it (see `panic_after_batches`).
    fn inject_panic(&self) {
        let pending = self.panic_after_batches.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
        assert!(pending.is_err(), "injected fault: the worker dies outside the backend call");
    }
}

/// The queue as one worker sees it while it holds the collector: the request the last batch left is taken first,
/// and waiting for a first request ends when the worker must retire.
struct WorkerSource<'a> {
    shared: &'a Shared,
    id: usize,
    retired: &'a Cell<bool>,
    /// The collector's slot for a request that ended a batch by its shape.
    held: RefCell<&'a mut Option<InferRequest>>,
}

impl WorkerSource<'_> {
    /// A request a worker has just taken from the queue: the time it waited for one is counted.
    fn taken(&self, request: InferRequest) -> InferRequest {
        self.shared.metrics.queue_wait.inc_by(request.arrived.elapsed().as_secs_f64());
        request
    }
}

impl Source for WorkerSource<'_> {
    type Item = InferRequest;

    fn recv(&self) -> Option<InferRequest> {
        if let Some(request) = self.held.borrow_mut().take() {
            return Some(request);
        }
        loop {
            match self.shared.rx.recv_timeout(IDLE_POLL) {
                Ok(request) => return Some(self.taken(request)),
                Err(RecvTimeoutError::Disconnected) => return None,
                Err(RecvTimeoutError::Timeout) if self.shared.try_retire(self.id) => {
                    self.retired.set(true);
                    return None;
                }
                Err(RecvTimeoutError::Timeout) => {}
            }
        }
    }

    fn recv_until(&self, until: Instant) -> Recv<InferRequest> {
        if let Some(request) = self.held.borrow_mut().take() {
            return Recv::Item(request);
        }
        match self.shared.rx.recv_deadline(until) {
            Ok(r) => Recv::Item(self.taken(r)),
            Err(RecvTimeoutError::Timeout) => Recv::Timeout,
            Err(RecvTimeoutError::Disconnected) => Recv::Closed,
        }
    }

    fn now(&self) -> Instant {
        Instant::now()
    }

    fn put_back(&self, request: InferRequest) {
        **self.held.borrow_mut() = Some(request);
    }
}

/// Runs a worker and, should it die of a panic outside the backend call (which is caught per batch), restarts it
/// with a new backend, so that a model never silently loses a worker. When the new backend cannot be made, the
/// worker is gone; if it was the last one, the requests left in the queue are answered at once rather than at
/// their deadline, and the model refuses new ones (`EngineError::NoWorkers`) until it is scaled again.
///
/// The worker's span (`worker`, INFO, naming model, version, worker id and device) is entered for the thread's
/// whole life, so every line a worker logs says which it is.
pub(crate) fn supervise(backend: Box<dyn Backend>, shared: &Shared, factory: &dyn BackendFactory, id: usize) {
    let device = factory.worker_device(id);
    let (model, version) = (shared.name.as_str(), shared.version.as_str());
    let _worker = tracing::info_span!(parent: None, "worker", model, version, worker = id, %device).entered();
    let mut backend = Some(backend);
    while let Some(current) = backend.take() {
        if catch_unwind(AssertUnwindSafe(|| worker_loop(current, shared, id, device))).is_ok() {
            return;
        }
        shared.metrics.worker_restarts.inc();
        tracing::error!("worker thread panicked; restarting it");
        match factory.create(id) {
            Ok(fresh) => backend = Some(fresh),
            Err(error) => {
                tracing::error!(%error, "cannot restart the worker");
                if shared.leave(id) == 0 {
                    tracing::error!("no worker is left: requests are refused until it is scaled");
                    shared.drain_without_workers();
                }
            }
        }
    }
}

/// Runs one worker until the queue is closed and drained, or until it retires.
fn worker_loop(mut backend: Box<dyn Backend>, shared: &Shared, id: usize, device: Device) {
    let retired = Cell::new(false);
    let (mut process, mut restarts) = (None, 0);
    while !shared.try_retire(id) {
        shared.note_process(id, backend.process_id(), &mut process);
        let replaced = backend.restarts();
        shared.metrics.worker_restarts.inc_by(replaced.saturating_sub(restarts));
        restarts = replaced;
        let batch = {
            let Some(mut held) = wait_to_collect(shared, id) else {
                break; // Retired while another worker collected.
            };
            let source = WorkerSource { shared, id, retired: &retired, held: RefCell::new(&mut held) };
            let policy = || shared.rule(device);
            collect_with(policy, &source, |request, why| answer_skipped(request, why, shared))
        };
        match batch {
            Some(batch) => {
                run_batch(backend.as_mut(), batch, shared, id, device);
                #[cfg(test)]
                shared.inject_panic();
            }
            None if retired.get() => break,
            None => {
                // The queue is closed and drained.
                shared.leave(id);
                break;
            }
        }
    }
    tracing::debug!("worker stops");
}

/// Waits for the collector's lock, looking every [`IDLE_POLL`] whether this worker must retire: the worker that
/// holds the lock may wait for requests for a long time, and a worker to retire must not wait behind it. `None`
/// when it retired. The wait is parked on the lock, so a freed lock passes to a waiting worker at once.
fn wait_to_collect(shared: &Shared, id: usize) -> Option<MutexGuard<'_, Option<InferRequest>>> {
    loop {
        if let Some(guard) = shared.collector.try_lock_for(IDLE_POLL) {
            return Some(guard);
        }
        if shared.try_retire(id) {
            return None;
        }
    }
}

fn answer_skipped(request: InferRequest, why: Skip, shared: &Shared) {
    match why {
        Skip::CallerGone => shared.metrics.dropped_client_gone.inc(),
        Skip::Expired => {
            shared.metrics.dropped_expired.inc();
            let waited_ms = u64::try_from(request.arrived.elapsed().as_millis()).unwrap_or(u64::MAX);
            // The caller may have gone in the meantime; nobody is left to tell then.
            let _ = request.reply.send(Err(EngineError::Timeout { waited_ms }));
        }
    }
}

/// The number of the next batch of the process ([`Timing::batch_id`]).
static NEXT_BATCH: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// Runs the batch on worker `id`'s `device` ([`compute`]) and answers each request with its own answer. The
/// batch's span (`batch`, DEBUG) is entered meanwhile; each request's span follows from it.
fn run_batch(backend: &mut dyn Backend, batch: Vec<InferRequest>, shared: &Shared, id: usize, device: Device) {
    let n = batch.len();
    let batch_id = NEXT_BATCH.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let span = tracing::debug_span!("batch", id = batch_id, size = n, worker = id).entered();
    let dispatched = Instant::now();
    shared.estimates.lock().start_batch(id, device, n, dispatched);
    for request in &batch {
        let queued = dispatched - request.arrived;
        record_queue_time(shared, queued);
        trace_dispatch(&request.span, &span, queued, n);
    }
    let result = catch_unwind(AssertUnwindSafe(|| compute(backend, &shared.spec, &batch)))
        .unwrap_or_else(|panic| Err(BackendError::inference(panic_message(&*panic))));
    let inference = dispatched.elapsed();
    record_batch(shared, n, inference);
    let mut estimates = shared.estimates.lock();
    estimates.end_batch(id);
    if result.is_ok() {
        // Failed batches say little of what a batch costs: they may end at the first sample.
        estimates.record_batch(device, n, inference);
    }
    drop(estimates);
    for request in batch.iter().filter(|r| !r.span.is_disabled()) {
        request.span.record("inference_us", micros(inference));
    }
    match result {
        Ok(answers) => {
            for (request, (output, shape, handler)) in batch.into_iter().zip(answers) {
                let queue = dispatched - request.arrived;
                let timing = Timing { queue, inference, batch_size: n, batch_id, worker: id };
                let _ = request.reply.send(Ok(InferOutput { output, shape, device, timing, handler }));
            }
        }
        Err(error) => {
            if let BackendError::Input(_) = error {
                tracing::info!(%error, batch = n, "the model rejected the batch's input");
            } else {
                shared.metrics.failed_batches.inc();
                tracing::warn!(%error, batch = n, "batch failed");
            }
            for request in batch {
                let _ = request.reply.send(Err(EngineError::Backend(error.clone())));
            }
        }
    }
}

/// One request's answer: its row of the output, the row's shape when the model does not fix it, and what a
/// Python handler answered.
type Answer = (Vec<f32>, SampleShape, Option<Box<HandlerOutput>>);

/// Runs the batch and returns one answer per request, in order: requests for a Python handler through
/// [`Backend::handle`], samples stacked into one buffer (one copy per request) through [`run`].
fn compute(backend: &mut dyn Backend, spec: &ModelSpec, batch: &[InferRequest]) -> Result<Vec<Answer>, BackendError> {
    let n = batch.len();
    if batch.first().is_some_and(|r| r.handler.is_some()) {
        let inputs: Vec<&HandlerInput> = batch.iter().filter_map(|r| r.handler.as_deref()).collect();
        if inputs.len() != n {
            return Err(BackendError::inference("a batch mixes tensor requests and handler requests"));
        }
        let outputs = backend.handle(&inputs)?;
        if outputs.len() != n {
            let got = outputs.len();
            return Err(BackendError::inference(format!("the handler gave {got} answers for a batch of {n}")));
        }
        return Ok(outputs.into_iter().map(|o| (Vec::new(), None, Some(Box::new(o)))).collect());
    }
    let mut input = Vec::with_capacity(batch.iter().map(|r| r.input.len()).sum());
    for request in batch {
        input.extend_from_slice(&request.input);
    }
    // The batcher puts samples of one shape only in a batch: the first's is every one's.
    let shape = batch.first().and_then(|r| r.shape.clone());
    let (output, row_shape) = run(backend, spec, n, shape.as_deref(), &input)?;
    let row_len = output.len() / n.max(1);
    Ok((0..n).map(|k| (output[k * row_len..(k + 1) * row_len].to_vec(), row_shape.clone(), None)).collect())
}

/// Runs the stacked batch: through [`Backend::infer`] when the model fixes its input shape (`shape` is `None`),
/// else through [`Backend::infer_shaped`] with the batch's shape. Returns the rows, and their shape in the latter
/// case, once checked against what the batch needs.
fn run(
    backend: &mut dyn Backend,
    spec: &ModelSpec,
    n: usize,
    shape: Option<&[usize]>,
    input: &[f32],
) -> Result<(Vec<f32>, SampleShape), BackendError> {
    let Some(shape) = shape else {
        let output = backend.infer(n, input)?;
        check_output(spec, n, &output)?;
        return Ok((output, None));
    };
    let output = backend.infer_shaped(n, shape, input)?;
    check_shaped(spec, n, &output)?;
    Ok((output.values, Some(output.shape.into())))
}

/// Links a request's span to its batch's and records its queue time and batch size; nothing when the request's
/// span is disabled (DEBUG off).
fn trace_dispatch(request: &Span, batch: &Span, queued: Duration, n: usize) {
    if request.is_disabled() {
        return;
    }
    request.follows_from(batch);
    request.record("queue_us", micros(queued));
    request.record("batch_size", n);
}

fn record_queue_time(shared: &Shared, waited: Duration) {
    shared.metrics.queue_latency.observe(waited.as_secs_f64());
}

/// Whole microseconds, saturating.
fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

fn record_batch(shared: &Shared, n: usize, took: Duration) {
    let m = &shared.metrics;
    m.execution_count.inc();
    m.inference_count.inc_by(n as u64);
    #[allow(clippy::cast_precision_loss)]
    m.batch_size.observe(n as f64);
    m.inference_latency.observe(took.as_secs_f64());
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    let text = panic
        .downcast_ref::<&str>()
        .map(ToString::to_string)
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into());
    format!("the backend panicked: {text}")
}
