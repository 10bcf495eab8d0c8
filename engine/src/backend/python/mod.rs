//! The backend of archives with their own Python handler: each worker of the model is one of TorchServe's own
//! Python workers (`ts/model_service_worker.py` from the `torchserve` wheel), run unchanged, spoken to over a
//! Unix socket in TorchServe's binary protocol ([`protocol`]). Each batch the scheduler forms is one inference
//! command; each request gets back what the handler made of it (status, content type, headers, body).
//!
//! A worker that dies, or does not answer within the model's response timeout, fails its batch, is killed with
//! its process group, and is started again at once (TorchServe's worker restart); the new process is connected
//! and loads the model when the next batch comes (a new one is started then if it gave up waiting). Dropping the backend (unregister, scaling down, shutdown) kills the process.

mod process;
mod protocol;

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use process::{Spawned, Worker};
use protocol::Load;

use super::handler::{HandlerInput, HandlerOutput};
use super::{Backend, BackendError, BackendFactory, Device, ModelSpec, Shape, Shaped};

/// The runtime's name, as the describe API reports it.
pub const RUNTIME: &str = "python";

/// How to run an archive's Python handler.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PythonOptions {
    /// The interpreter with the `torchserve` package (TorchServe's `python_executable`).
    pub python: PathBuf,
    /// The unpacked archive's folder: the worker's working directory and first import path.
    pub model_dir: PathBuf,
    /// The model's name.
    pub model_name: String,
    /// The manifest's handler: `module.py[:function]`, or one of TorchServe's built-in handlers by name.
    pub handler: String,
    /// The request envelope (`json`, `kserve`, `kservev2`), empty for none.
    pub envelope: String,
    /// The batch size the handler is told (`context.system_properties["batch_size"]`).
    pub batch_size: usize,
    /// Intra-op threads per worker: `OMP_NUM_THREADS` and `MKL_NUM_THREADS` of its process, unless
    /// ferroserve's own environment sets them (then the worker inherits those).
    pub threads: usize,
    /// The devices the workers are spread over, worker `w` on the `w % n`-th; a GPU is passed by its index.
    pub devices: Vec<Device>,
    /// Pillow's image size limit (TorchServe's `limit_max_image_pixels`).
    pub limit_max_image_pixels: bool,
    /// Whether the worker decodes JSON and text bodies (TorchServe's `decode_input_request`).
    pub decode_input_request: bool,
    /// How long a worker may take to start and load the model (TorchServe's `startupTimeout`).
    pub startup_timeout: Duration,
    /// How long a batch may take before its worker is killed and restarted (TorchServe's `responseTimeout`).
    pub response_timeout: Duration,
    /// The worker's metrics configuration; `None`: `ts/configs/metrics.yaml` of the installed wheel.
    pub metrics_config: Option<PathBuf>,
    /// The archive's `requirements.txt` to install before the workers start (TorchServe's
    /// `install_py_dep_per_model`), into [`DEPENDENCIES`] in the archive's folder; `None`: nothing is installed.
    pub requirements: Option<PathBuf>,
}

/// The folder, inside the unpacked archive, that an archive's requirements are installed into; it comes first
/// on the workers' import path.
pub const DEPENDENCIES: &str = ".ferroserve-python-deps";

/// Installs `requirements` with `python`'s pip into `model_dir`/[`DEPENDENCIES`], from `model_dir` (so that
/// paths in the file are the archive's), as TorchServe's `pip install -U -t`.
///
/// # Errors
/// [`BackendError::Load`] with pip's last lines when it fails.
fn install_requirements(python: &Path, model_dir: &Path, requirements: &Path) -> Result<(), BackendError> {
    let target = model_dir.join(DEPENDENCIES);
    tracing::info!(requirements = %requirements.display(), target = %target.display(), "installing the archive's Python dependencies");
    let output = Command::new(python)
        .args(["-m", "pip", "install", "--quiet", "--no-input", "--disable-pip-version-check", "-U", "-t"])
        .arg(&target)
        .arg("-r")
        .arg(requirements)
        .current_dir(model_dir)
        .output()
        .map_err(|e| BackendError::load(format!("cannot run pip of {}: {e}", python.display())))?;
    if output.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    let tail: Vec<&str> = stderr.lines().rev().take(5).collect();
    let tail: Vec<&str> = tail.into_iter().rev().collect();
    Err(BackendError::load(format!(
        "install_py_dep_per_model: pip could not install {}: {}",
        requirements.display(),
        tail.join(" | ")
    )))
}

