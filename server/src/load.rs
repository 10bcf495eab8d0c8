//! Loading models, at start-up and on registration alike: one [`LoadPlan`] says what a model runs with (its
//! files, its archive's `model-config.yaml` over its `models` entry over the defaults, then the registration
//! call's [`Overrides`]), and one function builds it. A plan loads into a running [`Model`] on its devices (its
//! `deviceType` and `deviceIds`, else `TORCH_DEVICE`, else detection: CUDA, MPS, CPU) in the format that suits
//! the device.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
};

use std::time::Duration;

#[cfg(feature = "torch")]
use ferroserve_engine::backend::torch::{self, TorchFactory};
#[cfg(feature = "onnx")]
use ferroserve_engine::backend::{OnnxFactory, OnnxOptions};
use ferroserve_engine::{
    backend::{Declaration, MultiDevice, PythonFactory, PythonOptions},
    device::{self, Availability, DeviceError, DeviceRequest},
    metrics::EngineMetrics,
    store::{self, ModelFiles, ModelFormat},
    BackendError, BackendFactory, BatchPolicy, Device, Model, ModelOptions, Registry,
};

use crate::{
    batching_config::MaxBatchDelay,
    config::{model_name_of, Config, LoadModels, ModelConfig},
};

/// Why a model could not be loaded at start-up.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The store has no such model, or its files are malformed.
    #[error(transparent)]
    Store(#[from] store::StoreError),
    /// The runtime could not load it.
    #[error("model \"{name}\": {source}")]
    Backend {
        /// Model name.
        name: String,
        /// The runtime's error.
        source: ferroserve_engine::BackendError,
    },
    /// The model and its files disagree.
    #[error("model \"{name}\": {message}")]
    Mismatch {
        /// Model name.
        name: String,
        /// What disagrees.
        message: String,
    },
    /// Two entries load the same name and version.
    #[error("model \"{0}\" is listed twice in load_models")]
    Duplicate(String),
}

/// Where `libonnxruntime` is: `ORT_DYLIB_PATH` at run time, else the path the build was configured with
/// (`.cargo/config.toml` points it at `third_party/onnxruntime`).
#[must_use]
pub fn ort_dylib() -> PathBuf {
    std::env::var_os("ORT_DYLIB_PATH")
        .map(PathBuf::from)
        .or_else(|| option_env!("ORT_DYLIB_PATH").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("libonnxruntime.so"))
}

/// Workers of a model on a CUDA device when neither `minWorkers` nor `default_workers_per_model` is set: each
/// holds a CUDA stream of its own, so two keep the GPU busy while one waits for its copies.
pub const CUDA_WORKERS: usize = 2;

/// What model `name` at `version` runs with: its archive's `model-config.yaml` over its `models` entry, as in
/// TorchServe (where the register call's parameters win over both). Reads the YAML: call it off the async
/// threads.
///
/// # Errors
/// [`LoadError::Store`] when the archive's `model-config.yaml` cannot be read or holds a bad value.
pub fn model_settings(
    config: &Config,
    name: &str,
    version: &str,
    files: Option<&ModelFiles>,
) -> Result<ModelConfig, LoadError> {
    let configured = config.model_config(name, version).cloned().unwrap_or_default();
    let Some(path) = files.and_then(|f| f.config.as_deref()) else {
        return Ok(configured);
    };
    let archived = crate::config::read_model_yaml(path)
        .map_err(|message| LoadError::Store(store::StoreError::Archive { name: name.to_string(), message }))?;
    if !archived.other.is_empty() {
        let keys: Vec<_> = archived.other.keys().collect();
        tracing::info!(model = %name, ?keys, "model-config.yaml keys ferroserve does not use");
    }
    Ok(archived.over(configured))
}

