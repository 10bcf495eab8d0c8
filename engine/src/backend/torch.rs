//! The TorchScript backend: `.pt` and `.pth` files written by `torch.jit.save`, run by libtorch inside ferroserve's
//! plugin library ([`plugin`]), which is opened when the first TorchScript model loads: a server that serves no
//! TorchScript model never maps libtorch, and CUDA's libraries only on a machine with a CUDA GPU.
//!
//! One module per model and device, shared by every worker on that device (the weights are loaded once, not once
//! per worker as in TorchServe), run under `no_grad`. On CUDA, each worker thread takes its own stream from
//! libtorch's pool on its first batch and keeps it for its life; its input is staged in pinned host memory and
//! copied to the GPU asynchronously on that stream, and the result comes back on the same stream. On MPS the
//! tensors simply move to the GPU; on the CPU, libtorch's intra-op pool is sized once per process
//! ([`set_intra_op_threads`]).
//!
//! A TorchScript file carries neither tensor names nor shapes. They come from a [`Declaration`], the first found
//! of: a JSON file beside the model named after it (`signnet.pt.json`), the `ferroserve` key of its archive's
//! `model-config.yaml` (given by the caller), and an entry [`EXTRA_FILE`] of the file's own `_extra_files`
//! (`torch.jit.save(m, "model.pt", _extra_files={"ferroserve.json": ...})`). When the declared input shape is
//! fixed, the output's is read from a first forward on zeros at load (and checked against the declared one).
//! Without a declaration, or with sizes left open (`-1`), the requests give the input's shape and each batch's
//! forward the output's; a forward that fails on such a batch is the client's error
//! ([`BackendError::Input`], libtorch's message), since the model rejected a shape nothing promised it takes.

pub mod plugin;
mod stream;

use std::{
    path::{Path, PathBuf},
    sync::{Arc, OnceLock},
    thread::ThreadId,
};

use plugin::{ForwardError, HostOutput, Module, Plugin};
pub use plugin::{PLUGIN_ENV, PLUGIN_FILE};
pub use stream::current_cuda_stream;
use stream::pool_stream;

use super::{check_output, Backend, BackendError, BackendFactory, Declaration, Device, ModelSpec, Shape, Shaped};

/// The name of the `_extra_files` entry, inside the TorchScript file, that declares its tensors.
pub const EXTRA_FILE: &str = "ferroserve.json";

/// The most bytes of a declaration read from inside a TorchScript file.
const MAX_EXTRA_FILE: u64 = 1 << 20;

/// Whether libtorch's `message` is the device failing rather than the model refusing its input.
fn is_device_failure(message: &str) -> bool {
    let lower = message.to_ascii_lowercase();
    ["out of memory", "cuda error", "cudnn", "cublas", "mps backend"].iter().any(|m| lower.contains(m))
}

/// Samples in the forward that reads the output shape at load: two, so that a batch dimension that is not
/// carried through (a model that reduces over it) shows.
const PROBE_BATCH: usize = 2;

/// A loaded TorchScript model on one device; clones share the module.
#[derive(Clone)]
pub struct TorchFactory {
    module: Arc<Module>,
    spec: ModelSpec,
    device: Device,
}

impl std::fmt::Debug for TorchFactory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TorchFactory").field("spec", &self.spec).field("device", &self.device).finish_non_exhaustive()
    }
}

/// The TorchScript plugin, opened at the first call. On a machine with a CUDA GPU it loads libtorch_cuda at once,
/// before libtorch first asks whether CUDA is there (it asks once per process); a failure there only leaves the
/// plugin without CUDA, which a model on a GPU then reports.
///
/// # Errors
/// [`BackendError::Load`] when the plugin or libtorch cannot be found or opened, saying where it was looked for.
pub(crate) fn torch_plugin() -> Result<&'static Plugin, BackendError> {
    let plugin = plugin::plugin()?;
    static CUDA: OnceLock<()> = OnceLock::new();
    CUDA.get_or_init(|| {
        if crate::cuda::cuda_devices() > 0 {
            if let Err(error) = plugin.enable_cuda() {
                tracing::warn!(%error, "TorchScript models cannot run on CUDA");
            }
        }
    });
    Ok(plugin)
}