/// The `ts` package's folder as `python` imports it.
///
/// # Errors
/// [`BackendError::Load`] saying that the interpreter cannot be run or has no `torchserve` package.
pub fn find_ts_package(python: &Path) -> Result<PathBuf, BackendError> {
    let script = "import importlib.util as u, os; s = u.find_spec('ts'); print(os.path.dirname(s.origin) if s else '')";
    let output = Command::new(python)
        .args(["-c", script])
        .output()
        .map_err(|e| BackendError::load(format!("cannot run python_executable {}: {e}", python.display())))?;
    let folder = String::from_utf8_lossy(&output.stdout).trim().to_string();
    if !output.status.success() || folder.is_empty() {
        return Err(BackendError::load(format!(
            "{} has no `ts` package: install torchserve==0.12.0 in it (`make deps` does, in ferroserve's cache \
             venv), or set python_executable to an interpreter that has it",
            python.display()
        )));
    }
    Ok(PathBuf::from(folder))
}

/// The GPU index worker `worker` is told to use: the `worker % n`-th of `devices` when it is a CUDA device (as
/// TorchServe assigns GPUs round-robin), `None` for the CPU (and MPS, which TorchServe's worker has no id for).
fn gpu_of(devices: &[Device], worker: usize) -> Option<usize> {
    match devices.get(worker % devices.len().max(1))? {
        Device::Cuda(index) => Some(*index),
        Device::Cpu | Device::Mps => None,
    }
}

/// A model served by its Python handler: it makes one worker process per worker.
#[derive(Debug, Clone)]
pub struct PythonFactory {
    options: PythonOptions,
    spec: ModelSpec,
}

impl PythonFactory {
    /// Checks that `options.python` has the `ts` package; workers start in [`BackendFactory::create`].
    ///
    /// # Errors
    /// [`BackendError::Load`] when it has not, or no device is given.
    pub fn new(mut options: PythonOptions) -> Result<Self, BackendError> {
        let ts = find_ts_package(&options.python)?;
        options.metrics_config.get_or_insert_with(|| ts.join("configs").join("metrics.yaml"));
        if let Some(requirements) = &options.requirements {
            install_requirements(&options.python, &options.model_dir, requirements)?;
        }
        if options.devices.is_empty() {
            return Err(BackendError::load("a model needs at least one device"));
        }
        let spec = ModelSpec {
            input_name: "body".into(),
            input_shape: Shape::unknown(),
            output_name: "body".into(),
            output_shape: Shape::unknown(),
        };
        Ok(Self { options, spec })
    }

    fn load_command(&self, worker: usize) -> Load<'_> {
        Load {
            model_name: &self.options.model_name,
            model_path: self.options.model_dir.to_str().unwrap_or_default(),
            batch_size: self.options.batch_size,
            handler: &self.options.handler,
            gpu: gpu_of(&self.options.devices, worker),
            envelope: &self.options.envelope,
            limit_max_image_pixels: self.options.limit_max_image_pixels,
        }
    }

    /// Starts worker `worker`'s process and waits until it has loaded the model.
    fn start(&self, worker: usize) -> Result<Worker, BackendError> {
        let spawned = Spawned::start(&self.options, worker).map_err(BackendError::load)?;
        spawned.connect(&self.options, &self.load_command(worker)).map_err(BackendError::load)
    }
}