/// The devices model `name` runs on with `settings`, its workers spread over them in turn: its `deviceIds`, else
/// what its `deviceType`, `TORCH_DEVICE` or detection (CUDA, MPS, CPU) ask for, every GPU when they ask for CUDA
/// without naming one (as TorchServe spreads workers over the GPUs).
///
/// # Errors
/// [`LoadError::Backend`] when `TORCH_DEVICE` is not a device, the model's keys make no sense, or a device asked
/// for is not there: never a silent fall back to the CPU.
pub fn model_devices(name: &str, settings: &ModelConfig) -> Result<Vec<Device>, LoadError> {
    devices_on(name, settings, Availability::detect())
}

/// [`model_devices`] on a machine that has `available`.
///
/// # Errors
/// As [`model_devices`].
pub fn devices_on(name: &str, settings: &ModelConfig, available: Availability) -> Result<Vec<Device>, LoadError> {
    let (device_type, ids) = (settings.device_type.as_deref(), settings.device_ids.as_deref());
    let fail = |message: String| LoadError::Backend { name: name.to_string(), source: BackendError::load(message) };
    let default = torch_device().map_err(|e| fail(format!("TORCH_DEVICE: {e}")))?;
    let request = DeviceRequest::for_model(default, device_type, ids).map_err(|e| fail(e.to_string()))?;
    let asked = match (ids, device_type) {
        (Some(ids), _) => format!("deviceIds {ids:?} ask for CUDA devices"),
        (None, Some(device_type)) => format!("deviceType {device_type} asks for {request}"),
        (None, None) => format!("TORCH_DEVICE asks for {request}"),
    };
    device::select_for_model(request, ids, available).map_err(|e| fail(format!("{asked}: {e}")))
}

/// `TORCH_DEVICE` (`cpu`, `cuda`, `cuda:N`, `mps`), or detection when it is not set.
fn torch_device() -> Result<DeviceRequest, DeviceError> {
    std::env::var("TORCH_DEVICE").map_or(Ok(DeviceRequest::Auto), |value| value.parse())
}

/// `default_workers_per_model`, or [`CUDA_WORKERS`] per GPU for a model on CUDA while that key is left at its
/// default (the number of cores, which suits CPU workers only).
fn default_workers(config: &Config, devices: Result<&[Device], &LoadError>) -> usize {
    let left_default = config.default_workers_per_model == Config::default().default_workers_per_model;
    match devices {
        Ok(gpus @ [Device::Cuda(_), ..]) if left_default => CUDA_WORKERS * gpus.len(),
        _ => config.default_workers_per_model,
    }
}

/// The run options of model `name` at `version` with `settings` ([`model_settings`]) over the top-level
/// defaults.
#[must_use]
pub fn model_options(config: &Config, name: &str, version: &str, settings: &ModelConfig) -> ModelOptions {
    options_on(config, name, version, settings, Availability::detect())
}

/// [`model_options`] on a machine that has `available`.
#[must_use]
pub fn options_on(
    config: &Config,
    name: &str,
    version: &str,
    m: &ModelConfig,
    available: Availability,
) -> ModelOptions {
    let devices = devices_on(name, m, available);
    let max_delay = m.max_batch_delay.and_then(MaxBatchDelay::fixed).unwrap_or(config.max_batch_delay);
    ModelOptions {
        name: name.to_string(),
        version: version.to_string(),
        workers: m.min_workers.unwrap_or_else(|| default_workers(config, devices.as_deref())),
        queue_size: m.job_queue_size.unwrap_or(config.job_queue_size),
        policy: BatchPolicy { max_batch_size: m.batch_size.unwrap_or(config.batch_size), max_delay },
        response_timeout: m.response_timeout.map_or(config.default_response_timeout, std::time::Duration::from_secs),
    }
}

/// Intra-op threads per worker: the configured number, else the cores shared out among the workers.
#[must_use]
pub fn intra_threads(config: &Config, workers: usize) -> usize {
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    config.intra_op_threads.unwrap_or((cores / workers.max(1)).max(1))
}

