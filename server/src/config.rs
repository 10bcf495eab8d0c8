//! `config.properties`, TorchServe's configuration file (Java properties syntax, multi-line values included),
//! read into one [`Config`] value with TorchServe's defaults. A bad value stops start-up with an error that names
//! the key and its line; keys ferroserve does not read are warned about by name.

use std::{
    collections::BTreeMap,
    net::{SocketAddr, ToSocketAddrs},
    path::{Path, PathBuf},
    time::Duration,
};

use ferroserve_engine::{backend::Declaration, device::DeviceRequest};
use serde::Deserialize;

pub use crate::batching_config::delay_ms;
use crate::batching_config::MaxBatchDelay;

/// A configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file cannot be read or is not valid properties syntax.
    #[error("cannot read {path}: {message}")]
    Read {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// A key has a value ferroserve cannot use.
    #[error("invalid value for `{key}`{}: {message}", line.map(|l| format!(" (line {l})")).unwrap_or_default())]
    Invalid {
        /// The key.
        key: String,
        /// Its line in the file, when it came from one.
        line: Option<usize>,
        /// Why it is invalid.
        message: String,
    },
}

/// Which API a listener serves: TorchServe's three, each on its own address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    /// `/ping`, `/predictions`, KServe v2 (`inference_address`).
    Inference,
    /// `/models`, `/token` (`management_address`).
    Management,
    /// `/metrics` (`metrics_address`).
    Metrics,
}

impl Api {
    /// The three, in the order of their ports (8080, 8081, 8082).
    pub const ALL: [Api; 3] = [Api::Inference, Api::Management, Api::Metrics];

    /// Its index among the three (for per-API state).
    #[must_use]
    pub fn index(self) -> usize {
        self as usize
    }

    /// The label of this API in metrics and logs.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Api::Inference => "inference",
            Api::Management => "management",
            Api::Metrics => "metrics",
        }
    }

    /// The key of `config.properties` that sets its address.
    #[must_use]
    pub fn address_key(self) -> &'static str {
        match self {
            Api::Inference => "inference_address",
            Api::Management => "management_address",
            Api::Metrics => "metrics_address",
        }
    }

    /// The APIs that also have gRPC services: inference (TorchServe's and KServe v2's) and management.
    pub const GRPC: [Api; 2] = [Api::Inference, Api::Management];

    /// The key of `config.properties` that sets the port of its gRPC services.
    #[must_use]
    pub fn grpc_port_key(self) -> &'static str {
        match self {
            Api::Inference => "grpc_inference_port",
            Api::Management | Api::Metrics => "grpc_management_port",
        }
    }
}

/// Which models to load at start-up (`load_models`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum LoadModels {
    /// None.
    #[default]
    None,
    /// Everything in the model store.
    All,
    /// These entries: the model name when one is given (`NAME=FILE`), and the file or folder in the model store
    /// it is loaded from. Without a name, the archive's `modelName` or the file's name names the model.
    List(Vec<(Option<String>, String)>),
}

/// Per-model, per-version settings from the `models={...}` JSON (TorchServe's names).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ModelConfig {
    /// Most requests in one batch.
    pub batch_size: Option<usize>,
    /// Longest wait for a batch to fill, in milliseconds (fractions allowed), or `"auto"`: batch for the
    /// objective `sloP99Ms` instead ([`crate::batching_config`]).
    pub max_batch_delay: Option<MaxBatchDelay>,
    /// ferroserve's own key: the 99th percentile of latency, in milliseconds, that `"maxBatchDelay": "auto"`
    /// batches for (default: `slo.latency.thresholdMs`).
    #[serde(rename = "sloP99Ms")]
    pub slo_p99_ms: Option<f64>,
    /// Worker threads started for the model.
    pub min_workers: Option<usize>,
    /// Upper bound of workers (accepted; scaling comes with the management API).
    pub max_workers: Option<usize>,
    /// Seconds a request may wait for its answer; a Python worker that takes longer is killed and restarted.
    pub response_timeout: Option<u64>,
    /// Seconds a Python handler's worker may take to start and load the model (default 120).
    pub startup_timeout: Option<u64>,
    /// Capacity of the model's job queue.
    pub job_queue_size: Option<usize>,
    /// Whether this version is the model's default.
    pub default_version: Option<bool>,
    /// The file or folder in the model store to load (TorchServe's archive name).
    pub mar_name: Option<String>,
    /// `cpu` or `gpu` (CUDA, else Apple's MPS); unset: `TORCH_DEVICE`, else detection. A GPU that is not there
    /// stops start-up.
    pub device_type: Option<String>,
    /// CUDA device ids for `deviceType: gpu`: the model's workers are spread over them, in order.
    pub device_ids: Option<Vec<usize>>,
    /// Service level objectives (`crate::slo_config`), rendered as Prometheus rules by `crate::slo::rules`.
    pub slo: Option<crate::slo_config::SloConfig>,
    /// ferroserve's own key: this version is its model's canary from start-up, with this share (percent) of the
    /// requests that name no version.
    pub canary_percent: Option<f64>,
    /// ferroserve's own key: the automatic analysis of this version as a canary ([`crate::rollout_config`]).
    pub canary_analysis: Option<crate::rollout_config::AnalysisConfig>,
    /// ferroserve's own key: the drift reference profile of this version (`ferroserve drift-profile` writes
    /// one), a path relative to the model store; default `<model>.drift.json` there when it exists.
    pub drift_profile: Option<String>,
    /// ferroserve's own key: the names and shapes of a TorchScript model's tensors, as its `<file>.json` would
    /// declare them (`{"input": {"name": ..., "shape": [...]}, "output": {...}}`, `-1` for a size the requests
    /// give). Checked when read; used when no file beside the model declares them.
    pub ferroserve: Option<serde_json::Value>,
    /// Every other key, warned about at start-up.
    #[serde(flatten)]
    pub other: BTreeMap<String, serde_json::Value>,
}