impl BackendFactory for PythonFactory {
    fn spec(&self) -> &ModelSpec {
        &self.spec
    }

    fn device(&self) -> Device {
        self.options.devices[0]
    }

    fn runtime(&self) -> &'static str {
        RUNTIME
    }

    fn create(&self, worker: usize) -> Result<Box<dyn Backend>, BackendError> {
        let ready = self.start(worker)?;
        tracing::info!(model = %self.options.model_name, worker, pid = ready.pid(), "Python worker loaded the model");
        Ok(Box::new(PythonBackend { factory: self.clone(), worker, state: State::Ready(ready), restarts: 0 }))
    }

    fn worker_device(&self, worker: usize) -> Device {
        self.options.devices[worker % self.options.devices.len()]
    }
}

/// Where a backend's worker process stands.
enum State {
    /// Loaded and answering.
    Ready(Worker),
    /// Started again after a failure, importing torch meanwhile; connected and loaded on the next batch.
    Restarting(Spawned),
    /// Could not be started; tried again on the next batch.
    Gone,
}

/// One worker's process.
struct PythonBackend {
    factory: PythonFactory,
    worker: usize,
    state: State,
    /// Processes killed for a failure and replaced ([`Backend::restarts`]).
    restarts: u64,
}

impl PythonBackend {
    /// The loaded worker: the one restarting connected and loaded first, or, when that fails (it gives up on a
    /// connection that does not come within 30 s of its start) or none runs, a new one started.
    fn ready(&mut self) -> Result<&mut Worker, BackendError> {
        let (options, worker) = (&self.factory.options, self.worker);
        let ready = match std::mem::replace(&mut self.state, State::Gone) {
            State::Ready(ready) => Ok(ready),
            State::Restarting(spawned) => spawned.connect(options, &self.factory.load_command(worker)).or_else(|e| {
                tracing::info!(model = %options.model_name, worker, error = %e, "starting the Python worker anew");
                self.factory.start(worker)
            }),
            State::Gone => self.factory.start(worker),
        }
        .map_err(|e| BackendError::inference(format!("the Python worker could not be restarted: {e}")))?;
        self.state = State::Ready(ready);
        match &mut self.state {
            State::Ready(ready) => Ok(ready),
            State::Restarting(_) | State::Gone => Err(BackendError::inference("the Python worker is not ready")),
        }
    }

    /// Kills the worker that failed and starts its replacement at once, so that it imports torch while the failed
    /// batch is answered; it is connected and loaded when the next batch comes.
    fn restart(&mut self, why: &std::io::Error) {
        let pid = match &self.state {
            State::Ready(ready) => Some(ready.pid()),
            State::Restarting(_) | State::Gone => None,
        };
        self.state = State::Gone; // Kills the old process (and its group).
        self.restarts += 1;
        let model = &self.factory.options.model_name;
        tracing::warn!(model = %model, worker = self.worker, ?pid, error = %why, "Python worker failed; restarting it");
        match Spawned::start(&self.factory.options, self.worker) {
            Ok(spawned) => self.state = State::Restarting(spawned),
            Err(error) => tracing::error!(model = %model, worker = self.worker, %error,
                "cannot restart the Python worker; trying again on the next batch"),
        }
    }
}

impl Backend for PythonBackend {
    fn infer(&mut self, _batch: usize, _input: &[f32]) -> Result<Vec<f32>, BackendError> {
        Err(BackendError::inference("this model runs a Python handler: it takes requests, not tensors"))
    }

    fn infer_shaped(&mut self, _batch: usize, _shape: &[usize], _input: &[f32]) -> Result<Shaped, BackendError> {
        Err(BackendError::inference("this model runs a Python handler: it takes requests, not tensors"))
    }