/// The name and version the store entry `entry` is served under, as TorchServe names them. The name: the one
/// given (`load_models`'s `NAME=FILE`, the register call's `model_name`), else the archive's `modelName`, else
/// the file's name without its extension. The version: the archive's `modelVersion`, else the one `models`
/// configures for that name (its `defaultVersion`), else 1.0; the settings are then those of `models` for that
/// version. Reads the archive's manifest: call it off the async threads.
#[must_use]
pub fn identity(config: &Config, given: Option<&str>, entry: &str) -> (String, String) {
    let manifest = store::peek_manifest(&config.model_store, entry);
    let name = given
        .map(str::to_string)
        .or_else(|| manifest.as_ref().map(|m| m.model_name.clone()))
        .unwrap_or_else(|| model_name_of(entry));
    let version = manifest.and_then(|m| m.model_version).unwrap_or_else(|| config.version_of(&name));
    if let Some(configured) = config.models.get(&name).filter(|versions| !versions.contains_key(&version)) {
        let versions: Vec<_> = configured.keys().collect();
        tracing::warn!(
            model = %name, version, configured = ?versions,
            "models has settings for other versions of this model only: the defaults apply"
        );
    }
    (name, version)
}

/// Loads a model from its `files` with `settings` ([`model_settings`]: they choose its devices) and `options`,
/// and starts its workers, recording into `metrics`.
fn start_model(
    config: &Config,
    files: ModelFiles,
    settings: &ModelConfig,
    options: ModelOptions,
    metrics: &EngineMetrics,
) -> Result<Model, LoadError> {
    let name = options.name.clone();
    if let Some(root) = files.python.clone() {
        let factory = python_factory(config, &files, &root, settings, &options)?;
        let model = Model::start_with(factory, options, metrics)
            .map_err(|source| LoadError::Backend { name: name.clone(), source })?;
        return Ok(match files.unpacked {
            Some(unpacked) => model.keeping(unpacked),
            None => model,
        });
    }
    if let Some(builtin) = files.manifest.as_ref().and_then(|m| m.handler.as_deref()) {
        tracing::info!(model = %name, handler = builtin, "built-in handler replaced by ferroserve's");
    }
    let devices = model_devices(&name, settings)?;
    let backend = |source| LoadError::Backend { name: name.clone(), source };
    let threads = intra_threads(config, options.workers);
    let declared = declaration(&name, settings)?;
    let factory = match devices.as_slice() {
        [device] => open_factory(&files, *device, threads, declared.as_ref()).map_err(backend)?,
        _ => {
            let on = files.clone();
            let load = move |device| open_factory(&on, device, threads, declared.as_ref());
            Arc::new(MultiDevice::new(devices, load).map_err(backend)?)
        }
    };
    let outputs = factory.spec().output_len();
    let mut model = Model::start_with(factory, options, metrics).map_err(backend)?;
    if let Some(unpacked) = files.unpacked {
        model = model.keeping(unpacked);
    }
    match files.labels {
        // A model whose output shape is left to the forward is checked by nothing here: a label beyond the output
        // is never named, an output beyond the labels is named by its index.
        Some(labels) if outputs.is_some_and(|outputs| labels.len() != outputs) => Err(LoadError::Mismatch {
            name,
            message: format!(
                "index_to_name.json has {} labels, the model outputs {} values",
                labels.len(),
                outputs.unwrap_or_default()
            ),
        }),
        Some(labels) => Ok(model.with_labels(labels)),
        None => Ok(model),
    }
}

