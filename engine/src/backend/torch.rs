//! The TorchScript backend (tch on libtorch): `.pt` and `.pth` files written by `torch.jit.save`.
//!
//! One module per model and device, shared by every worker on that device (`Arc<CModule>`: the weights are
//! loaded once, not once per worker as in TorchServe), run under `no_grad`. On CUDA, each worker thread takes its
//! own stream from libtorch's pool on its first batch and keeps it for its life; its input is staged in pinned
//! host memory and copied to the GPU asynchronously on that stream, and the result comes back on the same stream.
//! On MPS the tensors simply move to `Device::Mps`; on the CPU, libtorch's intra-op pool is sized once per process
//! ([`set_intra_op_threads`]).
//!
//! A TorchScript file carries neither tensor names nor shapes. They come from the model's config, a JSON file
//! beside it named after it (`signnet.pt.json`):
//! `{"input": {"name": "landmarks", "shape": [30, 21, 3]}, "output": {"name": "probabilities"}}`; the output's
//! per-sample shape is read from a first forward on zeros at load (and checked against `output.shape` if given).

mod stream;

use std::{
    path::{Path, PathBuf},
    sync::{Arc, OnceLock},
    thread::ThreadId,
};

use serde_json::Value;
use tch::{CModule, Kind, TchError, Tensor};

pub use stream::current_cuda_stream;
pub(crate) use stream::pool_stream;

use super::{check_output, Backend, BackendError, BackendFactory, Device, ModelSpec};

/// Samples in the forward that reads the output shape at load: two, so that a batch dimension that is not
/// carried through (a model that reduces over it) shows.
const PROBE_BATCH: usize = 2;

/// A loaded TorchScript model on one device; clones share the module.
#[derive(Clone)]
pub struct TorchFactory {
    module: Arc<CModule>,
    spec: ModelSpec,
    device: Device,
}

impl std::fmt::Debug for TorchFactory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TorchFactory").field("spec", &self.spec).field("device", &self.device).finish_non_exhaustive()
    }
}

/// Sets libtorch's intra-op threads for the process, once: later calls change nothing. Returns the number in
/// force. Call it before the first model runs, with `workers x threads` fitting the cores.
pub fn set_intra_op_threads(threads: usize) -> usize {
    static SET: OnceLock<usize> = OnceLock::new();
    *SET.get_or_init(|| {
        let threads = threads.max(1);
        tch::set_num_threads(i32::try_from(threads).unwrap_or(i32::MAX));
        threads
    })
}

/// The config file of the TorchScript model at `path`: the same name with `.json` appended.
#[must_use]
pub fn config_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".json");
    PathBuf::from(name)
}

impl TorchFactory {
    /// Loads the module onto `device`, reads the model's config and runs one forward on zeros to learn the output
    /// shape.
    ///
    /// # Errors
    /// [`BackendError::Load`] when the file is not TorchScript (a `torch.save` pickle or a state_dict: the message
    /// says how to export it), when the config is missing or malformed, or when the first forward fails or does
    /// not return one tensor with the batch first.
    pub fn load(path: &Path, device: Device) -> Result<Self, BackendError> {
        let fail = |message: String| BackendError::load(format!("{}: {message}", path.display()));
        let mut module = CModule::load_on_device(path, tch_device(device)).map_err(|e| not_torchscript(path, &e))?;
        let declared = read_config(&config_path(path)).map_err(fail)?;
        module.f_set_eval().map_err(|e| fail(first_line(&e.to_string()).to_string()))?;
        let mut factory = Self { module: Arc::new(module), spec: declared.spec, device };
        factory.spec.output_shape = factory.probe().map_err(fail)?;
        if let Some(shape) = declared.output_shape.filter(|s| *s != factory.spec.output_shape) {
            return Err(fail(format!(
                "the config says the output shape is {shape:?}, the model returns {:?}",
                factory.spec.output_shape
            )));
        }
        Ok(factory)
    }

    /// Runs [`PROBE_BATCH`] zero samples through the module and returns the per-sample output shape.
    fn probe(&self) -> Result<Vec<usize>, String> {
        let mut backend = self.backend();
        let zeros = vec![0.0; PROBE_BATCH * self.spec.input_len()];
        let output = backend.forward(PROBE_BATCH, &zeros).map_err(|e| format!("the first forward failed: {e}"))?;
        let dims = output.size();
        match dims.split_first() {
            Some((&batch, rest)) if usize::try_from(batch) == Ok(PROBE_BATCH) => {
                rest.iter().map(|&d| usize::try_from(d).map_err(|_| format!("bad output shape {dims:?}"))).collect()
            }
            _ => Err(format!("a batch of {PROBE_BATCH} gave an output of shape {dims:?}: the batch must come first")),
        }
    }

    fn backend(&self) -> TorchBackend {
        TorchBackend { module: Arc::clone(&self.module), spec: self.spec.clone(), device: self.device, stream: None }
    }
}

impl BackendFactory for TorchFactory {
    fn spec(&self) -> &ModelSpec {
        &self.spec
    }

    fn device(&self) -> Device {
        self.device
    }

    fn runtime(&self) -> &'static str {
        "torchscript"
    }

    fn create(&self, _worker: usize) -> Result<Box<dyn Backend>, BackendError> {
        Ok(Box::new(self.backend()))
    }
}

/// One worker's handle: the shared module, and the stream its thread took (CUDA).
struct TorchBackend {
    module: Arc<CModule>,
    spec: ModelSpec,
    device: Device,
    /// The pool stream made current on this thread, and the thread: a backend is created on one thread and runs
    /// on its worker's, so the stream is taken at the first batch.
    stream: Option<(ThreadId, i64)>,
}

