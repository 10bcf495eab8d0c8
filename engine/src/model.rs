//! A running model: its queue, its worker threads and its counters.

use std::{
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use crossbeam_channel::Sender;
use parking_lot::{Mutex, RwLock};
use tokio::sync::oneshot;

use crate::{
    adaptive::{AutoPolicy, Shed},
    archive::Unpacked,
    backend::{BackendError, BackendFactory, Device, ModelSpec},
    batcher::BatchPolicy,
    cost::Cost,
    error::EngineError,
    metrics::{EngineMetrics, ModelMetrics, StatsSnapshot},
    queue::{self, PushError},
    request::{HandlerInput, InferRequest, InferResult, SampleShape},
    scheduler::{supervise, Shared},
};

/// How to run one model (TorchServe's per-model settings).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelOptions {
    /// Model name, as in the URL.
    pub name: String,
    /// Model version (TorchServe's default is "1.0").
    pub version: String,
    /// Worker threads, each with its own backend.
    pub workers: usize,
    /// Capacity of the job queue (`job_queue_size`).
    pub queue_size: usize,
    /// Batch size and delay.
    pub policy: BatchPolicy,
    /// How long a request may wait for its answer (`default_response_timeout`).
    pub response_timeout: Duration,
}

/// A loaded model serving requests.
pub struct Model {
    options: ModelOptions,
    factory: Arc<dyn BackendFactory>,
    runtime: &'static str,
    /// `None` once the model is closed.
    tx: RwLock<Option<Sender<InferRequest>>>,
    shared: Arc<Shared>,
    workers: Mutex<Vec<JoinHandle<()>>>,
    labels: Option<Arc<[String]>>,
    /// Where it was loaded from and whether at start-up (TorchServe's `modelUrl`, `loadedAtStartup`).
    source: (String, bool),
    /// TorchServe's `maxWorkers`: recorded and reported; workers never exceed what `scale` sets.
    max_workers: AtomicUsize,
    /// The folder a `.mar` was unpacked into, removed when the model is dropped (workers started later, by
    /// scaling or a restart, open the model file again).
    unpacked: Option<Unpacked>,
    /// The model's counters when it started: [`Model::stats`] counts from there.
    stats_base: StatsSnapshot,
}

