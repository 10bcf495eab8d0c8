//! Start-up: turns a [`Config`] into running models in a [`Registry`].

use std::{path::PathBuf, sync::Arc};

use ferroserve_engine::{
    backend::{OnnxFactory, OnnxOptions},
    metrics::EngineMetrics,
    store, BackendFactory, BatchPolicy, Model, ModelOptions, Registry,
};

use crate::config::{Config, LoadModels};

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

/// The run options of model `name` at `version`: its `models` entry over the top-level defaults.
#[must_use]
pub fn model_options(config: &Config, name: &str, version: &str) -> ModelOptions {
    let m = config.model_config(name, version).cloned().unwrap_or_default();
    let max_delay = m.max_batch_delay.and_then(|ms| crate::config::delay_ms(ms).ok()).unwrap_or(config.max_batch_delay);
    ModelOptions {
        name: name.to_string(),
        version: version.to_string(),
        workers: m.min_workers.unwrap_or(config.default_workers_per_model),
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

/// Loads one model from the store with `options` and starts its workers, recording into `metrics`.
///
/// # Errors
/// [`LoadError`] naming the model.
pub fn load_model_with(
    config: &Config,
    entry: &str,
    options: ModelOptions,
    metrics: &EngineMetrics,
) -> Result<Model, LoadError> {
    let name = options.name.clone();
    let files = store::locate(&config.model_store, &name, entry)?;
    let onnx = OnnxOptions { dylib: ort_dylib(), intra_threads: intra_threads(config, options.workers) };
    let backend = |source| LoadError::Backend { name: name.clone(), source };
    let factory = OnnxFactory::load(&files.model_path, onnx).map_err(backend)?;
    let outputs = factory.spec().output_len();
    let model = Model::start_with(Arc::new(factory), options, metrics).map_err(backend)?;
    match files.labels {
        Some(labels) if labels.len() != outputs => Err(LoadError::Mismatch {
            name,
            message: format!("index_to_name.json has {} labels, the model outputs {outputs} values", labels.len()),
        }),
        Some(labels) => Ok(model.with_labels(labels)),
        None => Ok(model),
    }
}

/// Loads model `name` from `entry` in the store with its configured settings (the `models` JSON over the
/// top-level defaults), recording into `metrics`.
///
/// # Errors
/// [`LoadError`] naming the model.
pub fn load_model(config: &Config, name: &str, entry: &str, metrics: &EngineMetrics) -> Result<Model, LoadError> {
    let version = config.version_of(name);
    let settings = config.model_config(name, &version);
    let entry = settings.and_then(|m| m.mar_name.as_deref()).unwrap_or(entry);
    let model = load_model_with(config, entry, model_options(config, name, &version), metrics)?;
    if let Some(max) = settings.and_then(|m| m.max_workers) {
        model.set_max_workers(max);
    }
    Ok(model.with_source(entry, true))
}

/// The models loaded at start-up, and those that failed with their error.
pub type Loaded = (Arc<Registry>, Vec<(String, LoadError)>);

/// Loads every model `load_models` names into a new registry, recording into `metrics`. A model that cannot be
/// loaded is logged and returned with its error; the others are served.
///
/// # Errors
/// Only when `load_models=all` and the model store cannot be listed.
pub fn load_all(config: &Config, metrics: &EngineMetrics) -> Result<Loaded, LoadError> {
    let registry = Arc::new(Registry::new());
    let entries = match &config.load_models {
        LoadModels::None => Vec::new(),
        LoadModels::All => store::list(&config.model_store)?,
        LoadModels::List(list) => list.clone(),
    };
    let mut failed = Vec::new();
    for (name, entry) in entries {
        let loaded = load_model(config, &name, &entry, metrics).and_then(|model| {
            tracing::info!(
                model = %name, version = model.version(), device = %model.device(), workers = model.options().workers,
                batch_size = model.policy().max_batch_size, max_batch_delay = ?model.policy().max_delay, "model loaded"
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