/// The whole configuration, with TorchServe's defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Where the inference API listens (`inference_address`, default `http://127.0.0.1:8080`).
    pub inference_address: SocketAddr,
    /// Where the management API listens (`management_address`, default `http://127.0.0.1:8081`).
    pub management_address: SocketAddr,
    /// Where the metrics API listens (`metrics_address`, default `http://127.0.0.1:8082`).
    pub metrics_address: SocketAddr,
    /// Where the gRPC inference services listen, TorchServe's and KServe v2's (`grpc_inference_address`, a host,
    /// default 127.0.0.1, and `grpc_inference_port`, default 7070).
    pub grpc_inference_address: SocketAddr,
    /// Where TorchServe's gRPC management service listens (`grpc_management_address`, default 127.0.0.1, and
    /// `grpc_management_port`, default 7071).
    pub grpc_management_address: SocketAddr,
    /// Whether `TS_<KEY>` environment variables override the file and the command line
    /// (`enable_envvars_config`, default false).
    pub enable_envvars_config: bool,
    /// Largest response body sent (`max_response_size`, bytes, default 6553500); a larger one is a 500.
    pub max_response_size: usize,
    /// Upper bounds of the latency histograms, in seconds (`metrics_latency_buckets_ms`, ferroserve's key, in ms).
    pub latency_buckets: Vec<f64>,
    /// Most inference requests in flight at once (`max_inflight_requests`, ferroserve's key, default 1024); beyond
    /// it a request is answered 429 at once.
    pub max_inflight_requests: usize,
    /// Most open connections per listener (`max_connections`, ferroserve's key, default 4096); beyond it a new
    /// connection is answered 503 and closed.
    pub max_connections: usize,
    /// How long a client may take to send a request body (`request_read_timeout`, seconds, default 30).
    pub request_read_timeout: Duration,
    /// How long a graceful shutdown may take before the server exits anyway (`shutdown_grace_period`, seconds,
    /// default 30).
    pub shutdown_grace_period: Duration,
    /// Whether token authorisation is off (`disable_token_authorization`, TorchServe's key, default false).
    pub disable_token_authorization: bool,
    /// Whether the inference API asks for its key too (`inference_token_authorization`, ferroserve's key,
    /// default false).
    pub inference_token_authorization: bool,
    /// Where the keys are written (`key_file`, ferroserve's key, default `key_file.json` in the working folder).
    pub key_file: PathBuf,
    /// How long a management or inference key lives before `GET /token` must renew it (`token_expiration_min`,
    /// TorchServe's key, default 60 minutes).
    pub token_expiration: Duration,
    /// Whether models can be registered and unregistered through the management API (`enable_model_api`,
    /// TorchServe's key, default false).
    pub enable_model_api: bool,
    /// Regular expressions a model URL must match to be registered (`allowed_urls`, TorchServe's key,
    /// comma-separated; default: any path inside the model store).
    pub allowed_urls: Vec<String>,
    /// Whether the metrics API also exposes TorchServe's names (`ts_*`, `Requests2XX`...) (`ts_metric_names`,
    /// ferroserve's key, default true).
    pub ts_metric_names: bool,
    /// Folder the models are loaded from (`model_store`).
    pub model_store: PathBuf,
    /// Models loaded at start-up (`load_models`).
    pub load_models: LoadModels,
    /// Default capacity of each model's queue (`job_queue_size`, default 100).
    pub job_queue_size: usize,
    /// Default workers per model (`default_workers_per_model`, default: the number of cores).
    pub default_workers_per_model: usize,
    /// Intra-op threads per worker (`intra_op_threads`, ferroserve's key; default: cores / workers, at least 1).
    pub intra_op_threads: Option<usize>,
    /// Default answer deadline (`default_response_timeout`, seconds, default 120).
    pub default_response_timeout: Duration,
    /// Largest request body accepted (`max_request_size`, bytes, default 6553500).
    pub max_request_size: usize,
    /// Default batch size of every model (`batch_size`, ferroserve's shorthand, default 1).
    pub batch_size: usize,
    /// Default batch delay of every model (`max_batch_delay`, ms, ferroserve's shorthand, default 100).
    pub max_batch_delay: Duration,
    /// I/O threads of the HTTP front end (`number_of_netty_threads`, default: the number of cores).
    pub io_threads: usize,
    /// Per model, per version settings (`models`).
    pub models: BTreeMap<String, BTreeMap<String, ModelConfig>>,
    /// The interpreter that runs archives' Python handlers (`python_executable`, TorchServe's key; default: the
    /// venv `make deps` makes, [`default_python`]).
    pub python_executable: PathBuf,
    /// Whether an archive's `requirements.txt` (`--requirements-file`) is installed with `python_executable`'s pip
    /// before its workers start (`install_py_dep_per_model`, TorchServe's key, default false).
    pub install_py_dep_per_model: bool,
    /// Whether the Python worker decodes JSON and text bodies before the handler sees them
    /// (`decode_input_request`, TorchServe's key, default true).
    pub decode_input_request: bool,
    /// Whether Pillow's image size limit stays on in the Python worker (`limit_max_image_pixels`, TorchServe's
    /// key, default true).
    pub limit_max_image_pixels: bool,
    /// The request envelope of Python handlers (`service_envelope`, TorchServe's key: `json`, `kserve`,
    /// `kservev2`; default none).
    pub service_envelope: String,
    /// The drift monitor (`drift_*`, ferroserve's keys).
    pub drift: crate::drift_config::DriftConfig,
    /// The access log, log format and traces (ferroserve's keys of [`crate::obs_config::ObsConfig::KEYS`]).
    pub obs: crate::obs_config::ObsConfig,
    /// TLS: `https://` addresses, `enable_grpc_ssl`, `private_key_file`, `certificate_file`, `keystore`.
    pub tls: crate::tls_config::TlsConfig,
    /// CORS: `cors_allowed_origin`, `cors_allowed_methods`, `cors_allowed_headers` (TorchServe's keys).
    pub cors: crate::cors::CorsConfig,
}

/// The venv `make deps` installs torch and torchserve into (`~/.cache/ferroserve/venv-torch-<version>`), when it
/// is there; else `python3` from the `PATH`.
#[must_use]
pub fn default_python() -> PathBuf {
    let venv = std::env::var_os("HOME")
        .map(|home| PathBuf::from(home).join(".cache/ferroserve/venv-torch-2.13.0/bin/python"))
        .filter(|python| python.is_file());
    venv.unwrap_or_else(|| PathBuf::from("python3"))
}