/// Sets libtorch's intra-op threads for the process, once: later calls change nothing. Returns the number in
/// force. Call it before the first model runs, with `workers x threads` fitting the cores.
///
/// # Errors
/// [`BackendError::Load`] when the plugin cannot be opened ([`TorchFactory::load`] says the same).
pub fn set_intra_op_threads(threads: usize) -> Result<usize, BackendError> {
    static SET: OnceLock<usize> = OnceLock::new();
    let plugin = torch_plugin()?;
    Ok(*SET.get_or_init(|| {
        let threads = threads.max(1);
        plugin.set_threads(threads);
        threads
    }))
}

/// Whether Apple's MPS is usable, as libtorch sees it: asked of the plugin, so `false` without one. Only macOS asks.
#[cfg_attr(not(target_os = "macos"), allow(dead_code, reason = "MPS exists on macOS only"))]
pub(crate) fn has_mps() -> bool {
    torch_plugin().is_ok_and(Plugin::has_mps)
}

/// The config file of the TorchScript model at `path`: the same name with `.json` appended.
#[must_use]
pub fn config_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".json");
    PathBuf::from(name)
}

impl TorchFactory {
    /// Loads the module onto `device` with the declaration beside it or inside it, if any ([`Self::load_declared`]).
    ///
    /// # Errors
    /// As [`Self::load_declared`].
    pub fn load(path: &Path, device: Device) -> Result<Self, BackendError> {
        Self::load_declared(path, device, None)
    }

    /// Loads the module onto `device` and reads its declaration: the JSON file beside it, else `archived` (the
    /// archive's `model-config.yaml`), else the file's own [`EXTRA_FILE`]; without any, the requests give the
    /// shapes. A fixed input shape is checked by a first forward on zeros, which gives the output's shape.
    ///
    /// # Errors
    /// [`BackendError::Load`] when the file is not TorchScript (a `torch.save` pickle or a state_dict: the message
    /// says how to export it), when a declaration is malformed, or when the first forward fails or does not return
    /// one tensor with the batch first, of the declared output shape.
    pub fn load_declared(path: &Path, device: Device, archived: Option<&Declaration>) -> Result<Self, BackendError> {
        let fail = |message: String| BackendError::load(format!("{}: {message}", path.display()));
        let module = torch_plugin()?.load(path, device).map_err(|e| not_torchscript(path, &e))?;
        let declared = declaration(path, archived).map_err(fail)?;
        match &declared {
            Some((declared, source)) => {
                tracing::info!(model = %path.display(), %source, input = %declared.input_shape, "tensors declared");
            }
            None => tracing::info!(model = %path.display(), "no declaration of its tensors: the requests give shapes"),
        }
        let (declared, source) = declared.unwrap_or_default();
        let spec = ModelSpec {
            input_name: declared.input_name.unwrap_or_else(|| "input".into()),
            input_shape: declared.input_shape,
            output_name: declared.output_name.unwrap_or_else(|| "output".into()),
            output_shape: declared.output_shape.clone().unwrap_or_default(),
        };
        let mut factory = Self { module: Arc::new(module), spec, device };
        if factory.spec.input_shape.is_fixed() {
            let probed = factory.probe().map_err(fail)?;
            if let Some(shape) = declared.output_shape.filter(|s| !s.admits(&probed)) {
                return Err(fail(format!("{source} says the output shape is {shape}, the model returns {probed:?}")));
            }
            factory.spec.output_shape = Shape::fixed(probed);
        }
        Ok(factory)
    }

    /// Runs [`PROBE_BATCH`] zero samples through the module and returns the per-sample output shape.
    fn probe(&self) -> Result<Vec<usize>, String> {
        let mut backend = self.backend();
        let input_shape = self.spec.input_shape.to_fixed().unwrap_or_default();
        let zeros = vec![0.0; PROBE_BATCH * self.spec.input_len().unwrap_or(0)];
        backend.bind_stream().map_err(|e| format!("the first forward failed: {e}"))?;
        let output = backend
            .forward(PROBE_BATCH, &input_shape, &zeros)
            .map_err(|e| format!("the first forward failed: {}", inference(e)))?;
        let dims = output.dims;
        match dims.split_first() {
            Some((&batch, rest)) if usize::try_from(batch) == Ok(PROBE_BATCH) => {
                rest.iter().map(|&d| usize::try_from(d).map_err(|_| format!("bad output shape {dims:?}"))).collect()
            }
            _ => Err(format!("a batch of {PROBE_BATCH} gave an output of shape {dims:?}: the batch must come first")),
        }
    }