/// What runs an archive's own Python handler, in TorchServe's worker, from the archive's folder `root`: the
/// manifest's handler, the model's devices (a GPU per worker, in turn), its batch size and timeouts, and the
/// server's `python_executable`, `service_envelope`, `decode_input_request` and `limit_max_image_pixels`.
///
/// # Errors
/// [`LoadError::Backend`] when the interpreter or its `ts` package is missing, or a device is not there.
fn python_factory(
    config: &Config,
    files: &ModelFiles,
    root: &Path,
    settings: &ModelConfig,
    options: &ModelOptions,
) -> Result<Arc<dyn BackendFactory>, LoadError> {
    let name = &options.name;
    let handler = files.manifest.as_ref().and_then(|m| m.handler.clone()).unwrap_or_default();
    let requirements = files.manifest.as_ref().and_then(|m| m.requirements_file.as_deref());
    if requirements.is_some_and(|r| !Path::new(r).components().all(|c| matches!(c, std::path::Component::Normal(_)))) {
        let message = format!("requirementsFile {requirements:?} must be a file inside the archive");
        return Err(LoadError::Mismatch { name: name.clone(), message });
    }
    let requirements = requirements.map(|r| root.join(r));
    if requirements.is_some() && !config.install_py_dep_per_model {
        tracing::info!(model = %name, "the archive has a requirements file; install_py_dep_per_model is off");
    }
    tracing::info!(model = %name, handler, python = %config.python_executable.display(),
        "the archive's handler runs in TorchServe's Python worker");
    let python = PythonOptions {
        python: config.python_executable.clone(),
        model_dir: root.to_path_buf(),
        model_name: name.clone(),
        handler,
        envelope: config.service_envelope.clone(),
        batch_size: options.policy.max_batch_size,
        threads: intra_threads(config, options.workers),
        devices: model_devices(name, settings)?,
        limit_max_image_pixels: config.limit_max_image_pixels,
        decode_input_request: config.decode_input_request,
        startup_timeout: Duration::from_secs(settings.startup_timeout.unwrap_or(STARTUP_TIMEOUT_S)),
        response_timeout: options.response_timeout,
        metrics_config: None,
        requirements: requirements.filter(|_| config.install_py_dep_per_model),
    };
    let factory = PythonFactory::new(python).map_err(|source| LoadError::Backend { name: name.clone(), source })?;
    Ok(Arc::new(factory))
}

/// TorchServe's default `startupTimeout`, in seconds.
const STARTUP_TIMEOUT_S: u64 = 120;

/// The file a model runs from on `device`: when it ships both formats, ONNX on the CPU and TorchScript on a GPU
/// (ONNX Runtime has no MPS provider, and TorchScript's CUDA path is the one with per-worker streams and pinned
/// staging; without the `torch` feature, ONNX everywhere); else the format it has.
fn choose_format(files: &ModelFiles, device: Device) -> Option<(ModelFormat, &Path)> {
    let order = if device != Device::Cpu && cfg!(feature = "torch") {
        [ModelFormat::TorchScript, ModelFormat::Onnx]
    } else {
        [ModelFormat::Onnx, ModelFormat::TorchScript]
    };
    order.into_iter().find_map(|format| Some((format, files.model(format)?)))
}

/// The declaration of a TorchScript model's tensors in its settings (the `ferroserve` key of its archive's
/// `model-config.yaml` or its `models` entry), checked when they were read.
///
/// # Errors
/// [`LoadError::Mismatch`] when it is malformed.
fn declaration(name: &str, settings: &ModelConfig) -> Result<Option<Declaration>, LoadError> {
    let mismatch = |message| LoadError::Mismatch { name: name.to_string(), message: format!("ferroserve: {message}") };
    settings.ferroserve.as_ref().map(Declaration::from_json).transpose().map_err(mismatch)
}

/// Opens the model's file in the format [`choose_format`] picks, on `device`, with `threads` intra-op threads
/// (per ONNX Runtime session; for libtorch, once per process); a TorchScript file with `declared` when nothing
/// beside it declares its tensors (an ONNX file states its own).
#[cfg_attr(not(feature = "torch"), allow(unused_variables))]
fn open_factory(
    files: &ModelFiles,
    device: Device,
    threads: usize,
    declared: Option<&Declaration>,
) -> Result<Arc<dyn BackendFactory>, BackendError> {
    let no_file = || BackendError::load(format!("model \"{}\" has no model file", files.name));
    match choose_format(files, device).ok_or_else(no_file)? {
        #[cfg(feature = "onnx")]
        (ModelFormat::Onnx, path) => {
            let onnx = OnnxOptions { dylib: ort_dylib(), intra_threads: threads };
            Ok(Arc::new(OnnxFactory::load_on(path, onnx, device)?))
        }
        #[cfg(not(feature = "onnx"))]
        (ModelFormat::Onnx, path) => Err(BackendError::load(format!(
            "{}: this build has no ONNX backend (cargo feature `onnx`)",
            path.display()
        ))),
        #[cfg(feature = "torch")]
        (ModelFormat::TorchScript, path) => {
            torch::set_intra_op_threads(threads)?;
            Ok(Arc::new(TorchFactory::load_declared(path, device, declared)?))
        }
        #[cfg(not(feature = "torch"))]
        (ModelFormat::TorchScript, path) => Err(BackendError::load(format!(
            "{}: this build has no TorchScript backend (cargo feature `torch`)",
            path.display()
        ))),
    }
}

