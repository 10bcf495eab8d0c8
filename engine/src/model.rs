//! A running model: its queue, its worker threads and its counters.

use std::{
    sync::{Arc, Mutex, PoisonError, RwLock},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use crossbeam_channel::Sender;
use tokio::sync::oneshot;

use crate::{
    backend::{BackendError, BackendFactory, Device, ModelSpec},
    batcher::BatchPolicy,
    error::EngineError,
    queue::{self, ChannelSource, PushError},
    request::{InferRequest, InferResult},
    scheduler::{worker_loop, Shared},
    stats::{ModelStats, StatsSnapshot},
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
    runtime: &'static str,
    /// `None` once the model is closed.
    tx: RwLock<Option<Sender<InferRequest>>>,
    shared: Arc<Shared>,
    workers: Mutex<Vec<JoinHandle<()>>>,
    labels: Option<Arc<[String]>>,
}

impl Model {
    /// Makes one backend per worker (so that a model that cannot load fails here, at start-up) and starts the
    /// worker threads.
    ///
    /// # Errors
    /// [`BackendError::Load`] when a backend cannot be made, or a worker thread cannot be spawned.
    pub fn start(
        factory: &dyn BackendFactory,
        options: ModelOptions,
    ) -> Result<Self, BackendError> {
        let workers = options.workers.max(1);
        let backends = (0..workers)
            .map(|w| factory.create(w))
            .collect::<Result<Vec<_>, _>>()?;
        let (tx, rx) = queue::bounded(options.queue_size);
        let shared = Arc::new(Shared {
            source: ChannelSource(rx),
            policy: RwLock::new(options.policy),
            collector: Mutex::new(()),
            stats: Arc::default(),
            spec: factory.spec().clone(),
            device: factory.device(),
        });
        let mut handles = Vec::with_capacity(workers);
        for (w, backend) in backends.into_iter().enumerate() {
            let shared = Arc::clone(&shared);
            let handle = std::thread::Builder::new()
                .name(format!("fs-{}-{w}", options.name))
                .spawn(move || worker_loop(backend, &shared))
                .map_err(|e| BackendError::load(format!("cannot spawn worker thread: {e}")))?;
            handles.push(handle);
        }
        Ok(Self {
            options,
            runtime: factory.runtime(),
            tx: RwLock::new(Some(tx)),
            shared,
            workers: Mutex::new(handles),
            labels: None,
        })
    }

    /// Attaches class labels (from `index_to_name.json`), one per output value.
    #[must_use]
    pub fn with_labels(mut self, labels: Vec<String>) -> Self {
        self.labels = Some(labels.into());
        self
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
    /// when the queue is full (at once), [`EngineError::ShuttingDown`] once the model is closed.
    pub fn submit(&self, input: Vec<f32>) -> Result<oneshot::Receiver<InferResult>, EngineError> {
        let want = self.shared.spec.input_len();
        if input.len() != want {
            return Err(EngineError::InvalidInput(format!(
                "expected {want} values of shape {:?}, got {}",
                self.shared.spec.input_shape,
                input.len()
            )));
        }
        let (reply, rx) = oneshot::channel();
        let arrived = Instant::now();
        let request = InferRequest {
            input,
            reply,
            arrived,
            deadline: arrived + self.options.response_timeout,
        };
        let tx = self.tx.read().unwrap_or_else(PoisonError::into_inner);
        let closed = || EngineError::ShuttingDown(self.options.name.clone());
        match queue::push(tx.as_ref().ok_or_else(closed)?, request) {
            Ok(()) => {
                ModelStats::bump(&self.shared.stats.accepted);
                Ok(rx)
            }
            Err(PushError::Full(_)) => {
                ModelStats::bump(&self.shared.stats.rejected_queue_full);
                Err(EngineError::QueueFull {
                    model: self.options.name.clone(),
                    capacity: self.options.queue_size,
                })
            }
            Err(PushError::Closed(_)) => Err(closed()),
        }
    }

    /// Stops taking requests; the workers finish what is queued, then exit.
    pub fn close(&self) {
        self.tx
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
    }

    /// Closes the model and waits for its workers to finish (blocking: not for an async task).
    pub fn shutdown(&self) {
        self.close();
        let handles =
            std::mem::take(&mut *self.workers.lock().unwrap_or_else(PoisonError::into_inner));
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

    /// The device its workers run on.
    #[must_use]
    pub fn device(&self) -> Device {
        self.shared.device
    }

    /// The batch policy in force.
    #[must_use]
    pub fn policy(&self) -> BatchPolicy {
        *self
            .shared
            .policy
            .read()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Changes batch size and delay live; the next batch formed uses them.
    pub fn set_policy(&self, policy: BatchPolicy) {
        *self
            .shared
            .policy
            .write()
            .unwrap_or_else(PoisonError::into_inner) = policy;
    }

    /// Requests waiting in the queue.
    #[must_use]
    pub fn queue_len(&self) -> usize {
        self.shared.source.0.len()
    }

    /// The model's counters.
    #[must_use]
    pub fn stats(&self) -> StatsSnapshot {
        self.shared.stats.snapshot()
    }
}

impl Drop for Model {
    fn drop(&mut self) {
        self.close();
    }
}