    fn backend(&self) -> TorchBackend {
        TorchBackend {
            module: Arc::clone(&self.module),
            spec: self.spec.clone(),
            input_shape: self.spec.input_shape.to_fixed().unwrap_or_default(),
            device: self.device,
            stream: None,
        }
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
    module: Arc<Module>,
    spec: ModelSpec,
    /// The per-sample input shape when the model fixes it (empty otherwise).
    input_shape: Vec<usize>,
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
            tracing::debug!(device = %self.device, stream, "worker thread took a CUDA stream");
            self.stream = Some((thread, stream));
        }
        Ok(())
    }

    /// The module's output for a batch of samples of shape `sample`, on the host: staged in pinned memory and
    /// copied on the thread's stream for CUDA, run under `no_grad`, copied back on the same stream (see the plugin).
    /// Call [`Self::bind_stream`] first.
    fn forward(&self, batch: usize, sample: &[usize], input: &[f32]) -> Result<HostOutput, ForwardError> {
        let shape: Vec<i64> = std::iter::once(batch).chain(sample.iter().copied()).map(as_dim).collect();
        self.module.forward(input, &shape)
    }
}

impl Backend for TorchBackend {
    fn infer(&mut self, batch: usize, input: &[f32]) -> Result<Vec<f32>, BackendError> {
        self.bind_stream()?;
        let values = self.forward(batch, &self.input_shape, input).map_err(inference)?.values;
        check_output(&self.spec, batch, &values)?;
        Ok(values)
    }

    /// A forward that fails is the model rejecting the shape ([`BackendError::Input`] with libtorch's message):
    /// nothing declared that the model takes it. A failure of the device (out of memory, a CUDA error) stays the
    /// server's: a valid input can meet it at one batch size and not at another.
    fn infer_shaped(&mut self, batch: usize, shape: &[usize], input: &[f32]) -> Result<Shaped, BackendError> {
        self.bind_stream()?;
        let output = self.forward(batch, shape, input).map_err(|error| match error {
            ForwardError::Forward(message) if !is_device_failure(&message) => BackendError::input(format!(
                "the model rejected input of shape {shape:?}: {}",
                libtorch_message(&message)
            )),
            other => inference(other),
        })?;
        let dims = output.dims;
        let rows = dims.split_first().filter(|(&n, _)| usize::try_from(n) == Ok(batch));
        let shape = rows.and_then(|(_, rest)| rest.iter().map(|&d| usize::try_from(d).ok()).collect());
        let shape = shape.ok_or_else(|| {
            BackendError::inference(format!(
                "a batch of {batch} gave an output of shape {dims:?}: the batch must come first"
            ))
        })?;
        Ok(Shaped { values: output.values, shape })
    }
}

fn as_dim(size: usize) -> i64 {
    i64::try_from(size).unwrap_or(i64::MAX)
}

fn inference(error: ForwardError) -> BackendError {
    let (ForwardError::Forward(message) | ForwardError::Other(message)) = error;
    BackendError::inference(libtorch_message(&message))
}

/// What libtorch says went wrong, in one line. An error in the TorchScript interpreter comes as a traceback of
/// the model's code ending with the exception as Python would show it (`RuntimeError: mat1 and mat2 shapes cannot
/// be multiplied (60x60 and 63x128)`), which is that line; any other as its first line, without tch's prefix.
pub(crate) fn libtorch_message(message: &str) -> &str {
    let is_exception = |line: &&str| {
        line.split_once(": ").is_some_and(|(name, _)| {
            name.ends_with("Error") && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '_')
        })
    };
    let exception = message.lines().rev().map(str::trim).find(is_exception);
    exception.unwrap_or_else(|| first_line(message).trim_start_matches("Internal torch error: "))
}

/// libtorch's messages carry a C++ backtrace after their first line; clients and logs need the first.
pub(crate) fn first_line(message: &str) -> &str {
    message.lines().find(|l| !l.trim().is_empty()).map_or(message, str::trim)
}

