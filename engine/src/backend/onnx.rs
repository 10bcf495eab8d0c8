//! The ONNX Runtime backend (ort, loading `libonnxruntime` at run time), on the CPU or on CUDA.
//!
//! One session per worker: ort's `Session::run` takes `&mut self`. Each session gets `intra_threads` threads, so
//! that `workers x intra_threads` can be sized to the cores instead of every session spawning one thread per core.
//! On CUDA, sessions use ONNX Runtime's CUDA execution provider (the onnxruntime-gpu wheel), each computing on the
//! stream its provider makes (one session per worker: one stream per worker), so that serving ONNX needs no
//! libtorch. ONNX Runtime has no MPS provider: asked for MPS, the model runs on the CPU and says so.

use std::{
    path::{Path, PathBuf},
    sync::OnceLock,
};

use ort::{
    environment::Environment,
    ep::ExecutionProviderDispatch,
    session::{
        builder::{GraphOptimizationLevel, SessionBuilder},
        Session,
    },
    value::{TensorElementType, TensorRef, ValueType},
};

use super::{check_output, Backend, BackendError, BackendFactory, Device, ModelSpec, Shape, Shaped};

/// Where the ONNX Runtime library is and how sessions use threads.
#[derive(Debug, Clone)]
pub struct OnnxOptions {
    /// Path of `libonnxruntime.so` (from `ORT_DYLIB_PATH` or the build's default).
    pub dylib: PathBuf,
    /// Intra-op threads per session (per worker).
    pub intra_threads: usize,
}

/// A loaded ONNX model: its file, spec, device and the options its sessions are built with.
#[derive(Debug, Clone)]
pub struct OnnxFactory {
    path: PathBuf,
    options: OnnxOptions,
    spec: ModelSpec,
    device: Device,
}

/// The process-wide ONNX Runtime environment; the library can be loaded once per process.
fn environment(dylib: &Path) -> Result<Environment, BackendError> {
    static ENV: OnceLock<Result<Environment, String>> = OnceLock::new();
    ENV.get_or_init(|| {
        let builder =
            ort::init_from(dylib).map_err(|e| format!("cannot load ONNX Runtime from {}: {e}", dylib.display()))?;
        builder.with_name("ferroserve").build().map_err(|e| e.to_string())
    })
    .clone()
    .map_err(BackendError::load)
}

impl OnnxFactory {
    /// Opens `path` once to read its input and output shapes; workers open their own sessions later.
    ///
    /// # Errors
    /// [`BackendError::Load`] when the library or the model cannot be loaded, or when the model does not have
    /// exactly one float input and output whose dimensions, but the first (batch), are fixed.
    pub fn load(path: &Path, options: OnnxOptions) -> Result<Self, BackendError> {
        Self::load_on(path, options, Device::Cpu)
    }

    /// Like [`OnnxFactory::load`], for `device`. MPS becomes the CPU (ONNX Runtime has no MPS provider), with a
    /// warning; [`BackendFactory::device`] then reports the CPU.
    ///
    /// # Errors
    /// As [`OnnxFactory::load`], and when CUDA is asked for and ONNX Runtime cannot use it (the CPU wheel has no
    /// CUDA provider: `make deps` installs onnxruntime-gpu where `nvidia-smi` finds a GPU).
    pub fn load_on(path: &Path, options: OnnxOptions, device: Device) -> Result<Self, BackendError> {
        let device = if device == Device::Mps {
            tracing::warn!(model = %path.display(), "ONNX Runtime has no MPS provider: this model runs on the CPU");
            Device::Cpu
        } else {
            device
        };
        let session = open(path, &options, device)?;
        let spec = spec_of(&session).map_err(|e| BackendError::load(format!("{}: {e}", path.display())))?;
        Ok(Self { path: path.to_path_buf(), options, spec, device })
    }
}

fn open(path: &Path, options: &OnnxOptions, device: Device) -> Result<Session, BackendError> {
    let env = environment(&options.dylib)?;
    let fail = |e: ort::Error| BackendError::load(format!("{}: {e}", path.display()));
    let providers = match device {
        Device::Cuda(index) => vec![cuda_provider(index)?],
        Device::Cpu | Device::Mps => Vec::new(),
    };
    let configure = |b: SessionBuilder| -> ort::Result<SessionBuilder> {
        Ok(b.with_optimization_level(GraphOptimizationLevel::Level3)?
            .with_intra_threads(options.intra_threads.max(1))?
            .with_inter_threads(1)?
            .with_execution_providers(providers)?)
    };
    configure(Session::builder(&env).map_err(fail)?).map_err(fail)?.commit_from_file(path).map_err(fail)
}

