//! The synchronous backend trait that runs one batch on one device, and the backends behind it.
//!
//! A [`BackendFactory`] is loaded once per model and device; it makes one [`Backend`] per worker thread (an ONNX
//! Runtime session cannot run concurrently with itself, so each worker owns one; TorchScript workers share one
//! module). `infer` is a blocking call made on the
//! worker's own thread, never on the async runtime.
//!
//! A model whose input shape is fixed (every ONNX model) runs its batches through [`Backend::infer`]; one whose
//! shape is left to the requests (TorchScript without a declaration) runs each batch, all of one shape, through
//! [`Backend::infer_shaped`], which also says the output's shape.

pub mod declared;
mod fake;
pub mod handler;
#[cfg(feature = "onnx")]
mod onnx;
pub mod python;
mod shape;
#[cfg(feature = "torch")]
pub mod torch;

use std::{fmt, sync::Arc};

use parking_lot::Mutex;

use handler::{HandlerInput, HandlerOutput};

pub use declared::Declaration;
pub use fake::{FakeBackend, FakeMode, FakeScript, FakeStep, Gate};
#[cfg(feature = "onnx")]
pub use onnx::{OnnxFactory, OnnxOptions};
pub use python::{PythonFactory, PythonOptions};
pub use shape::{elements_of, Shape};
#[cfg(feature = "torch")]
pub use torch::TorchFactory;

/// The device a backend runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Device {
    /// The host CPU.
    Cpu,
    /// An NVIDIA GPU, by index.
    Cuda(usize),
    /// An Apple-silicon GPU.
    Mps,
}

impl Device {
    /// The short name used in responses and metric labels: `cpu`, `cuda`, `mps`.
    #[must_use]
    pub fn kind(&self) -> &'static str {
        match self {
            Device::Cpu => "cpu",
            Device::Cuda(_) => "cuda",
            Device::Mps => "mps",
        }
    }
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Device::Cuda(i) => write!(f, "cuda:{i}"),
            other => f.write_str(other.kind()),
        }
    }
}

/// The shapes of a model's single input and single output, per sample (without the batch dimension), as far as
/// the model tells them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelSpec {
    /// Name of the input tensor (e.g. `landmarks`).
    pub input_name: String,
    /// Per-sample input shape (e.g. `[30, 21, 3]`).
    pub input_shape: Shape,
    /// Name of the output tensor (e.g. `probabilities`).
    pub output_name: String,
    /// Per-sample output shape (e.g. `[10]`).
    pub output_shape: Shape,
}

impl ModelSpec {
    /// Number of f32 values in one sample's input, when its shape is fixed.
    #[must_use]
    pub fn input_len(&self) -> Option<usize> {
        self.input_shape.elements()
    }

    /// Number of f32 values in one sample's output, when its shape is fixed.
    #[must_use]
    pub fn output_len(&self) -> Option<usize> {
        self.output_shape.elements()
    }

    /// Checks one sample of `len` values, of shape `shape` when the caller knows it, against the model's input, and
    /// returns the shape the sample carries through the engine: `None` when the model's input shape is fixed (its
    /// batches then need no check and no allocation), the sample's own when the model leaves sizes to the requests.
    ///
    /// # Errors
    /// What does not fit: the shape, the number of values, or a missing shape for a model that needs one.
    pub fn sample_shape(&self, len: usize, shape: Option<&[usize]>) -> Result<Option<Arc<[usize]>>, String> {
        if let Some(shape) = shape.filter(|s| !self.input_shape.admits(s)) {
            return Err(format!("input of shape {shape:?}: the model takes {}", self.input_shape));
        }
        if let Some(want) = self.input_len() {
            return if len == want {
                Ok(None)
            } else {
                Err(format!("expected {want} values of shape {}, got {len}", self.input_shape))
            };
        }
        let shape = shape.ok_or_else(|| {
            format!("the model's input shape {} is not fixed: the request must give its own", self.input_shape)
        })?;
        if shape.contains(&0) {
            return Err(format!("input of shape {shape:?}: every size must be at least 1"));
        }
        match elements_of(shape) {
            Some(want) if want == len => Ok(Some(shape.into())),
            _ => Err(format!("input of shape {shape:?} has {len} values")),
        }
    }
}

/// What a batch of a shape the model leaves open gives: its values, row-major, and the shape of one sample's row.
#[derive(Debug, Clone, PartialEq)]
pub struct Shaped {
    /// `batch` rows of `shape`.
    pub values: Vec<f32>,
    /// Per-sample output shape.
    pub shape: Vec<usize>,
}