/// Settings a registration call gives (`POST /models?initial_workers=&batch_size=&max_batch_delay=
/// &response_timeout=`): each wins over the model's own, and only those given change anything.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Overrides {
    /// Workers to start (`initial_workers`).
    pub workers: Option<usize>,
    /// Most requests in one batch (`batch_size`).
    pub batch_size: Option<usize>,
    /// Longest wait for a batch to fill, or `auto` (`max_batch_delay`).
    pub max_batch_delay: Option<MaxBatchDelay>,
    /// The objective `auto` batches for (`slo_p99_ms`).
    pub slo_p99: Option<Duration>,
    /// How long a request may wait for its answer (`response_timeout`).
    pub response_timeout: Option<Duration>,
}

impl Overrides {
    /// `options` with the settings given here in place of theirs.
    fn apply(&self, mut options: ModelOptions) -> ModelOptions {
        options.workers = self.workers.unwrap_or(options.workers);
        options.policy.max_batch_size = self.batch_size.unwrap_or(options.policy.max_batch_size);
        options.policy.max_delay =
            self.max_batch_delay.and_then(MaxBatchDelay::fixed).unwrap_or(options.policy.max_delay);
        options.response_timeout = self.response_timeout.unwrap_or(options.response_timeout);
        options
    }
}

/// When a model is loaded: it decides where its file comes from and what describe reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// By `load_models` at start-up: a `marName` in `models` replaces the entry.
    Startup,
    /// By `POST /models`: the URL given is the entry.
    Registration,
}

/// Everything a model is loaded with, read from the store and the configuration before any worker starts.
#[derive(Debug)]
pub struct LoadPlan {
    /// Its files in the model store (a `.mar` unpacked).
    pub files: ModelFiles,
    /// Its settings: the archive's `model-config.yaml` over its `models` entry.
    pub settings: ModelConfig,
    /// How it runs: the settings over the top-level defaults, then the [`Overrides`].
    pub options: ModelOptions,
    /// The latency objective it batches for, when its `maxBatchDelay` is `auto`.
    pub slo_target: Option<Duration>,
    /// The store entry it comes from (TorchServe's `modelUrl`).
    pub entry: String,
    /// When it is loaded.
    pub origin: Origin,
}

impl LoadPlan {
    /// The plan of model `name` at `version` from `entry` in the store: the one function that start-up and
    /// registration both use. Reads the store (and unpacks an archive): call it off the async threads.
    ///
    /// # Errors
    /// [`LoadError::Store`] when the entry is not in the store, or its files or `model-config.yaml` are bad;
    /// [`LoadError::Mismatch`] when its delay is `auto` with no objective to aim at.
    pub fn new(
        config: &Config,
        (name, version): (&str, &str),
        entry: &str,
        origin: Origin,
        overrides: &Overrides,
    ) -> Result<Self, LoadError> {
        let configured = config.model_config(name, version).and_then(|m| m.mar_name.as_deref());
        let entry = configured.filter(|_| origin == Origin::Startup).unwrap_or(entry).to_string();
        let files = store::locate(&config.model_store, name, &entry)?;
        let settings = model_settings(config, name, version, Some(&files))?;
        let options = overrides.apply(model_options(config, name, version, &settings));
        let slo_target = settings
            .slo_target(overrides.max_batch_delay, overrides.slo_p99)
            .map_err(|message| LoadError::Mismatch { name: name.to_string(), message })?;
        Ok(Self { files, settings, options, slo_target, entry, origin })
    }