impl Default for Config {
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
        Self {
            inference_address: SocketAddr::from(([127, 0, 0, 1], 8080)),
            management_address: SocketAddr::from(([127, 0, 0, 1], 8081)),
            metrics_address: SocketAddr::from(([127, 0, 0, 1], 8082)),
            grpc_inference_address: SocketAddr::from(([127, 0, 0, 1], 7070)),
            grpc_management_address: SocketAddr::from(([127, 0, 0, 1], 7071)),
            enable_envvars_config: false,
            max_response_size: 6_553_500,
            latency_buckets: ferroserve_engine::metrics::DEFAULT_LATENCY_BUCKETS.to_vec(),
            ts_metric_names: true,
            disable_token_authorization: false,
            inference_token_authorization: false,
            key_file: PathBuf::from("key_file.json"),
            token_expiration: Duration::from_secs(60 * 60),
            enable_model_api: false,
            allowed_urls: Vec::new(),
            max_inflight_requests: 1024,
            max_connections: 4096,
            request_read_timeout: Duration::from_secs(30),
            shutdown_grace_period: Duration::from_secs(30),
            model_store: PathBuf::from("model_store"),
            load_models: LoadModels::None,
            job_queue_size: 100,
            default_workers_per_model: cores,
            intra_op_threads: None,
            default_response_timeout: Duration::from_secs(120),
            max_request_size: 6_553_500,
            batch_size: 1,
            max_batch_delay: Duration::from_millis(100),
            io_threads: cores,
            models: BTreeMap::new(),
            python_executable: default_python(),
            install_py_dep_per_model: false,
            decode_input_request: true,
            limit_max_image_pixels: true,
            service_envelope: String::new(),
            drift: crate::drift_config::DriftConfig::default(),
            obs: crate::obs_config::ObsConfig::default(),
            tls: crate::tls_config::TlsConfig::default(),
            cors: crate::cors::CorsConfig::default(),
        }
    }
}

/// TorchServe keys that have no meaning here: accepted with a one-line warning.
const IGNORED: &[&str] = &[
    "vmargs",
    "enable_metrics_api",
    "metrics_mode",
    "number_of_gpu",
    "async_logging",
    "disable_system_metrics",
    "default_service_handler",
    "workflow_store",
    "plugins_path",
];

impl Config {
    /// Where `api` listens.
    #[must_use]
    pub fn address(&self, api: Api) -> SocketAddr {
        match api {
            Api::Inference => self.inference_address,
            Api::Management => self.management_address,
            Api::Metrics => self.metrics_address,
        }
    }

    /// Where the gRPC services of `api` listen (the metrics API has none: `None`).
    #[must_use]
    pub fn grpc_address(&self, api: Api) -> Option<SocketAddr> {
        match api {
            Api::Inference => Some(self.grpc_inference_address),
            Api::Management => Some(self.grpc_management_address),
            Api::Metrics => None,
        }
    }

