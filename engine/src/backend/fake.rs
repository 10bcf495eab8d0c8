//! The fake backend, always compiled: scripted latency and failures, an echo mode to prove there is no
//! cross-talk between requests, a gate that holds batches until a test releases them, and a log of batch sizes
//! (and of the sample shapes of batches run through [`Backend::infer_shaped`]).

use std::{
    collections::VecDeque,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use parking_lot::{Condvar, Mutex, MutexGuard};

use super::{Backend, BackendError, BackendFactory, Device, ModelSpec, Shaped};

/// What the fake computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FakeMode {
    /// Output row `i` is the first `output_len` values of input row `i` (the whole row, of the input's shape, when
    /// the output shape is not fixed).
    Echo,
    /// Output row `i` is the batch size followed by zeros (shows how requests were grouped).
    BatchSize,
}

/// Steps the fake takes per batch, in order, shared by all its workers. When the script runs out, batches
/// succeed with no delay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FakeStep {
    /// Succeed after sleeping this long (real time; used only by benchmarks and overload tests).
    Sleep(Duration),
    /// Fail with this message.
    Fail(String),
    /// Panic with this message (the worker must survive it).
    Panic(String),
    /// Reject the batch's input with this message, as libtorch rejects a shape its model cannot take.
    Reject(String),
}

/// A shared script of [`FakeStep`]s.
#[derive(Debug, Clone, Default)]
pub struct FakeScript(Arc<Mutex<VecDeque<FakeStep>>>);

impl FakeScript {
    /// Appends a step.
    pub fn push(&self, step: FakeStep) {
        self.0.lock().push_back(step);
    }

    fn pop(&self) -> Option<FakeStep> {
        self.0.lock().pop_front()
    }
}

/// A gate that batches wait at while it is closed; it counts the batches that reached it, so a test can wait
/// until a worker is busy before it fills the queue.
#[derive(Debug, Clone, Default)]
pub struct Gate(Arc<(Mutex<GateState>, Condvar)>);

#[derive(Debug, Default)]
struct GateState {
    closed: bool,
    arrived: usize,
}

impl Gate {
    /// A gate that holds every batch until [`Gate::open`].
    #[must_use]
    pub fn closed() -> Self {
        let gate = Self::default();
        gate.state().closed = true;
        gate
    }

    /// Holds every future batch until [`Gate::open`].
    pub fn close(&self) {
        self.state().closed = true;
    }

    /// Lets every held and future batch through.
    pub fn open(&self) {
        self.state().closed = false;
        self.0 .1.notify_all();
    }

    /// Blocks until at least `n` batches have reached the gate.
    pub fn wait_arrived(&self, n: usize) {
        let mut state = self.state();
        while state.arrived < n {
            self.0 .1.wait(&mut state);
        }
    }

    fn pass(&self) {
        let mut state = self.state();
        state.arrived += 1;
        self.0 .1.notify_all();
        while state.closed {
            self.0 .1.wait(&mut state);
        }
    }

    fn state(&self) -> MutexGuard<'_, GateState> {
        self.0 .0.lock()
    }
}

/// The fake model: a factory whose backends follow a shared script.
#[derive(Debug, Clone)]
pub struct FakeBackend {
    spec: ModelSpec,
    mode: FakeMode,
    device: Device,
    /// The per-batch script.
    pub script: FakeScript,
    /// Held batches wait here.
    pub gate: Gate,
    /// Sizes of the batches run, in order.
    pub batches: Arc<Mutex<Vec<usize>>>,
    /// The sample shape of each batch run through [`Backend::infer_shaped`], in order.
    pub shapes: Arc<Mutex<Vec<Vec<usize>>>>,
    /// Backends made so far (one per worker, and one per restart).
    pub created: Arc<AtomicUsize>,
    /// The next this-many backends fail to be made, as a model whose file went missing would.
    pub failing_creates: Arc<AtomicUsize>,
}