impl Model {
    /// Makes one backend per worker (so that a model that cannot load fails here, at start-up) and starts the
    /// worker threads, with metrics in a private registry.
    ///
    /// # Errors
    /// [`BackendError::Load`] when a backend cannot be made, or a worker thread cannot be spawned.
    pub fn start<F: BackendFactory + Clone + 'static>(
        factory: &F,
        options: ModelOptions,
    ) -> Result<Self, BackendError> {
        Self::start_with(Arc::new(factory.clone()), options, &EngineMetrics::detached())
    }

    /// Like [`Model::start`], recording into `metrics`.
    ///
    /// # Errors
    /// [`BackendError::Load`] when a backend cannot be made, or a worker thread cannot be spawned.
    pub fn start_with(
        factory: Arc<dyn BackendFactory>,
        options: ModelOptions,
        metrics: &EngineMetrics,
    ) -> Result<Self, BackendError> {
        let (tx, rx) = queue::bounded(options.queue_size);
        let device = factory.device();
        let shared = Arc::new(Shared {
            rx,
            policy: RwLock::new(options.policy),
            slo_target: RwLock::new(None),
            estimates: Mutex::default(),
            collector: Mutex::new(None),
            metrics: metrics.for_model(&options.name, &options.version, device.kind()),
            version: options.version.clone(),
            spec: factory.spec().clone(),
            device,
            target_workers: AtomicUsize::new(0),
            live_workers: AtomicUsize::new(0),
            live_ids: Mutex::default(),
            workers_changed: parking_lot::Condvar::new(),
            processes: Mutex::default(),
            name: options.name.clone(),
            #[cfg(test)]
            panic_after_batches: AtomicUsize::new(0),
        });
        let stats_base = shared.metrics.snapshot();
        let model = Self {
            runtime: factory.runtime(),
            factory,
            tx: RwLock::new(Some(tx)),
            shared,
            workers: Mutex::new(Vec::new()),
            labels: None,
            source: (options.name.clone(), false),
            max_workers: AtomicUsize::new(options.workers.max(1)),
            unpacked: None,
            stats_base,
            options,
        };
        model.scale(model.options.workers)?;
        Ok(model)
    }

    /// Sets the number of workers: workers `0..workers` run. Missing ones are started, each with its own backend,
    /// before this returns; those beyond retire after their current batch (or within 50 ms when idle), so no
    /// queued request is dropped ([`Model::wait_for_workers`] waits for them). Worker ids decide devices, so the
    /// spread over devices stays even. With zero workers the model stays loaded and refuses requests
    /// ([`EngineError::NoWorkers`]) until it is scaled up, as TorchServe's `min_worker=0` does.
    ///
    /// # Errors
    /// [`BackendError::Load`] when a new backend cannot be made or its thread spawned; the workers already
    /// running are kept.
    pub fn scale(&self, workers: usize) -> Result<(), BackendError> {
        let mut handles = self.workers.lock();
        handles.retain(|h| !h.is_finished());
        let mut ids = self.shared.ids();
        self.shared.target_workers.store(workers, Ordering::Release);
        for w in (0..workers).filter(|w| !ids.contains(w)).collect::<Vec<_>>() {
            let backend = self.factory.create(w)?;
            let (shared, factory) = (Arc::clone(&self.shared), Arc::clone(&self.factory));
            // Counted before it runs: a request must not find the model without a worker meanwhile.
            self.shared.enlist(&mut ids, w);
            let spawned = std::thread::Builder::new()
                .name(format!("fs-{}-{w}", self.options.name))
                .spawn(move || supervise(backend, &shared, factory.as_ref(), w));
            match spawned {
                Ok(handle) => handles.push(handle),
                Err(e) => {
                    self.shared.dismiss(&mut ids, w);
                    // A request accepted while this worker was counted would otherwise wait for nobody.
                    drop(ids);
                    self.shared.drain_without_workers();
                    return Err(BackendError::load(format!("cannot spawn worker thread: {e}")));
                }
            }
        }
        Ok(())
    }

    /// Waits until the workers [`Model::scale`] asked for run and the surplus ones have stopped, for `timeout` at
    /// most (blocking: not for an async task). Returns whether they did.
    #[must_use]
    pub fn wait_for_workers(&self, timeout: Duration) -> bool {
        self.shared.wait_for_target(timeout)
    }

    /// The process that runs worker `worker`'s model when it is not the server's own (a Python worker's), as
    /// TorchServe's describe reports it; `None` for workers that run in the server, or while a Python worker has
    /// none (it could not be restarted, and is tried again on the next batch).
    #[must_use]
    pub fn worker_process(&self, worker: usize) -> Option<u32> {
        self.shared.processes.lock().get(&worker).copied()
    }

    /// The ids of the running workers (worker `w` runs on [`Model::worker_device`]`(w)`).
    #[must_use]
    pub fn worker_ids(&self) -> Vec<usize> {
        self.shared.ids().iter().copied().collect()
    }

    /// Workers wanted and workers running (they differ while surplus workers finish their batch).
    #[must_use]
    pub fn workers(&self) -> (usize, usize) {
        let target = self.shared.target_workers.load(Ordering::Acquire);
        (target, self.shared.live_workers.load(Ordering::Acquire))
    }

    /// Whether a request submitted now would find a worker: one is live and the model is not scaled to zero.
    /// The canary split sends nothing to a version that would not.
    #[must_use]
    pub fn can_serve(&self) -> bool {
        !self.shared.has_no_worker()
    }

    /// The model's metrics (for the server to refresh the queue-depth gauge).
    #[must_use]
    pub fn metrics(&self) -> &ModelMetrics {
        &self.shared.metrics
    }

    /// Attaches class labels (from `index_to_name.json`), one per output value.
    #[must_use]
    pub fn with_labels(mut self, labels: Vec<String>) -> Self {
        self.labels = Some(labels.into());
        self
    }

    /// Keeps the folder its `.mar` was unpacked into for as long as the model lives.
    #[must_use]
    pub fn keeping(mut self, unpacked: Unpacked) -> Self {
        self.unpacked = Some(unpacked);
        self
    }

    /// The folder its `.mar` was unpacked into, while the model lives.
    #[must_use]
    pub fn archive_folder(&self) -> Option<&std::path::Path> {
        self.unpacked.as_ref().map(Unpacked::path)
    }

    /// Records where the model came from (a path in the model store) and whether it was loaded at start-up.
    #[must_use]
    pub fn with_source(mut self, url: impl Into<String>, loaded_at_startup: bool) -> Self {
        self.source = (url.into(), loaded_at_startup);
        self
    }

    /// Where the model came from, and whether it was loaded at start-up.
    #[must_use]
    pub fn source(&self) -> (&str, bool) {
        (&self.source.0, self.source.1)
    }

    /// TorchServe's `maxWorkers` as last set (at least the workers wanted).
    #[must_use]
    pub fn max_workers(&self) -> usize {
        self.max_workers.load(Ordering::Acquire).max(self.workers().0)
    }

    /// Records TorchServe's `maxWorkers`.
    pub fn set_max_workers(&self, max: usize) {
        self.max_workers.store(max, Ordering::Release);
    }

    /// The class labels, when the model has them.
    #[must_use]
    pub fn labels(&self) -> Option<&[String]> {
        self.labels.as_deref()
    }

    /// Queues one sample without blocking; the answer comes on the returned receiver.
    ///
    /// # Errors
    /// [`EngineError::InvalidInput`] when the sample has the wrong number of values, [`EngineError::QueueFull`]
    /// when the queue is full (at once), [`EngineError::NoWorkers`] when every worker died and none could be
    /// restarted, [`EngineError::ShuttingDown`] once the model is closed.
    pub fn submit(&self, input: Vec<f32>) -> Result<oneshot::Receiver<InferResult>, EngineError> {
        self.submit_within(input, None)
    }

    /// Like [`Model::submit`], with the caller's own timeout when it is shorter than the model's
    /// `response_timeout`: a request still queued at its deadline is dropped before it runs and answered
    /// [`EngineError::Timeout`].
    ///
    /// # Errors
    /// As [`Model::submit`].
    pub fn submit_within(
        &self,
        input: Vec<f32>,
        timeout: Option<Duration>,
    ) -> Result<oneshot::Receiver<InferResult>, EngineError> {
        self.submit_shaped(input, None, timeout)
    }

    /// Like [`Model::submit_within`], for a sample of shape `shape`: a model that leaves its input shape to the
    /// requests needs it, and batches the sample only with samples of the same shape.
    ///
    /// # Errors
    /// As [`Model::submit`]; [`EngineError::InvalidInput`] also when the shape does not fit the model's, or is
    /// missing for a model that needs it.
    pub fn submit_shaped(
        &self,
        input: Vec<f32>,
        shape: Option<&[usize]>,
        timeout: Option<Duration>,
    ) -> Result<oneshot::Receiver<InferResult>, EngineError> {
        let shape = self.shared.spec.sample_shape(input.len(), shape).map_err(EngineError::InvalidInput)?;
        self.enqueue(input, shape, None, timeout)
    }

    /// Queues one request for a model served by a Python handler ([`crate::backend::python`]): the handler gets
    /// it as TorchServe's front end would pass it, batched with others, and its answer comes back as the handler
    /// made it ([`InferOutput::handler`]).
    ///
    /// # Errors
    /// As [`Model::submit`]; a model that runs tensors answers the batch [`BackendError::Inference`].
    pub fn submit_handler(
        &self,
        input: HandlerInput,
        timeout: Option<Duration>,
    ) -> Result<oneshot::Receiver<InferResult>, EngineError> {
        self.enqueue(Vec::new(), None, Some(Box::new(input)), timeout)
    }

    /// Whether the model runs a Python handler (requests go through [`Model::submit_handler`]).
    #[must_use]
    pub fn runs_handler(&self) -> bool {
        self.runtime == crate::backend::python::RUNTIME
    }

    /// Pushes one request onto the queue, or says at once why not.
    fn enqueue(
        &self,
        input: Vec<f32>,
        shape: SampleShape,
        handler: Option<Box<HandlerInput>>,
        timeout: Option<Duration>,
    ) -> Result<oneshot::Receiver<InferResult>, EngineError> {
        let tx = self.tx.read();
        let closed = || EngineError::ShuttingDown(self.options.name.clone());
        let tx = tx.as_ref().ok_or_else(closed)?;
        if self.shared.has_no_worker() {
            return Err(EngineError::NoWorkers(self.options.name.clone()));
        }
        let (reply, rx) = oneshot::channel();
        let arrived = Instant::now();
        let timeout = timeout.map_or(self.options.response_timeout, |t| t.min(self.options.response_timeout));
        self.admit(self.shared.arrive(arrived), timeout)?;
        let deadline = crate::request::deadline(arrived, timeout);
        let request = InferRequest { input, shape, handler, reply, arrived, deadline, span: self.request_span() };
        match queue::push(tx, request) {
            Ok(()) => {
                self.shared.metrics.accepted.inc();
                // The last worker may have gone, and drained the queue, between the check above and the push:
                // then nobody would take this request, so answer it (and any other) now.
                if self.shared.has_no_worker() {
                    self.shared.drain_without_workers();
                }
                Ok(rx)
            }
            Err(PushError::Full(_)) => {
                self.shared.metrics.rejected_queue_full.inc();
                Err(EngineError::QueueFull {
                    model: self.options.name.clone(),
                    capacity: self.options.queue_size.max(1),
                })
            }
            Err(PushError::Closed(_)) => Err(closed()),
        }
    }

    /// Sheds a request the adaptive batcher predicts would be answered past the objective or its `timeout`
    /// ([`AutoPolicy::admit`]), with the rule and the running batches' time left that the request's arrival
    /// gave (`admission`); counted by cause. Nothing is shed without an objective (`None`).
    fn admit(&self, admission: Option<(AutoPolicy, Vec<Duration>)>, timeout: Duration) -> Result<(), EngineError> {
        let Some((auto, busy)) = admission else { return Ok(()) };
        let Err((cause, predicted)) = auto.admit(self.shared.rx.len(), &busy, timeout) else { return Ok(()) };
        let m = &self.shared.metrics;
        let (counter, limit) = match cause {
            Shed::Slo => (&m.rejected_slo, format!("its latency objective of {} ms", in_ms(auto.slo_p99))),
            Shed::Deadline => (&m.rejected_deadline, format!("its deadline of {} ms", in_ms(timeout))),
        };
        counter.inc();
        Err(EngineError::Shed { model: self.options.name.clone(), cause, predicted_ms: in_ms(predicted), limit })
    }

    /// A new request's span, a child of the current one (the caller's). At DEBUG only: when that level is off,
    /// the macro's level check is all it costs, with no allocation and no look-up of the current span.
    fn request_span(&self) -> tracing::Span {
        use tracing::field::Empty;
        let (model, version) = (self.options.name.as_str(), self.options.version.as_str());
        tracing::debug_span!("queued", model, version, queue_us = Empty, inference_us = Empty, batch_size = Empty)
    }

    /// Stops taking requests; the workers finish what is queued, then exit.
    pub fn close(&self) {
        self.tx.write().take();
    }

    /// Closes the model and waits for its workers to finish (blocking: not for an async task).
    pub fn shutdown(&self) {
        self.close();
        let handles = std::mem::take(&mut *self.workers.lock());
        for handle in handles {
            if handle.join().is_err() {
                tracing::error!(model = %self.options.name, "a worker thread panicked");
            }
        }
    }

    /// The model's name.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.options.name
    }

    /// The model's version.
    #[must_use]
    pub fn version(&self) -> &str {
        &self.options.version
    }

    /// Its settings as loaded.
    #[must_use]
    pub fn options(&self) -> &ModelOptions {
        &self.options
    }

    /// The runtime behind it (`onnx`, `fake`).
    #[must_use]
    pub fn runtime(&self) -> &'static str {
        self.runtime
    }

    /// Its input and output shapes.
    #[must_use]
    pub fn spec(&self) -> &ModelSpec {
        &self.shared.spec
    }

    /// The device its workers run on (the first, when they are spread over several).
    #[must_use]
    pub fn device(&self) -> Device {
        self.shared.device
    }

    /// The device worker `worker` runs on.
    #[must_use]
    pub fn worker_device(&self, worker: usize) -> Device {
        self.factory.worker_device(worker)
    }

    /// The batch policy in force.
    #[must_use]
    pub fn policy(&self) -> BatchPolicy {
        *self.shared.policy.read()
    }

    /// Changes batch size and delay live; the next batch formed uses them.
    pub fn set_policy(&self, policy: BatchPolicy) {
        *self.shared.policy.write() = policy;
    }

    /// The latency objective batches are formed for (`maxBatchDelay: "auto"`, `sloP99Ms`); `None` when the
    /// fixed delay of [`Model::policy`] rules.
    #[must_use]
    pub fn slo_target(&self) -> Option<Duration> {
        *self.shared.slo_target.read()
    }

    /// Sets the latency objective (`Some`: batches go by [`crate::adaptive`] and requests the queue cannot
    /// answer in time are shed), or goes back to the fixed delay (`None`); the next step of the batch being
    /// formed uses it. The batch size stays [`Model::policy`]'s.
    pub fn set_slo_target(&self, slo_p99: Option<Duration>) {
        *self.shared.slo_target.write() = slo_p99;
    }

    /// The batch cost fitted on each device the workers ran batches on (once enough have run), and the
    /// requests arriving per second lately: what the adaptive rule knows.
    #[must_use]
    pub fn estimates(&self) -> (Vec<(Device, Cost)>, f64) {
        let estimates = self.shared.estimates.lock();
        (estimates.costs(), estimates.arrivals_per_second(Instant::now()))
    }

    /// Brings the model's gauges up to date before an exposition: queue depth, arrival rate, batch costs.
    pub fn refresh_metrics(&self) {
        let m = &self.shared.metrics;
        m.queue_depth.set(i64::try_from(self.queue_len()).unwrap_or(i64::MAX));
        let (costs, rate) = self.estimates();
        m.estimates.arrival_rate.set(rate);
        for (device, cost) in costs {
            m.estimates.set_cost(&device.to_string(), &cost);
        }
    }

    /// Removes the estimate series of an unloaded model, so that it leaves no flat series behind.
    pub fn forget_metrics(&self) {
        let devices: Vec<String> = self.shared.estimates.lock().devices().iter().map(ToString::to_string).collect();
        self.shared.metrics.estimates.forget(&devices, self.shared.device.kind());
    }

    /// Requests waiting in the queue.
    #[must_use]
    pub fn queue_len(&self) -> usize {
        self.shared.rx.len()
    }

    /// The model's counters since it started, read from its metrics ([`ModelMetrics::snapshot`]).
    ///
    /// The metrics are label children keyed by name, version and device kind (`cuda`, not `cuda:1`), shared by
    /// every model with the same three in one metrics registry. Should another such model record into them while
    /// this one runs, its events are counted here too; one that ran before this model started is not (a model
    /// loaded again under the same version counts from zero).
    #[must_use]
    pub fn stats(&self) -> StatsSnapshot {
        self.shared.metrics.snapshot().since(&self.stats_base)
    }
}