/// A backend failure. Cloneable, so that one failure can answer every request of its batch.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BackendError {
    /// The model could not be loaded.
    #[error("cannot load model: {0}")]
    Load(Arc<str>),
    /// The model failed while running a batch.
    #[error("inference failed: {0}")]
    Inference(Arc<str>),
    /// The model rejected the batch's input: a shape it cannot take, of a model that leaves its shape to the
    /// requests. Every request of the batch has that shape, so each is told, as the client's error.
    #[error("{0}")]
    Input(Arc<str>),
    /// A Python handler's worker answered the whole batch with this status and message (TorchServe's
    /// `PredictionException`, or 503 `Prediction failed` when the handler raised): each request of the batch
    /// gets them, as in TorchServe.
    #[error("{message}")]
    Status {
        /// The HTTP status the worker gave.
        code: u16,
        /// The worker's message.
        message: Arc<str>,
    },
}

impl BackendError {
    /// A load error with this message.
    pub fn load(msg: impl fmt::Display) -> Self {
        Self::Load(msg.to_string().into())
    }

    /// An inference error with this message.
    pub fn inference(msg: impl fmt::Display) -> Self {
        Self::Inference(msg.to_string().into())
    }

    /// The error of an input the model rejected, with this message.
    pub fn input(msg: impl fmt::Display) -> Self {
        Self::Input(msg.to_string().into())
    }
}

/// One worker's handle on a loaded model.
pub trait Backend: Send {
    /// Runs `batch` samples stacked row-major in `input` (`batch * spec.input_len()` values) and returns
    /// `batch * spec.output_len()` values, row `i` being the answer to input row `i`. For models whose input shape
    /// is fixed.
    ///
    /// # Errors
    /// [`BackendError::Inference`] when the runtime fails; the worker answers the whole batch with it.
    fn infer(&mut self, batch: usize, input: &[f32]) -> Result<Vec<f32>, BackendError>;

    /// Runs `batch` samples of per-sample shape `shape`, stacked row-major in `input`, and returns `batch` rows with
    /// the shape of one: for models that leave their input shape to the requests.
    ///
    /// # Errors
    /// [`BackendError::Input`] when the model rejects the input (libtorch's message), [`BackendError::Inference`]
    /// when the runtime fails otherwise; the worker answers the whole batch with it.
    fn infer_shaped(&mut self, batch: usize, shape: &[usize], input: &[f32]) -> Result<Shaped, BackendError>;

    /// Runs a batch of requests through a Python handler and returns one answer per request, in order: for
    /// models served by a TorchServe handler ([`python`]). Backends of tensor models refuse.
    ///
    /// # Errors
    /// [`BackendError::Status`] when the worker fails the whole batch, [`BackendError::Inference`] when it dies,
    /// hangs past the response timeout or answers out of protocol.
    fn handle(&mut self, batch: &[&HandlerInput]) -> Result<Vec<HandlerOutput>, BackendError> {
        let _ = batch;
        Err(BackendError::inference("this model takes tensors, not requests for a Python handler"))
    }

    /// The process that runs the model for this backend when it is not the server's own (a Python worker), as
    /// TorchServe's describe reports each worker's `pid`. `None` for backends that run in the server.
    fn process_id(&self) -> Option<u32> {
        None
    }

    /// How many times the backend has replaced the process that runs its model (a Python worker that died or
    /// hung), counted in `ferroserve_worker_restarts_total` with the worker threads restarted. 0 for backends
    /// that run in the server.
    fn restarts(&self) -> u64 {
        0
    }
}

/// A loaded model that makes backends for worker threads.
pub trait BackendFactory: Send + Sync {
    /// The model's input and output shapes.
    fn spec(&self) -> &ModelSpec;
    /// The device its backends run on.
    fn device(&self) -> Device;
    /// The runtime's name (`onnx`, `fake`), as TorchServe's describe API reports it.
    fn runtime(&self) -> &'static str;
    /// Makes the backend of worker `worker`.
    ///
    /// # Errors
    /// [`BackendError::Load`] when the runtime cannot open the model.
    fn create(&self, worker: usize) -> Result<Box<dyn Backend>, BackendError>;
    /// The device worker `worker`'s backend runs on: [`BackendFactory::device`] unless the model is spread over
    /// several ([`MultiDevice`]).
    fn worker_device(&self, _worker: usize) -> Device {
        self.device()
    }
}

/// Loads a model on one device.
pub type DeviceLoader = dyn Fn(Device) -> Result<Arc<dyn BackendFactory>, BackendError> + Send + Sync;