    /// The runtimes the model would run on (`onnx`, `torchscript`, `python`; one per runtime its devices use),
    /// found as [`LoadPlan::load`] finds them, opening nothing.
    ///
    /// # Errors
    /// [`LoadError::Backend`] when a device it asks for is not there.
    pub fn runtimes(&self) -> Result<Vec<&'static str>, LoadError> {
        if self.files.python.is_some() {
            return Ok(vec![ferroserve_engine::backend::python::RUNTIME]);
        }
        let mut runtimes: Vec<_> = model_devices(&self.options.name, &self.settings)?
            .into_iter()
            .filter_map(|device| choose_format(&self.files, device))
            .map(|(format, _)| format.runtime())
            .collect();
        runtimes.sort_unstable();
        runtimes.dedup();
        Ok(runtimes)
    }

    /// Loads the model and starts its workers, recording into `metrics`.
    ///
    /// # Errors
    /// [`LoadError`] naming the model.
    pub fn load(self, config: &Config, metrics: &EngineMetrics) -> Result<Model, LoadError> {
        let model = start_model(config, self.files, &self.settings, self.options, metrics)?;
        if let Some(max) = self.settings.max_workers {
            model.set_max_workers(max);
        }
        model.set_slo_target(self.slo_target);
        Ok(model.with_source(self.entry, self.origin == Origin::Startup))
    }
}

/// Loads model `name` at `version` from `entry` as start-up does (see [`LoadPlan`]), recording into `metrics`.
///
/// # Errors
/// [`LoadError`] naming the model.
pub fn load_model(
    config: &Config,
    identity: (&str, &str),
    entry: &str,
    metrics: &EngineMetrics,
) -> Result<Model, LoadError> {
    LoadPlan::new(config, identity, entry, Origin::Startup, &Overrides::default())?.load(config, metrics)
}

/// A model to load: its `(name, version)` and its store entry.
type Entry = ((String, String), String);

/// The models `load_models` names.
///
/// # Errors
/// When `load_models=all` and the model store cannot be listed.
fn startup_entries(config: &Config) -> Result<Vec<Entry>, LoadError> {
    let entries: Vec<(Option<String>, String)> = match &config.load_models {
        LoadModels::None => Vec::new(),
        LoadModels::All => store::list(&config.model_store)?.into_iter().map(|(_, entry)| (None, entry)).collect(),
        LoadModels::List(list) => list.clone(),
    };
    Ok(entries.into_iter().map(|(given, entry)| (identity(config, given.as_deref(), &entry), entry)).collect())
}

/// What a model of `load_models` would run on.
#[derive(Debug)]
pub struct StartupRuntimes {
    /// Model name.
    pub name: String,
    /// Its version.
    pub version: String,
    /// Its runtimes ([`LoadPlan::runtimes`]), or why it cannot be loaded.
    pub runtimes: Result<Vec<&'static str>, LoadError>,
}

/// The runtimes of the models start-up would load, loading none: what a first run must install and build before
/// serving them.
///
/// # Errors
/// When `load_models=all` and the model store cannot be listed; a model that cannot be planned carries its error.
pub fn startup_runtimes(config: &Config) -> Result<Vec<StartupRuntimes>, LoadError> {
    Ok(startup_entries(config)?
        .into_iter()
        .map(|((name, version), entry)| {
            let runtimes = LoadPlan::new(config, (&name, &version), &entry, Origin::Startup, &Overrides::default())
                .and_then(|plan| plan.runtimes());
            StartupRuntimes { name, version, runtimes }
        })
        .collect())
}

/// The models loaded at start-up, and those that failed with their error.
pub type Loaded = (Arc<Registry>, Vec<(String, LoadError)>);