/// Whole milliseconds, rounded up (a prediction of 0.4 ms reads as 1 ms, not 0).
fn in_ms(d: Duration) -> u64 {
    u64::try_from(d.as_micros().div_ceil(1000)).unwrap_or(u64::MAX)
}

impl Drop for Model {
    fn drop(&mut self) {
        self.close();
    }
}

#[cfg(test)]
mod tests {
    //! The supervisor, through the fault that only unit tests can inject: a worker that dies outside the backend
    //! call (the backend call itself is caught per batch, see `tests/failures.rs`).

    use std::sync::atomic::Ordering;

    use super::*;
    use crate::backend::{FakeBackend, FakeMode};

    fn echo_model(workers: usize) -> (FakeBackend, Model) {
        let spec = ModelSpec {
            input_name: "x".into(),
            input_shape: vec![2].into(),
            output_name: "y".into(),
            output_shape: vec![2].into(),
        };
        let fake = FakeBackend::new(spec, FakeMode::Echo);
        let options = ModelOptions {
            name: "m".into(),
            version: "1.0".into(),
            workers,
            queue_size: 16,
            policy: BatchPolicy { max_batch_size: 1, max_delay: Duration::ZERO },
            response_timeout: Duration::from_secs(60),
        };
        let model = Model::start(&fake, options).expect("the fake starts");
        (fake, model)
    }