impl FakeBackend {
    /// A fake of one value in and one value out, echoing it: for tests that need a model, not its shapes.
    #[must_use]
    pub fn scalar() -> Self {
        let spec = ModelSpec {
            input_name: "x".into(),
            input_shape: vec![1].into(),
            output_name: "y".into(),
            output_shape: vec![1].into(),
        };
        Self::new(spec, FakeMode::Echo)
    }

    /// A fake with this spec and mode, an empty script and an open gate.
    #[must_use]
    pub fn new(spec: ModelSpec, mode: FakeMode) -> Self {
        Self {
            spec,
            mode,
            device: Device::Cpu,
            script: FakeScript::default(),
            gate: Gate::default(),
            batches: Arc::default(),
            shapes: Arc::default(),
            created: Arc::default(),
            failing_creates: Arc::default(),
        }
    }

    /// The same fake, reporting `device` as the one it runs on (it still computes on the CPU): for tests of how
    /// workers are spread over devices.
    #[must_use]
    pub fn on(mut self, device: Device) -> Self {
        self.device = device;
        self
    }

    /// The sizes of the batches run so far.
    #[must_use]
    pub fn batch_sizes(&self) -> Vec<usize> {
        self.batches.lock().clone()
    }

    /// The rows of a batch of samples of `in_len` values each, `out_len` values per row.
    fn compute(&self, batch: usize, input: &[f32], in_len: usize, out_len: usize) -> Vec<f32> {
        let mut out = vec![0.0; batch * out_len];
        for (row, chunk) in out.chunks_mut(out_len.max(1)).enumerate() {
            match self.mode {
                FakeMode::Echo => {
                    let src = &input[row * in_len..][..in_len.min(out_len)];
                    chunk[..src.len()].copy_from_slice(src);
                }
                #[allow(clippy::cast_precision_loss)]
                FakeMode::BatchSize => chunk[0] = batch as f32,
            }
        }
        out
    }

    /// Passes the gate, logs the batch and follows the script's next step.
    fn step(&self, batch: usize) -> Result<(), BackendError> {
        self.gate.pass();
        self.batches.lock().push(batch);
        match self.script.pop() {
            Some(FakeStep::Sleep(d)) => std::thread::sleep(d),
            Some(FakeStep::Fail(msg)) => return Err(BackendError::inference(msg)),
            Some(FakeStep::Panic(msg)) => panic!("{msg}"),
            Some(FakeStep::Reject(msg)) => return Err(BackendError::input(msg)),
            None => {}
        }
        Ok(())
    }
}

impl Backend for FakeBackend {
    fn infer(&mut self, batch: usize, input: &[f32]) -> Result<Vec<f32>, BackendError> {
        self.step(batch)?;
        let (in_len, out_len) = (self.spec.input_len().unwrap_or(0), self.spec.output_len().unwrap_or(0));
        Ok(self.compute(batch, input, in_len, out_len))
    }

    fn infer_shaped(&mut self, batch: usize, shape: &[usize], input: &[f32]) -> Result<Shaped, BackendError> {
        self.shapes.lock().push(shape.to_vec());
        self.step(batch)?;
        let in_len = input.len() / batch.max(1);
        let out_shape = match (self.spec.output_shape.to_fixed(), self.mode) {
            (Some(fixed), _) => fixed,
            (None, FakeMode::Echo) => shape.to_vec(),
            (None, FakeMode::BatchSize) => vec![1],
        };
        let out_len = out_shape.iter().product();
        Ok(Shaped { values: self.compute(batch, input, in_len, out_len), shape: out_shape })
    }
}

impl BackendFactory for FakeBackend {
    fn spec(&self) -> &ModelSpec {
        &self.spec
    }

    fn device(&self) -> Device {
        self.device
    }

    fn runtime(&self) -> &'static str {
        "fake"
    }

    fn create(&self, worker: usize) -> Result<Box<dyn Backend>, BackendError> {
        if self.failing_creates.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1)).is_ok() {
            return Err(BackendError::load(format!("scripted: the backend of worker {worker} cannot be made")));
        }
        self.created.fetch_add(1, Ordering::AcqRel);
        Ok(Box::new(self.clone()))
    }
}