impl TorchBackend {
    /// Makes a stream of the pool this thread's current one on the worker's GPU, once per thread.
    fn bind_stream(&mut self) -> Result<(), BackendError> {
        let Device::Cuda(index) = self.device else {
            return Ok(());
        };
        let thread = std::thread::current().id();
        if self.stream.is_none_or(|(bound, _)| bound != thread) {
            let stream = pool_stream(index, true)?;
            tracing::debug!(device = %self.device, stream = stream.id, "worker thread took a CUDA stream");
            self.stream = Some((thread, stream.id));
        }
        Ok(())
    }

    /// Moves the stacked batch to the device: pinned host memory and an asynchronous copy on the thread's stream
    /// for CUDA, a plain copy for MPS, no copy beyond the tensor's own for the CPU.
    fn stage(&self, batch: usize, input: &[f32]) -> Result<Tensor, TchError> {
        let shape: Vec<i64> = std::iter::once(batch).chain(self.spec.input_shape.iter().copied()).map(as_dim).collect();
        let host = Tensor::f_from_slice(input)?.f_view(shape.as_slice())?;
        let device = tch_device(self.device);
        match self.device {
            Device::Cpu => Ok(host),
            Device::Cuda(_) => host.f_pin_memory(device)?.f_to_device_(device, Kind::Float, true, false),
            Device::Mps => host.f_to_device_(device, Kind::Float, false, false),
        }
    }

    /// The module's output for the batch, still on the device.
    fn forward(&mut self, batch: usize, input: &[f32]) -> Result<Tensor, BackendError> {
        self.bind_stream()?;
        let _no_grad = tch::no_grad_guard();
        let x = self.stage(batch, input).map_err(inference)?;
        self.module.forward_ts(&[x]).map_err(inference)
    }
}

impl Backend for TorchBackend {
    fn infer(&mut self, batch: usize, input: &[f32]) -> Result<Vec<f32>, BackendError> {
        let output = self.forward(batch, input)?;
        // A synchronous copy on the thread's stream: it waits for the forward, and only for it.
        let host = output.f_to_device_(tch::Device::Cpu, Kind::Float, false, false).map_err(inference)?;
        let numel = host.numel();
        let mut values = vec![0.0_f32; numel];
        host.f_copy_data(&mut values, numel).map_err(inference)?;
        check_output(&self.spec, batch, &values)?;
        Ok(values)
    }
}

fn tch_device(device: Device) -> tch::Device {
    match device {
        Device::Cpu => tch::Device::Cpu,
        Device::Cuda(index) => tch::Device::Cuda(index),
        Device::Mps => tch::Device::Mps,
    }
}

fn as_dim(size: usize) -> i64 {
    i64::try_from(size).unwrap_or(i64::MAX)
}

fn inference(error: TchError) -> BackendError {
    BackendError::inference(first_line(&error.to_string()))
}

/// libtorch's messages carry a C++ backtrace after their first line; clients and logs need the first.
pub(crate) fn first_line(message: &str) -> &str {
    message.lines().find(|l| !l.trim().is_empty()).map_or(message, str::trim)
}

/// What a model's config declares.
struct Declared {
    spec: ModelSpec,
    output_shape: Option<Vec<usize>>,
}

fn read_config(path: &Path) -> Result<Declared, String> {
    let example = r#"{"input": {"name": "x", "shape": [30, 21, 3]}, "output": {"name": "y"}}"#;
    let text = std::fs::read_to_string(path).map_err(|e| {
        format!("TorchScript files carry no input shape; write it in {} ({e}), e.g. {example}", path.display())
    })?;
    let json: Value = serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    let name = |side: &str| json[side]["name"].as_str().unwrap_or(side).to_string();
    let shape = |side: &str| -> Result<Option<Vec<usize>>, String> {
        match &json[side]["shape"] {
            Value::Null => Ok(None),
            value => serde_json::from_value(value.clone())
                .map(Some)
                .map_err(|_| format!("{}: {side}.shape must be a list of sizes, e.g. {example}", path.display())),
        }
    };
    let input_shape =
        shape("input")?.ok_or_else(|| format!("{}: input.shape is missing, e.g. {example}", path.display()))?;
    let spec = ModelSpec { input_name: name("input"), input_shape, output_name: name("output"), output_shape: vec![] };
    Ok(Declared { spec, output_shape: shape("output")? })
}

/// The load error of a file libtorch cannot read as TorchScript, saying what it looks like and how to export it.
fn not_torchscript(path: &Path, error: &TchError) -> BackendError {
    if !path.is_file() {
        return BackendError::load(format!("{}: no such file", path.display()));
    }
    let message = error.to_string();
    let head = std::fs::File::open(path).and_then(|mut f| {
        let mut magic = [0_u8; 2];
        std::io::Read::read_exact(&mut f, &mut magic).map(|()| magic)
    });
    let what = match head {
        Ok([0x80, 2..=5]) => "a pickle (torch.save in the legacy format), not TorchScript".to_string(),
        Ok([b'P', b'K']) if message.contains("constants.pkl") => {
            "a torch.save archive (a pickled model or a state_dict), not TorchScript".to_string()
        }
        // libtorch's own words, without the advice about corrupted checkpoints that follows them.
        _ => {
            let said = first_line(&message).trim_start_matches("Internal torch error: ");
            format!("not a TorchScript file ({})", said.split(". ").next().unwrap_or(said).trim_end_matches('.'))
        }
    };
    BackendError::load(format!(
        "{}: {what}. Export the model with torch.jit.save(torch.jit.trace(model, example_input), \"model.pt\") \
         or torch.jit.save(torch.jit.script(model), \"model.pt\")",
        path.display()
    ))
}