    fn ask(model: &Model, value: f32) -> InferResult {
        let rx = model.submit(vec![value, -value]).expect("accepted");
        rx.blocking_recv().expect("answered, never dropped")
    }

    /// Waits until `done` holds: the loop ends when the supervisor acts. The bound only turns a supervisor that
    /// never acts into a failure instead of a hung test; it says nothing about speed.
    fn wait_until(done: impl Fn() -> bool) {
        let give_up = Instant::now() + Duration::from_secs(60);
        while !done() {
            assert!(Instant::now() < give_up, "the supervisor never acted");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn a_worker_that_dies_outside_the_backend_is_restarted_with_a_new_backend() {
        let (fake, model) = echo_model(1);
        model.shared.panic_after_batches.store(1, Ordering::Release);
        // The request is answered before its worker dies; the worker's replacement answers the next one.
        assert_eq!(ask(&model, 1.0).expect("first answer").output, vec![1.0, -1.0]);
        wait_until(|| model.stats().restarts == 1);
        assert_eq!(ask(&model, 2.0).expect("answer after the restart").output, vec![2.0, -2.0]);
        assert_eq!(fake.created.load(Ordering::Acquire), 2, "one backend at start, one for the restart");
        assert_eq!(model.workers(), (1, 1));
        model.shutdown();
    }

    #[test]
    fn a_worker_that_cannot_be_restarted_leaves_and_the_model_refuses_at_once() {
        let (fake, model) = echo_model(1);
        fake.failing_creates.store(1, Ordering::Release);
        model.shared.panic_after_batches.store(1, Ordering::Release);
        assert!(ask(&model, 1.0).is_ok());
        wait_until(|| model.workers().1 == 0);
        assert_eq!(model.stats().restarts, 1);
        match model.submit(vec![3.0, 3.0]) {
            Err(EngineError::NoWorkers(name)) => assert_eq!(name, "m"),
            other => panic!("expected NoWorkers, got {other:?}"),
        }

        // Scaling up again makes a worker, and the model serves again.
        model.scale(1).expect("a new worker");
        assert_eq!(ask(&model, 4.0).expect("served again").output, vec![4.0, -4.0]);
        model.shutdown();
    }

    #[test]
    fn requests_queued_when_the_last_worker_is_lost_are_answered_at_once() {
        let (fake, model) = echo_model(1);
        fake.failing_creates.store(1, Ordering::Release);
        fake.gate.close();
        model.shared.panic_after_batches.store(1, Ordering::Release);
        let first = model.submit(vec![1.0, 1.0]).expect("accepted");
        fake.gate.wait_arrived(1);
        // Queued behind the batch whose worker will die.
        let queued: Vec<_> = (0..3).map(|i| model.submit(vec![i as f32, 0.0]).expect("accepted")).collect();
        fake.gate.open();
        assert!(first.blocking_recv().expect("answered").is_ok());
        for rx in queued {
            match rx.blocking_recv().expect("answered, not left to its deadline") {
                Err(EngineError::NoWorkers(name)) => assert_eq!(name, "m"),
                other => panic!("expected NoWorkers, got {other:?}"),
            }
        }
        model.shutdown();
    }
}