/// Loads every model `load_models` names into a new registry, recording into `metrics`. A model that cannot be
/// loaded is logged and returned with its error; the others are served.
///
/// # Errors
/// When `load_models=all` and the model store cannot be listed, or when a model asks for a device that is not
/// there (or `TORCH_DEVICE` is not a device).
pub fn load_all(config: &Config, metrics: &EngineMetrics) -> Result<Loaded, LoadError> {
    let registry = Arc::new(Registry::new());
    let entries = startup_entries(config)?;
    // A device that is not there stops start-up (unlike a model file that fails to load; a device that only an
    // archive's model-config.yaml asks for is checked when the model loads).
    for ((name, version), _) in &entries {
        model_devices(name, &model_settings(config, name, version, None)?)?;
    }
    let mut failed = Vec::new();
    for ((name, version), entry) in entries {
        let loaded = load_model(config, (&name, &version), &entry, metrics).and_then(|model| {
            let mut devices: Vec<String> =
                model.worker_ids().iter().map(|&w| model.worker_device(w).to_string()).collect();
            devices.sort();
            devices.dedup();
            tracing::info!(
                model = %name, version = model.version(), runtime = model.runtime(), devices = devices.join(","),
                workers = model.options().workers,
                batch_size = model.policy().max_batch_size, max_batch_delay = ?model.policy().max_delay,
                slo_p99 = ?model.slo_target(), "model loaded"
            );
            registry.register(model).map_err(|_| LoadError::Duplicate(name.clone()))
        });
        if let Err(error) = loaded {
            tracing::error!(model = %name, %error, "model not loaded; the server goes on without it");
            failed.push((name, error));
        }
    }
    Ok((registry, failed))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TWO_GPUS: Availability = Availability { cuda_devices: 2, mps: false };

    fn config(models: &str) -> Config {
        let mut config = Config::default();
        config.apply(vec![("models".into(), models.into(), None)]).expect("valid models");
        config
    }

    fn devices_on(c: &Config, name: &str, version: &str, available: Availability) -> Result<Vec<Device>, LoadError> {
        super::devices_on(name, &model_settings(c, name, version, None)?, available)
    }

    fn options_on(c: &Config, name: &str, version: &str, available: Availability) -> ModelOptions {
        let settings = model_settings(c, name, version, None).expect("settings");
        super::options_on(c, name, version, &settings, available)
    }

    #[test]
    fn a_model_spreads_over_every_gpu_with_two_workers_each() {
        // TORCH_DEVICE is not set in the tests: detection, here injected.
        let c = config(r#"{"pinned": {"1.0": {"deviceIds": [1]}}, "cpu": {"1.0": {"deviceType": "cpu"}}}"#);
        let both = vec![Device::Cuda(0), Device::Cuda(1)];
        assert_eq!(devices_on(&c, "any", "1.0", TWO_GPUS).expect("devices"), both);
        assert_eq!(options_on(&c, "any", "1.0", TWO_GPUS).workers, 2 * CUDA_WORKERS);
        assert_eq!(devices_on(&c, "pinned", "1.0", TWO_GPUS).expect("devices"), vec![Device::Cuda(1)]);
        assert_eq!(options_on(&c, "pinned", "1.0", TWO_GPUS).workers, CUDA_WORKERS);
        assert_eq!(devices_on(&c, "cpu", "1.0", TWO_GPUS).expect("devices"), vec![Device::Cpu]);
        assert_eq!(options_on(&c, "cpu", "1.0", TWO_GPUS).workers, c.default_workers_per_model);
        assert_eq!(options_on(&c, "any", "1.0", Availability::cpu_only()).workers, c.default_workers_per_model);
    }

    #[test]
    fn configured_workers_win_and_missing_gpus_are_errors() {
        let mut c =
            config(r#"{"m": {"1.0": {"minWorkers": 3, "deviceIds": [0, 1]}}, "far": {"1.0": {"deviceIds": [5]}}}"#);
        assert_eq!(options_on(&c, "m", "1.0", TWO_GPUS).workers, 3);
        c.default_workers_per_model = 7;
        assert_eq!(options_on(&c, "other", "1.0", TWO_GPUS).workers, 7, "an explicit default wins on GPUs too");
        let err = devices_on(&c, "far", "1.0", TWO_GPUS).expect_err("no GPU 5").to_string();
        assert!(err.contains("deviceIds [5] ask for CUDA devices") && err.contains("no GPU 5"), "{err}");
    }
}