    /// Reads a `config.properties` file over the defaults.
    ///
    /// # Errors
    /// [`ConfigError`] naming the file, or the key and line of a bad value.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let file = std::fs::File::open(path)
            .map_err(|e| ConfigError::Read { path: path.to_path_buf(), message: e.to_string() })?;
        Self::from_reader(std::io::BufReader::new(file), path)
    }

    /// Reads `config.properties` text over the defaults (`origin` names it in errors).
    ///
    /// # Errors
    /// [`ConfigError`] naming the key and line of a bad value, or the syntax error.
    pub fn from_reader(reader: impl std::io::Read, origin: &Path) -> Result<Self, ConfigError> {
        let read_error = |message: String| ConfigError::Read { path: origin.to_path_buf(), message };
        let mut entries = Vec::new();
        for line in java_properties::PropertiesIter::new(reader) {
            let line = line.map_err(|e| read_error(e.to_string()))?;
            let number = line.line_number();
            if let java_properties::LineContent::KVPair(key, value) = line.consume_content() {
                entries.push((key, value, Some(number)));
            }
        }
        let mut config = Self::default();
        config.apply(entries)?;
        Ok(config)
    }

    /// Applies `(key, value, line)` settings in order; later ones win.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] for the first bad value.
    pub fn apply(&mut self, entries: Vec<(String, String, Option<usize>)>) -> Result<(), ConfigError> {
        for (key, value, line) in entries {
            let invalid = |message: String| ConfigError::Invalid { key: key.clone(), line, message };
            self.set(&key, value.trim()).map_err(invalid)?;
        }
        self.check_drift()
    }

    /// The drift keys checked together (one may only be read against another).
    fn check_drift(&self) -> Result<(), ConfigError> {
        self.drift.validate().map_err(|(key, message)| ConfigError::Invalid { key: key.into(), line: None, message })
    }

    fn set(&mut self, key: &str, value: &str) -> Result<(), String> {
        match key {
            "inference_address" => (self.inference_address, self.tls.https[0]) = parse_address(value)?,
            "management_address" => (self.management_address, self.tls.https[1]) = parse_address(value)?,
            "metrics_address" => (self.metrics_address, self.tls.https[2]) = parse_address(value)?,
            "grpc_inference_address" => self.grpc_inference_address.set_ip(parse_host(value)?),
            "grpc_management_address" => self.grpc_management_address.set_ip(parse_host(value)?),
            "grpc_inference_port" => self.grpc_inference_address.set_port(parse_port(value)?),
            "grpc_management_port" => self.grpc_management_address.set_port(parse_port(value)?),
            "enable_grpc_ssl" => self.tls.grpc = parse_bool(value)?,
            "private_key_file" => self.tls.private_key_file = non_empty_path(value),
            "certificate_file" => self.tls.certificate_file = non_empty_path(value),
            "keystore" => self.tls.keystore = non_empty_path(value),
            "cors_allowed_origin" | "cors_allowed_methods" | "cors_allowed_headers" => self.cors.set(key, value)?,
            "enable_envvars_config" => self.enable_envvars_config = parse_bool(value)?,
            "max_response_size" => self.max_response_size = positive(value)?,
            "metrics_latency_buckets_ms" => self.latency_buckets = parse_buckets(value)?,
            "ts_metric_names" => self.ts_metric_names = parse_bool(value)?,
            "disable_token_authorization" => self.disable_token_authorization = parse_bool(value)?,
            "inference_token_authorization" => self.inference_token_authorization = parse_bool(value)?,
            "key_file" => self.key_file = PathBuf::from(value),
            "token_expiration_min" => self.token_expiration = minutes(value)?,
            "enable_model_api" => self.enable_model_api = parse_bool(value)?,
            "allowed_urls" => self.allowed_urls = parse_patterns(value)?,
            "max_inflight_requests" => self.max_inflight_requests = positive(value)?,
            "max_connections" => self.max_connections = positive(value)?,
            "request_read_timeout" => self.request_read_timeout = Duration::from_secs(positive(value)? as u64),
            "shutdown_grace_period" => self.shutdown_grace_period = Duration::from_secs(positive(value)? as u64),
            "model_store" => self.model_store = PathBuf::from(value),
            "load_models" => self.load_models = parse_load_models(value)?,
            "job_queue_size" => self.job_queue_size = positive(value)?,
            "default_workers_per_model" => self.default_workers_per_model = positive(value)?,
            "intra_op_threads" => self.intra_op_threads = Some(positive(value)?),
            "default_response_timeout" => self.default_response_timeout = Duration::from_secs(positive(value)? as u64),
            "max_request_size" => self.max_request_size = positive(value)?,
            "batch_size" => self.batch_size = positive(value)?,
            "max_batch_delay" => self.max_batch_delay = delay_ms(value.parse().map_err(|e| format!("{e}"))?)?,
            "number_of_netty_threads" => self.io_threads = positive(value)?,
            "models" => self.models = parse_models(value)?,
            "python_executable" => self.python_executable = PathBuf::from(value),
            "install_py_dep_per_model" => self.install_py_dep_per_model = parse_bool(value)?,
            "decode_input_request" => self.decode_input_request = parse_bool(value)?,
            "limit_max_image_pixels" => self.limit_max_image_pixels = parse_bool(value)?,
            "service_envelope" => self.service_envelope = value.to_string(),
            "drift_detection" => self.drift.enabled = parse_bool(value)?,
            "drift_window_size" => self.drift.window_size = positive(value)?,
            "drift_window_seconds" => self.drift.window_age = Duration::from_secs(positive(value)? as u64),
            "drift_min_window_size" => self.drift.min_window_size = positive(value)?,
            "drift_reference_size" => self.drift.reference_size = positive(value)?,
            "drift_queue_size" => self.drift.queue_size = positive(value)?,
            obs if crate::obs_config::ObsConfig::KEYS.contains(&obs) => self.obs.set(obs, value)?,
            ignored if IGNORED.contains(&ignored) => {
                tracing::warn!(key, "config key has no effect in ferroserve; ignored");
            }
            unknown => tracing::warn!(key = unknown, "unknown config key; ignored"),
        }
        Ok(())
    }

    /// Applies `TS_<KEY>` environment variables (TorchServe's convention: the key upper-cased), when
    /// `enable_envvars_config` is true in the file or in the environment. They win over the file and the command
    /// line.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] naming the key and the variable.
    pub fn apply_env(&mut self, vars: impl IntoIterator<Item = (String, String)>) -> Result<(), ConfigError> {
        let vars: Vec<(String, String)> = vars.into_iter().filter(|(k, _)| k.starts_with("TS_")).collect();
        let enabled = vars.iter().find(|(k, _)| k == "TS_ENABLE_ENVVARS_CONFIG").map(|(_, v)| v.as_str());
        if let Some(value) = enabled {
            self.enable_envvars_config = parse_bool(value).map_err(|message| ConfigError::Invalid {
                key: "enable_envvars_config (TS_ENABLE_ENVVARS_CONFIG)".into(),
                line: None,
                message,
            })?;
        }
        if !self.enable_envvars_config {
            return Ok(());
        }
        for (var, value) in vars {
            let key = var["TS_".len()..].to_ascii_lowercase();
            self.set(&key, value.trim()).map_err(|message| ConfigError::Invalid {
                key: format!("{key} ({var})"),
                line: None,
                message,
            })?;
        }
        self.check_drift()
    }

    /// The settings of `name` at `version`, if the `models` JSON has any.
    #[must_use]
    pub fn model_config(&self, name: &str, version: &str) -> Option<&ModelConfig> {
        self.models.get(name)?.get(version)
    }

    /// The version `load_models` loads for `name`: the one marked `defaultVersion`, else the only or first one
    /// in `models`, else TorchServe's "1.0".
    #[must_use]
    pub fn version_of(&self, name: &str) -> String {
        let Some(versions) = self.models.get(name) else {
            return "1.0".into();
        };
        versions
            .iter()
            .find(|(_, c)| c.default_version == Some(true))
            .or_else(|| versions.iter().next())
            .map_or_else(|| "1.0".into(), |(v, _)| v.clone())
    }
}

fn parse_patterns(value: &str) -> Result<Vec<String>, String> {
    let patterns: Vec<String> = value.split(',').map(str::trim).filter(|p| !p.is_empty()).map(String::from).collect();
    regex::RegexSet::new(patterns.iter().map(|p| format!("^(?:{p})$"))).map_err(|e| e.to_string())?;
    Ok(patterns)
}

/// The longest `token_expiration_min`: ten years.
const MAX_MINUTES: f64 = 10.0 * 365.0 * 24.0 * 60.0;

/// A positive number of minutes (fractions allowed), at most ten years.
fn minutes(value: &str) -> Result<Duration, String> {
    let minutes: f64 = value.parse().map_err(|_| format!("`{value}` is not a number of minutes"))?;
    if !(minutes.is_finite() && minutes > 0.0 && minutes <= MAX_MINUTES) {
        return Err(format!("`{value}`: give a positive number of minutes, at most {MAX_MINUTES} (ten years)"));
    }
    Duration::try_from_secs_f64(minutes * 60.0).map_err(|e| format!("`{value}`: {e}"))
}

fn parse_bool(value: &str) -> Result<bool, String> {
    match value.to_ascii_lowercase().as_str() {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(format!("`{value}` is not true or false")),
    }
}

fn parse_buckets(value: &str) -> Result<Vec<f64>, String> {
    let mut buckets = Vec::new();
    for item in value.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let ms: f64 = item.parse().map_err(|e| format!("`{item}` is not a number of milliseconds ({e})"))?;
        if !(ms.is_finite() && ms > 0.0) || buckets.last().is_some_and(|&last| ms / 1000.0 <= last) {
            return Err("buckets must be positive and increasing".into());
        }
        buckets.push(ms / 1000.0);
    }
    if buckets.is_empty() {
        return Err("give at least one bucket".into());
    }
    Ok(buckets)
}

fn positive(value: &str) -> Result<usize, String> {
    match value.parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(format!("`{value}` is not a positive integer ({e})")),
    }
}