/// ONNX Runtime's CUDA provider on GPU `index`, computing on a stream of its own. Registration failing is an
/// error, never a silent CPU.
fn cuda_provider(index: usize) -> Result<ExecutionProviderDispatch, BackendError> {
    Ok(ort::ep::CUDA::default().with_device_id(gpu_id(index)?).build().error_on_failure())
}

fn gpu_id(index: usize) -> Result<i32, BackendError> {
    i32::try_from(index).map_err(|_| BackendError::load(format!("CUDA device index {index} is out of range")))
}

/// Reads the per-sample shapes: one f32 input and one f32 output, batch first, every other dimension fixed.
fn spec_of(session: &Session) -> Result<ModelSpec, String> {
    let (input, output) = match (session.inputs(), session.outputs()) {
        ([input], [output, ..]) => (input, output),
        (inputs, _) => return Err(format!("expected one input, the model has {}", inputs.len())),
    };
    let shape = |dtype: &ValueType, what: &str| -> Result<Vec<usize>, String> {
        let ValueType::Tensor { ty, shape, .. } = dtype else {
            return Err(format!("its {what} is not a tensor"));
        };
        if *ty != TensorElementType::Float32 {
            return Err(format!("its {what} is {ty:?}: ferroserve serves float32 inputs and outputs only"));
        }
        let dims: &[i64] = shape;
        let rest = dims.get(1..).ok_or_else(|| format!("its {what} has no batch dimension"))?;
        rest.iter()
            .map(|&d| usize::try_from(d).map_err(|_| format!("its {what} shape {dims:?} has a dynamic dimension")))
            .collect()
    };
    Ok(ModelSpec {
        input_name: input.name().to_string(),
        input_shape: Shape::fixed(shape(input.dtype(), "input")?),
        output_name: output.name().to_string(),
        output_shape: Shape::fixed(shape(output.dtype(), "output")?),
    })
}

impl BackendFactory for OnnxFactory {
    fn spec(&self) -> &ModelSpec {
        &self.spec
    }

    fn device(&self) -> Device {
        self.device
    }

    fn runtime(&self) -> &'static str {
        "onnx"
    }

    fn create(&self, _worker: usize) -> Result<Box<dyn Backend>, BackendError> {
        let session = open(&self.path, &self.options, self.device)?;
        let input_shape = self.spec.input_shape.to_fixed().unwrap_or_default();
        Ok(Box::new(OnnxBackend { session, spec: self.spec.clone(), input_shape }))
    }
}

struct OnnxBackend {
    session: Session,
    spec: ModelSpec,
    /// The per-sample input shape (ONNX models given to ferroserve fix it).
    input_shape: Vec<usize>,
}

impl Backend for OnnxBackend {
    fn infer(&mut self, batch: usize, input: &[f32]) -> Result<Vec<f32>, BackendError> {
        let mut shape = Vec::with_capacity(self.input_shape.len() + 1);
        shape.push(batch);
        shape.extend_from_slice(&self.input_shape);
        // A view over the stacked batch: no copy between the worker's buffer and the runtime.
        let tensor = TensorRef::from_array_view((shape, input)).map_err(BackendError::inference)?;
        let outputs = self.session.run(ort::inputs![tensor]).map_err(BackendError::inference)?;
        let (_, data) = outputs[0].try_extract_tensor::<f32>().map_err(BackendError::inference)?;
        check_output(&self.spec, batch, data)?;
        Ok(data.to_vec())
    }

    /// Runs a batch of samples of `shape`. ONNX models fix their shape, which the engine checks before a request
    /// is queued; a run that fails here is ONNX Runtime rejecting the input.
    fn infer_shaped(&mut self, batch: usize, shape: &[usize], input: &[f32]) -> Result<Shaped, BackendError> {
        let dims: Vec<usize> = std::iter::once(batch).chain(shape.iter().copied()).collect();
        let tensor = TensorRef::from_array_view((dims, input)).map_err(BackendError::inference)?;
        let outputs = self.session.run(ort::inputs![tensor]).map_err(BackendError::input)?;
        let (dims, data) = outputs[0].try_extract_tensor::<f32>().map_err(BackendError::inference)?;
        let rows: &[i64] = dims;
        let shape = rows.get(1..).and_then(|rest| rest.iter().map(|&d| usize::try_from(d).ok()).collect());
        let shape = shape.ok_or_else(|| BackendError::inference(format!("the model returned a shape of {rows:?}")))?;
        Ok(Shaped { values: data.to_vec(), shape })
    }
}