/// The model's declaration and where it was found: the file beside it, else the archive's, else its own
/// [`EXTRA_FILE`]; `None` when there is none.
fn declaration(path: &Path, archived: Option<&Declaration>) -> Result<Option<(Declaration, String)>, String> {
    let beside = config_path(path);
    let parse = |text: &str, source: String| match Declaration::parse(text) {
        Ok(declared) => Ok(Some((declared, source))),
        Err(e) => Err(format!("{source}: {e}")),
    };
    if beside.exists() {
        let source = beside.display().to_string();
        let text = std::fs::read_to_string(&beside).map_err(|e| format!("{source}: {e}"))?;
        return parse(&text, source);
    }
    if let Some(declared) = archived {
        return Ok(Some((declared.clone(), "model-config.yaml".into())));
    }
    match extra_file(path)? {
        Some(text) => parse(&text, format!("its _extra_files[\"{EXTRA_FILE}\"]")),
        None => Ok(None),
    }
}

/// The [`EXTRA_FILE`] that `torch.jit.save(..., _extra_files=...)` wrote into the TorchScript zip, as
/// `<archive>/extra/<name>`, if there is one.
fn extra_file(path: &Path) -> Result<Option<String>, String> {
    let file = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let mut zip = zip::ZipArchive::new(file).map_err(|e| format!("not a zip archive: {e}"))?;
    let is_ours =
        |name: &str| matches!(name.split('/').collect::<Vec<_>>()[..], [_, "extra", file] if file == EXTRA_FILE);
    let found = zip.file_names().filter_map(Result::ok).find(|name| is_ours(name)).map(|name| name.to_string());
    let Some(name) = found else {
        return Ok(None);
    };
    let entry = zip.by_name(&name).map_err(|e| format!("{name}: {e}"))?;
    let mut text = String::new();
    std::io::Read::read_to_string(&mut std::io::Read::take(entry, MAX_EXTRA_FILE + 1), &mut text)
        .map_err(|e| format!("{name}: {e}"))?;
    if text.len() as u64 > MAX_EXTRA_FILE {
        return Err(format!("{name}: larger than {MAX_EXTRA_FILE} bytes"));
    }
    Ok(Some(text))
}

/// The load error of a file libtorch cannot read as TorchScript, saying what it looks like and how to export it.
fn not_torchscript(path: &Path, message: &str) -> BackendError {
    if !path.is_file() {
        return BackendError::load(format!("{}: no such file", path.display()));
    }
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
            let said = first_line(message).trim_start_matches("Internal torch error: ");
            format!("not a TorchScript file ({})", said.split(". ").next().unwrap_or(said).trim_end_matches('.'))
        }
    };
    BackendError::load(format!(
        "{}: {what}. Export the model with torch.jit.save(torch.jit.trace(model, example_input), \"model.pt\") \
         or torch.jit.save(torch.jit.script(model), \"model.pt\")",
        path.display()
    ))
}

#[cfg(test)]
mod tests {
    use super::{is_device_failure, libtorch_message};

    #[test]
    fn device_failures_are_not_the_clients_fault() {
        assert!(is_device_failure("RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB"));
        assert!(is_device_failure("CUDA error: an illegal memory access was encountered"));
        assert!(!is_device_failure("RuntimeError: mat1 and mat2 shapes cannot be multiplied (60x60 and 63x128)"));
    }

    #[test]
    fn libtorch_messages_come_down_to_the_exception() {
        let interpreter = "Internal torch error: The following operation failed in the TorchScript interpreter.\n\
            Traceback of TorchScript, serialized code (most recent call last):\n  File \"code/__torch__.py\", line 31, \
            in forward\n    return torch.linear(input, weight, bias)\n           ~~~~~~~~~~~~ <--- HERE\n\n\
            Traceback of TorchScript, original code (most recent call last):\n/x/linear.py(134): forward\n\
            RuntimeError: mat1 and mat2 shapes cannot be multiplied (60x60 and 63x128)\n";
        assert_eq!(
            libtorch_message(interpreter),
            "RuntimeError: mat1 and mat2 shapes cannot be multiplied (60x60 and 63x128)"
        );
        let plain = "Internal torch error: shape '[2, 30, 21, 3]' is invalid for input of size 5\n\
            Exception raised from infer_size_impl at aten/src/ATen/InferSize.h:98 (most recent call first):\n";
        assert_eq!(libtorch_message(plain), "shape '[2, 30, 21, 3]' is invalid for input of size 5");
    }
}