    fn handle(&mut self, batch: &[&HandlerInput]) -> Result<Vec<HandlerOutput>, BackendError> {
        let timeout = self.factory.options.response_timeout;
        let result = self.ready()?.infer(batch, timeout);
        let (ids, answer) = match result {
            Ok(done) => done,
            Err(error) => {
                self.restart(&error);
                let what = match error.kind() {
                    std::io::ErrorKind::TimedOut => {
                        format!("the Python worker did not answer within the response timeout ({timeout:?}); restarted")
                    }
                    std::io::ErrorKind::UnexpectedEof => "Worker died (it closed its connection); restarted".into(),
                    _ => format!("Worker died ({error}); restarted"),
                };
                return Err(BackendError::inference(what));
            }
        };
        if answer.code != 200 {
            let code = u16::try_from(answer.code).ok().filter(|c| (100..=599).contains(c)).unwrap_or(500);
            return Err(BackendError::Status { code, message: answer.message.into() });
        }
        in_order(&ids, answer.predictions)
    }

    fn restarts(&self) -> u64 {
        self.restarts
    }

    fn process_id(&self) -> Option<u32> {
        match &self.state {
            State::Ready(ready) => Some(ready.pid()),
            State::Restarting(spawned) => Some(spawned.pid()),
            State::Gone => None,
        }
    }
}

/// The worker's answers in the order of `ids`.
///
/// # Errors
/// [`BackendError::Inference`] when an id is missing or answered twice.
fn in_order(ids: &[String], predictions: Vec<(String, HandlerOutput)>) -> Result<Vec<HandlerOutput>, BackendError> {
    let mut slots: Vec<Option<HandlerOutput>> = vec![None; ids.len()];
    for (id, output) in predictions {
        let Some(k) = ids.iter().position(|i| *i == id) else {
            return Err(BackendError::inference(format!("the Python worker answered unknown request {id}")));
        };
        if slots[k].replace(output).is_some() {
            return Err(BackendError::inference(format!("the Python worker answered request {id} twice")));
        }
    }
    slots
        .into_iter()
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| BackendError::inference("the Python worker left requests of the batch unanswered"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(body: &str) -> HandlerOutput {
        HandlerOutput { status: 200, body: body.as_bytes().to_vec(), ..HandlerOutput::default() }
    }

    #[test]
    fn answers_are_put_back_in_the_order_of_the_batch() {
        let ids = ["1".to_string(), "2".to_string()];
        let got = in_order(&ids, vec![("2".into(), answer("b")), ("1".into(), answer("a"))]).expect("both");
        assert_eq!(got, vec![answer("a"), answer("b")]);
        assert!(in_order(&ids, vec![("1".into(), answer("a"))]).is_err(), "one missing");
        assert!(in_order(&ids, vec![("1".into(), answer("a")), ("1".into(), answer("a"))]).is_err(), "twice");
        assert!(in_order(&ids, vec![("9".into(), answer("a"))]).is_err(), "unknown");
    }

    #[test]
    fn workers_take_the_model_gpus_in_turn() {
        let gpus = [Device::Cuda(2), Device::Cuda(5)];
        let assigned: Vec<_> = (0..4).map(|w| gpu_of(&gpus, w)).collect();
        assert_eq!(assigned, vec![Some(2), Some(5), Some(2), Some(5)]);
        assert_eq!(gpu_of(&[Device::Cpu], 3), None);
        assert_eq!(gpu_of(&[], 0), None);
    }

    #[test]
    fn a_missing_interpreter_or_ts_package_is_a_clear_load_error() {
        let missing = find_ts_package(Path::new("/nonexistent/python")).expect_err("no interpreter").to_string();
        assert!(missing.contains("cannot run python_executable /nonexistent/python"), "{missing}");
        // `true` runs and prints nothing: an interpreter without the package, as far as the check can tell.
        let without = find_ts_package(Path::new("true")).expect_err("no ts").to_string();
        assert!(without.contains("has no `ts` package") && without.contains("torchserve==0.12.0"), "{without}");
    }
}