/// An API's address and whether it serves TLS (`https://`).
fn parse_address(value: &str) -> Result<(SocketAddr, bool), String> {
    let (rest, tls) = match (value.strip_prefix("http://"), value.strip_prefix("https://")) {
        (Some(rest), _) => (rest, false),
        (_, Some(rest)) => (rest, true),
        _ => return Err(format!("`{value}` must be http://HOST:PORT or https://HOST:PORT")),
    };
    let rest = rest.trim_end_matches('/');
    let addr = rest
        .to_socket_addrs()
        .map_err(|e| format!("`{value}`: {e}"))?
        .next()
        .ok_or_else(|| format!("`{value}` resolves to no address"))?;
    Ok((addr, tls))
}

/// A file key's path; empty means unset.
fn non_empty_path(value: &str) -> Option<PathBuf> {
    (!value.is_empty()).then(|| PathBuf::from(value))
}

/// A gRPC address key's host: an IP address or a name that resolves to one (TorchServe gives the port apart).
fn parse_host(value: &str) -> Result<std::net::IpAddr, String> {
    (value, 0)
        .to_socket_addrs()
        .map_err(|e| format!("`{value}`: {e}"))?
        .next()
        .map(|addr| addr.ip())
        .ok_or_else(|| format!("`{value}` resolves to no address"))
}

/// A port number (0: the system chooses one).
fn parse_port(value: &str) -> Result<u16, String> {
    value.parse().map_err(|_| format!("`{value}` is not a port number (0 to 65535)"))
}

fn parse_load_models(value: &str) -> Result<LoadModels, String> {
    match value {
        "" | "standalone" => return Ok(LoadModels::None),
        "all" | "ALL" => return Ok(LoadModels::All),
        _ => {}
    }
    let mut list = Vec::new();
    for item in value.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (name, file) = match item.split_once('=') {
            Some((name, file)) => (Some(name.trim().to_string()), file.trim().to_string()),
            None => (None, item.to_string()),
        };
        if name.as_ref().is_some_and(String::is_empty) || file.is_empty() {
            return Err(format!("`{item}` must be NAME, FILE or NAME=FILE"));
        }
        list.push((name, file));
    }
    Ok(LoadModels::List(list))
}

/// The model name TorchServe derives from a file: its name without the extension.
#[must_use]
pub fn model_name_of(file: &str) -> String {
    let base = Path::new(file).file_name().and_then(|f| f.to_str()).unwrap_or(file);
    base.split_once('.').map_or(base, |(stem, _)| stem).to_string()
}

fn parse_models(value: &str) -> Result<BTreeMap<String, BTreeMap<String, ModelConfig>>, String> {
    let models: BTreeMap<String, BTreeMap<String, ModelConfig>> = serde_json::from_str(value)
        .map_err(|e| format!("not the {{\"model\": {{\"version\": {{...}}}}}} JSON: {e}"))?;
    for (name, versions) in &models {
        for (version, config) in versions {
            check_model_config(config).map_err(|e| format!("{name} {version}: {e}"))?;
            for key in config.other.keys() {
                tracing::warn!(model = %name, version = %version, key = %key, "model setting not used by ferroserve");
            }
        }
    }
    Ok(models)
}

impl ModelConfig {
    /// The objective a model with these settings batches for: `Some` when `maxBatchDelay` is `auto` (or
    /// `delay`, a parameter that wins over it, is), with `slo_p99` (a parameter) or else `sloP99Ms` or else the
    /// latency objective's threshold.
    ///
    /// # Errors
    /// `auto` with no objective anywhere.
    pub fn slo_target(
        &self,
        delay: Option<MaxBatchDelay>,
        slo_p99: Option<Duration>,
    ) -> Result<Option<Duration>, String> {
        let objective = crate::batching_config::objective(self.slo_p99_ms, self.slo.as_ref());
        crate::batching_config::target(self.max_batch_delay, objective, delay, slo_p99)
    }

    /// These settings over `base`: each one set here wins, the others come from `base`.
    #[must_use]
    pub fn over(self, base: ModelConfig) -> ModelConfig {
        let mut other = base.other;
        other.extend(self.other);
        ModelConfig {
            batch_size: self.batch_size.or(base.batch_size),
            max_batch_delay: self.max_batch_delay.or(base.max_batch_delay),
            slo_p99_ms: self.slo_p99_ms.or(base.slo_p99_ms),
            min_workers: self.min_workers.or(base.min_workers),
            max_workers: self.max_workers.or(base.max_workers),
            response_timeout: self.response_timeout.or(base.response_timeout),
            startup_timeout: self.startup_timeout.or(base.startup_timeout),
            job_queue_size: self.job_queue_size.or(base.job_queue_size),
            default_version: self.default_version.or(base.default_version),
            mar_name: self.mar_name.or(base.mar_name),
            device_type: self.device_type.or(base.device_type),
            device_ids: self.device_ids.or(base.device_ids),
            slo: self.slo.or(base.slo),
            canary_percent: self.canary_percent.or(base.canary_percent),
            canary_analysis: self.canary_analysis.or(base.canary_analysis),
            drift_profile: self.drift_profile.or(base.drift_profile),
            ferroserve: self.ferroserve.or(base.ferroserve),
            other,
        }
    }
}

/// The most bytes of a `model-config.yaml` read.
const MAX_MODEL_YAML: u64 = 1 << 20;

/// Reads an archive's `model-config.yaml` (`torch-model-archiver -c`): TorchServe's keys, as in `models`
/// (`minWorkers`, `maxWorkers`, `batchSize`, `maxBatchDelay`, `responseTimeout`, `deviceType`, `deviceIds`, ...).
/// Keys for the Python handler and the like are kept in `other` and not used.
///
/// # Errors
/// A message naming the file when it cannot be read, is not such YAML, or holds a value out of range.
pub fn read_model_yaml(path: &Path) -> Result<ModelConfig, String> {
    let fail = |message: String| format!("{}: {message}", path.display());
    let file = std::fs::File::open(path).map_err(|e| fail(e.to_string()))?;
    let mut text = String::new();
    std::io::Read::read_to_string(&mut std::io::Read::take(file, MAX_MODEL_YAML + 1), &mut text)
        .map_err(|e| fail(e.to_string()))?;
    if text.len() as u64 > MAX_MODEL_YAML {
        return Err(fail(format!("larger than {MAX_MODEL_YAML} bytes")));
    }
    let config: ModelConfig = serde_saphyr::from_str(&text).map_err(|e| fail(e.to_string()))?;
    check_model_config(&config).map_err(fail)?;
    Ok(config)
}