/// One model on several devices, its workers spread over them in turn: worker `w` runs on the `w % n`-th, as
/// TorchServe assigns GPUs to workers. The model is loaded on the first device at once and on each other device
/// when its first worker starts (one TorchScript module, or one set of ONNX sessions, per device), so that a model
/// with fewer workers than devices takes no memory on the devices it does not use.
pub struct MultiDevice {
    devices: Vec<Device>,
    loaded: Vec<Mutex<Option<Arc<dyn BackendFactory>>>>,
    first: Arc<dyn BackendFactory>,
    load: Box<DeviceLoader>,
}

impl MultiDevice {
    /// Spreads workers over `devices`, in order, loading the model on each with `load`.
    ///
    /// # Errors
    /// [`BackendError::Load`] when there is no device, or when the model cannot be loaded on the first.
    pub fn new(
        devices: Vec<Device>,
        load: impl Fn(Device) -> Result<Arc<dyn BackendFactory>, BackendError> + Send + Sync + 'static,
    ) -> Result<Self, BackendError> {
        let first_device = *devices.first().ok_or_else(|| BackendError::load("a model needs at least one device"))?;
        let first = load(first_device)?;
        let loaded = devices.iter().map(|_| Mutex::new(None)).collect::<Vec<_>>();
        *loaded[0].lock() = Some(Arc::clone(&first));
        Ok(Self { devices, loaded, first, load: Box::new(load) })
    }

    /// The model on the device of worker `worker`, loaded now if no worker ran there yet.
    fn factory(&self, worker: usize) -> Result<Arc<dyn BackendFactory>, BackendError> {
        let slot = worker % self.devices.len();
        let mut loaded = self.loaded[slot].lock();
        if let Some(factory) = loaded.as_ref() {
            return Ok(Arc::clone(factory));
        }
        let factory = (self.load)(self.devices[slot])?;
        if factory.spec() != self.first.spec() || factory.runtime() != self.first.runtime() {
            return Err(BackendError::load(format!(
                "the model on {} and on {} differ: {:?} ({}) and {:?} ({})",
                self.devices[0],
                self.devices[slot],
                self.first.spec(),
                self.first.runtime(),
                factory.spec(),
                factory.runtime()
            )));
        }
        *loaded = Some(Arc::clone(&factory));
        Ok(factory)
    }
}

impl BackendFactory for MultiDevice {
    fn spec(&self) -> &ModelSpec {
        self.first.spec()
    }

    /// The first device.
    fn device(&self) -> Device {
        self.devices[0]
    }

    fn runtime(&self) -> &'static str {
        self.first.runtime()
    }

    fn create(&self, worker: usize) -> Result<Box<dyn Backend>, BackendError> {
        self.factory(worker)?.create(worker)
    }

    fn worker_device(&self, worker: usize) -> Device {
        self.devices[worker % self.devices.len()]
    }
}

/// Checks what a backend returned against what the batch needs, so that a wrong-sized output never reaches a
/// client as somebody else's row.
///
/// # Errors
/// [`BackendError::Inference`] when the length is not `batch * spec.output_len()`.
pub fn check_output(spec: &ModelSpec, batch: usize, output: &[f32]) -> Result<(), BackendError> {
    let Some(per_sample) = spec.output_len() else {
        return Err(BackendError::inference(format!("the model's output shape {} is not fixed", spec.output_shape)));
    };
    let want = batch * per_sample;
    if output.len() == want {
        Ok(())
    } else {
        Err(BackendError::inference(format!(
            "the model returned {} values for a batch of {batch}, expected {want}",
            output.len()
        )))
    }
}

/// [`check_output`] for a batch run by [`Backend::infer_shaped`]: `batch` rows of the shape it says, which must fit
/// the model's output shape as far as it is known.
///
/// # Errors
/// [`BackendError::Inference`] when the rows do not fill the values or their shape is not the model's.
pub fn check_shaped(spec: &ModelSpec, batch: usize, output: &Shaped) -> Result<(), BackendError> {
    if !spec.output_shape.admits(&output.shape) {
        return Err(BackendError::inference(format!(
            "the model returned rows of shape {:?}, its output shape is {}",
            output.shape, spec.output_shape
        )));
    }
    match elements_of(&output.shape).and_then(|n| n.checked_mul(batch)) {
        Some(want) if want == output.values.len() => Ok(()),
        _ => Err(BackendError::inference(format!(
            "the model returned {} values for a batch of {batch} rows of shape {:?}",
            output.values.len(),
            output.shape
        ))),
    }
}