fn check_model_config(config: &ModelConfig) -> Result<(), String> {
    let at_least_one = |what: &str, v: Option<usize>| match v {
        Some(0) => Err(format!("{what} must be at least 1")),
        _ => Ok(()),
    };
    at_least_one("batchSize", config.batch_size)?;
    at_least_one("minWorkers", config.min_workers)?;
    at_least_one("jobQueueSize", config.job_queue_size)?;
    if let Some(slo) = &config.slo {
        slo.validate()?;
    }
    crate::batching_config::check(config.max_batch_delay, config.slo_p99_ms, config.slo.as_ref())?;
    if let Some(percent) = config.canary_percent {
        crate::rollout_config::canary_weight(percent)?;
    }
    if let Some(analysis) = &config.canary_analysis {
        analysis.resolve()?;
    }
    if let (Some(min), Some(max)) = (config.min_workers, config.max_workers) {
        if max < min {
            return Err(format!("maxWorkers {max} is below minWorkers {min}"));
        }
    }
    if let Some(declared) = &config.ferroserve {
        Declaration::from_json(declared).map_err(|e| format!("ferroserve: {e}"))?;
    }
    // Whether the device is there is checked when the model loads; here, only that the keys make sense.
    let keys =
        DeviceRequest::for_model(DeviceRequest::Auto, config.device_type.as_deref(), config.device_ids.as_deref());
    keys.map(drop).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        let mut file = tempfile::NamedTempFile::new().expect("temp file");
        file.write_all(text.as_bytes()).expect("write");
        Config::from_file(file.path())
    }

    #[test]
    fn defaults_are_torchserve_defaults() {
        let c = parse("").expect("empty config");
        assert_eq!(c.inference_address, SocketAddr::from(([127, 0, 0, 1], 8080)));
        assert_eq!(c.job_queue_size, 100);
        assert_eq!(c.batch_size, 1);
        assert_eq!(c.max_batch_delay, Duration::from_millis(100));
        assert_eq!(c.default_response_timeout, Duration::from_secs(120));
        assert_eq!(c.load_models, LoadModels::None);
    }

    #[test]
    fn reads_keys_and_multi_line_models_json() {
        let c = parse(
            "# comment\ninference_address=http://0.0.0.0:9090\nmodel_store = /tmp/store\n\
             load_models=signnet,other=other.onnx\njob_queue_size=7\ndefault_workers_per_model=3\n\
             batch_size=4\nmax_batch_delay=2.5\nmodels={\\\n  \"signnet\": {\\\n    \"2.0\": {\\\n\
             \"batchSize\": 16, \"maxBatchDelay\": 5, \"minWorkers\": 2, \"marName\": \"x.mar\"}\\\n  }\\\n}\n",
        )
        .expect("valid config");
        assert_eq!(c.inference_address, SocketAddr::from(([0, 0, 0, 0], 9090)));
        assert_eq!(c.model_store, PathBuf::from("/tmp/store"));
        assert_eq!(
            c.load_models,
            LoadModels::List(vec![(None, "signnet".into()), (Some("other".into()), "other.onnx".into())])
        );
        assert_eq!((c.job_queue_size, c.default_workers_per_model, c.batch_size), (7, 3, 4));
        assert_eq!(c.max_batch_delay, Duration::from_micros(2_500));
        let m = c.model_config("signnet", "2.0").expect("model entry");
        assert_eq!((m.batch_size, m.max_batch_delay, m.min_workers), (Some(16), Some(MaxBatchDelay::Ms(5.0)), Some(2)));
        assert_eq!(c.version_of("signnet"), "2.0");
        assert_eq!(c.version_of("other"), "1.0");
    }

    #[test]
    fn a_models_entry_may_batch_for_a_latency_objective() {
        let c = parse(
            "models={\
  \"fast\": {\"1.0\": {\"batchSize\": 16, \"maxBatchDelay\": \"auto\", \"sloP99Ms\": 25}},\
               \"slo\": {\"1.0\": {\"maxBatchDelay\": \"auto\", \"slo\": {\"latency\": {\"objective\": 99, \"thresholdMs\": 40}}}}\
}\n",
        )
        .expect("valid config");
        let fast = c.model_config("fast", "1.0").expect("fast");
        assert_eq!((fast.max_batch_delay, fast.slo_p99_ms), (Some(MaxBatchDelay::Auto), Some(25.0)));
        assert_eq!(fast.slo_target(None, None), Ok(Some(Duration::from_millis(25))));
        assert!(fast.other.is_empty(), "every key is read: {:?}", fast.other);
        let slo = c.model_config("slo", "1.0").expect("slo");
        assert_eq!(
            slo.slo_target(None, None),
            Ok(Some(Duration::from_millis(40))),
            "the latency objective's threshold"
        );
        for (text, needle) in [
            ("models={\"m\": {\"1.0\": {\"maxBatchDelay\": \"auto\"}}}\n", "needs an objective"),
            ("models={\"m\": {\"1.0\": {\"maxBatchDelay\": \"later\"}}}\n", "neither milliseconds nor \"auto\""),
            ("models={\"m\": {\"1.0\": {\"maxBatchDelay\": \"auto\", \"sloP99Ms\": 0}}}\n", "sloP99Ms"),
        ] {
            let msg = parse(text).expect_err(text).to_string();
            assert!(msg.contains("`models`") && msg.contains(needle), "{text:?} -> {msg}");
        }
    }

    #[test]
    fn bad_values_name_the_key_and_line() {
        for (text, key, line) in [
            ("a=1\njob_queue_size=lots\n", "job_queue_size", 2),
            ("batch_size=0\n", "batch_size", 1),
            ("\n\nmax_batch_delay=-1\n", "max_batch_delay", 3),
            ("inference_address=ftp://127.0.0.1:1\n", "inference_address", 1),
            ("models={\"m\": {\"1.0\": {\"batchSize\": 0}}}\n", "models", 1),
            ("models={not json}\n", "models", 1),
        ] {
            let err = parse(text).expect_err(text);
            let msg = err.to_string();
            assert!(msg.contains(&format!("`{key}`")) && msg.contains(&format!("line {line}")), "{text:?} -> {msg}");
        }
    }

    #[test]
    fn a_models_entry_may_declare_torchscript_tensors() {
        let c = parse("models={\"m\": {\"1.0\": {\"ferroserve\": {\"input\": {\"shape\": [-1, 21, 3]}}}}}\n")
            .expect("a valid declaration");
        let m = c.model_config("m", "1.0").expect("m");
        assert_eq!((m.ferroserve.as_ref().map(|d| &d["input"]["shape"][1]), m.other.len()), (Some(&21.into()), 0));
        let bad = "models={\"m\": {\"1.0\": {\"ferroserve\": {\"input\": {\"shape\": \"any\"}}}}}\n";
        let message = parse(bad).expect_err("a bad declaration").to_string();
        assert!(message.contains("m 1.0: ferroserve: input.shape must be a list of sizes"), "{message}");
    }

    #[test]
    fn the_shipped_config_files_parse() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config");
        for file in ["config.properties", "config.example.properties"] {
            let c = Config::from_file(&dir.join(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
            assert_eq!(c.load_models, LoadModels::List(vec![(None, "signnet".into())]), "{file}");
            assert_eq!(c.model_config("signnet", "1.0").and_then(|m| m.batch_size), Some(16), "{file}");
        }
    }

    #[test]
    fn reads_the_python_worker_keys() {
        let c = parse(
            "python_executable=/opt/py/bin/python\ninstall_py_dep_per_model=true\ndecode_input_request=false\nlimit_max_image_pixels=false\n\
             service_envelope=kservev2\nmodels={\"m\": {\"1.0\": {\"startupTimeout\": 7}}}\n",
        )
        .expect("valid config");
        assert_eq!(c.python_executable, PathBuf::from("/opt/py/bin/python"));
        assert!(c.install_py_dep_per_model && !c.decode_input_request && !c.limit_max_image_pixels);
        assert_eq!(c.service_envelope, "kservev2");
        assert_eq!(c.model_config("m", "1.0").and_then(|m| m.startup_timeout), Some(7));
        let defaults = Config::default();
        assert!(
            defaults.decode_input_request && defaults.limit_max_image_pixels && defaults.service_envelope.is_empty()
        );
        let err = parse("decode_input_request=maybe\n").expect_err("not a boolean").to_string();
        assert!(err.contains("decode_input_request"), "{err}");
    }

    #[test]
    fn reads_the_control_plane_keys() {
        let c = parse(
            "management_address=http://127.0.0.1:9081\nmetrics_address=http://0.0.0.0:9082\n\
             max_response_size=1000\nenable_envvars_config=true\nts_metric_names=false\n\
             metrics_latency_buckets_ms=0.5, 5, 25\nvmargs=-Xmx4g\nsome_new_key=1\n",
        )
        .expect("valid config");
        assert_eq!(c.management_address, SocketAddr::from(([127, 0, 0, 1], 9081)));
        assert_eq!(c.metrics_address, SocketAddr::from(([0, 0, 0, 0], 9082)));
        assert_eq!(c.max_response_size, 1000);
        assert!(c.enable_envvars_config);
        assert!(!c.ts_metric_names);
        assert_eq!(c.latency_buckets, vec![0.0005, 0.005, 0.025]);
        let defaults = Config::default();
        assert_eq!(defaults.management_address, SocketAddr::from(([127, 0, 0, 1], 8081)));
        assert_eq!(defaults.metrics_address, SocketAddr::from(([127, 0, 0, 1], 8082)));
        assert!(defaults.latency_buckets.contains(&0.025) && defaults.latency_buckets.contains(&0.000_05));
    }

    #[test]
    fn grpc_keys_give_host_and_port_apart() {
        let defaults = Config::default();
        assert_eq!(defaults.grpc_address(Api::Inference), Some(SocketAddr::from(([127, 0, 0, 1], 7070))));
        assert_eq!(defaults.grpc_address(Api::Management), Some(SocketAddr::from(([127, 0, 0, 1], 7071))));
        assert_eq!(defaults.grpc_address(Api::Metrics), None);
        let c = parse(
            "grpc_inference_address=0.0.0.0
grpc_inference_port=9070
grpc_management_port=0
             grpc_management_address=localhost
enable_grpc_ssl=false
",
        )
        .expect("valid");
        assert_eq!(c.grpc_inference_address, SocketAddr::from(([0, 0, 0, 0], 9070)));
        assert_eq!(c.grpc_management_address.port(), 0);
        assert!(c.grpc_management_address.ip().is_loopback());
        for (text, key) in [
            (
                "grpc_inference_port=70000
",
                "grpc_inference_port",
            ),
            (
                "grpc_management_port=x
",
                "grpc_management_port",
            ),
            (
                "grpc_inference_address=no such host.invalid
",
                "grpc_inference_address",
            ),
            (
                "enable_grpc_ssl=yes
",
                "enable_grpc_ssl",
            ),
        ] {
            let e = parse(text).expect_err(text).to_string();
            assert!(e.contains(key), "{text}: {e}");
        }
    }

    #[test]
    fn every_key_is_read() {
        let c = parse(
            "inference_address=http://127.0.0.1:1\nmanagement_address=http://127.0.0.1:2\n\
             metrics_address=http://127.0.0.1:3\nmodel_store=/s\nload_models=all\njob_queue_size=3\n\
             default_workers_per_model=4\nintra_op_threads=5\ndefault_response_timeout=6\nmax_request_size=7\n\
             max_response_size=8\nbatch_size=9\nmax_batch_delay=10\nnumber_of_netty_threads=11\n\
             enable_envvars_config=true\nmetrics_latency_buckets_ms=1,2\nts_metric_names=false\n\
             max_inflight_requests=12\nmax_connections=13\nrequest_read_timeout=14\nshutdown_grace_period=15\n\
             disable_token_authorization=true\ninference_token_authorization=true\nkey_file=/k.json\n\
             enable_model_api=true\nallowed_urls=a.*,b\ntoken_expiration_min=0.5\n",
        )
        .expect("valid");
        let addr = |port| SocketAddr::from(([127, 0, 0, 1], port));
        assert_eq!((c.inference_address, c.management_address, c.metrics_address), (addr(1), addr(2), addr(3)));
        assert_eq!((c.model_store, c.load_models.clone()), (PathBuf::from("/s"), LoadModels::All));
        assert_eq!((c.job_queue_size, c.default_workers_per_model, c.intra_op_threads), (3, 4, Some(5)));
        assert_eq!(
            (c.default_response_timeout, c.max_request_size, c.max_response_size),
            (Duration::from_secs(6), 7, 8)
        );
        assert_eq!((c.batch_size, c.max_batch_delay, c.io_threads), (9, Duration::from_millis(10), 11));
        assert!(c.enable_envvars_config && !c.ts_metric_names);
        assert_eq!(c.latency_buckets, vec![0.001, 0.002]);
        assert_eq!((c.max_inflight_requests, c.max_connections), (12, 13));
        assert_eq!(
            (c.request_read_timeout, c.shutdown_grace_period),
            (Duration::from_secs(14), Duration::from_secs(15))
        );
        assert!(c.disable_token_authorization && c.inference_token_authorization && c.enable_model_api);
        assert_eq!((c.key_file, c.allowed_urls), (PathBuf::from("/k.json"), vec!["a.*".to_string(), "b".to_string()]));
        assert_eq!(c.token_expiration, Duration::from_secs(30));
        let err = parse("allowed_urls=(unclosed\n").expect_err("bad regex");
        assert!(err.to_string().contains("`allowed_urls`"), "{err}");
        for bad in ["0", "-1", "soon", "inf", "5256001", "1e300"] {
            assert!(parse(&format!("token_expiration_min={bad}\n")).is_err(), "{bad}");
        }
    }

    #[test]
    fn reads_the_tls_and_cors_keys() {
        let c = parse(
            "inference_address=https://127.0.0.1:1\nmanagement_address=http://127.0.0.1:2\n\
             metrics_address=https://127.0.0.1:3/\nenable_grpc_ssl=true\nprivate_key_file=/k.pem\n\
             certificate_file=/c.pem\ncors_allowed_origin=*\ncors_allowed_methods=GET, POST\n",
        )
        .expect("valid");
        assert_eq!(c.tls.https, [true, false, true]);
        assert!(c.tls.grpc && c.tls.enabled() && c.tls.keystore.is_none());
        assert_eq!(c.inference_address, SocketAddr::from(([127, 0, 0, 1], 1)));
        assert_eq!(
            (c.tls.private_key_file, c.tls.certificate_file),
            (Some(PathBuf::from("/k.pem")), Some(PathBuf::from("/c.pem")))
        );
        assert_eq!(c.cors.allowed_origin.as_ref().map(|v| v.to_str().ok()), Some(Some("*")));
        assert_eq!(c.cors.allowed_methods.as_ref().map(|v| v.to_str().ok()), Some(Some("GET, POST")));
        assert!(c.cors.allowed_headers.is_none());
        let defaults = Config::default();
        assert!(!defaults.tls.enabled() && !defaults.cors.enabled());
    }

    #[test]
    fn drift_keys_are_read_and_checked_together() {
        let c = parse(
            "drift_detection=false\ndrift_window_size=500\ndrift_window_seconds=60\ndrift_min_window_size=50\n\
             drift_reference_size=2000\ndrift_queue_size=64\n\
             models={\"m\": {\"1.0\": {\"driftProfile\": \"m.drift.json\"}}}\n",
        )
        .expect("valid");
        let d = &c.drift;
        assert!(!d.enabled);
        assert_eq!((d.window_size, d.window_age, d.min_window_size), (500, Duration::from_secs(60), 50));
        assert_eq!((d.reference_size, d.queue_size), (2000, 64));
        assert_eq!(c.model_config("m", "1.0").and_then(|m| m.drift_profile.as_deref()), Some("m.drift.json"));
        // The minimum may come before the size it must not exceed.
        assert!(parse("drift_min_window_size=2000\ndrift_window_size=5000\n").is_ok());
        let e = parse("drift_min_window_size=2000\n").expect_err("above the window").to_string();
        assert!(e.contains("`drift_min_window_size`") && e.contains("above drift_window_size"), "{e}");
        let e = parse("drift_window_size=100001\n").expect_err("too large").to_string();
        assert!(e.contains("`drift_window_size`"), "{e}");
        assert!(parse("drift_reference_size=0\n").is_err());
    }

    #[test]
    fn environment_wins_only_when_enabled() {
        let vars = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
            pairs.iter().map(|(k, v)| ((*k).to_string(), (*v).to_string())).collect()
        };
        let mut c = parse("job_queue_size=5\n").expect("config");
        c.apply_env(vars(&[("TS_JOB_QUEUE_SIZE", "9"), ("PATH", "/bin")])).expect("env");
        assert_eq!(c.job_queue_size, 5, "ignored unless enable_envvars_config");
        c.apply_env(vars(&[("TS_JOB_QUEUE_SIZE", "9"), ("TS_ENABLE_ENVVARS_CONFIG", "true")])).expect("env");
        assert_eq!(c.job_queue_size, 9);
        let mut c = parse("enable_envvars_config=true\n").expect("config");
        c.apply_env(vars(&[("TS_INFERENCE_ADDRESS", "http://127.0.0.1:7070")])).expect("env");
        assert_eq!(c.inference_address, SocketAddr::from(([127, 0, 0, 1], 7070)));
        let err = c.apply_env(vars(&[("TS_BATCH_SIZE", "zero")])).expect_err("bad value");
        assert!(err.to_string().contains("TS_BATCH_SIZE"), "{err}");
    }

    #[test]
    fn bad_control_plane_values_are_refused() {
        for (text, key) in [
            ("metrics_latency_buckets_ms=5,1\n", "metrics_latency_buckets_ms"),
            ("enable_envvars_config=yes\n", "enable_envvars_config"),
            ("models={\"m\": {\"1.0\": {\"deviceType\": \"tpu\"}}}\n", "models"),
            ("models={\"m\": {\"1.0\": {\"deviceType\": \"cpu\", \"deviceIds\": [0]}}}\n", "models"),
            ("models={\"m\": {\"1.0\": {\"minWorkers\": 4, \"maxWorkers\": 2}}}\n", "models"),
        ] {
            let msg = parse(text).expect_err(text).to_string();
            assert!(msg.contains(&format!("`{key}`")), "{text:?} -> {msg}");
        }
    }

    #[test]
    fn gpu_models_parse_and_their_device_is_checked_at_load() {
        let c =
            parse("models={\"m\": {\"1.0\": {\"deviceType\": \"gpu\", \"deviceIds\": [1, 0]}}}\n").expect("gpu keys");
        let m = c.model_config("m", "1.0").expect("model entry");
        assert_eq!((m.device_type.as_deref(), m.device_ids.as_deref()), (Some("gpu"), Some(&[1, 0][..])));
    }

    #[test]
    fn model_names_come_from_file_names() {
        assert_eq!(model_name_of("signnet.onnx"), "signnet");
        assert_eq!(model_name_of("dir/model.tar.gz"), "model");
        assert_eq!(model_name_of("signnet"), "signnet");
    }
}
