//! Drift detection in the server: each answered request's features (see [`features`]) and top-1 prediction are
//! handed, without blocking, to one monitor thread ([`monitor`]), which compares windows of live traffic with
//! each model's reference profile ([`profile`]) by PSI, Jensen-Shannon, Kolmogorov-Smirnov and chi-squared
//! ([`stats`], [`window`]) and exports the verdicts to Prometheus ([`metrics`]) and the describe API.
//!
//! The request path computes a few numbers (microseconds), looks its model's tap up under a read lock (as the
//! model registry does) and offers one row to a bounded channel: a full channel drops the row and counts it,
//! it never waits. Memory is bounded by `drift_queue_size` rows in flight and, per model, one window and one
//! reference of at most [`crate::drift_config::MAX_WINDOW`] requests.

pub mod features;
pub mod metrics;
mod monitor;
pub mod profile;
pub mod stats;
pub mod window;

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::SystemTime,
};

use crossbeam_channel::{Sender, TrySendError};
use ferroserve_engine::Model;
use parking_lot::{Mutex, RwLock};
use serde::Serialize;

use crate::config::Config;
use features::{FeatureSet, Features};
use metrics::DriftMetrics;
use window::Report;

/// What the monitor learns from one answered request.
#[derive(Debug, Clone, PartialEq)]
pub struct Observation {
    /// The input's features, in the order of the model's feature names.
    pub features: Features,
    /// The top-1 predicted class index.
    pub class: usize,
    /// Its score (the top-1 probability of a classifier).
    pub confidence: f32,
}

/// Most classes told apart: a larger class index counts as class `MAX_CLASSES`, labelled `other`, so that a
/// model with a huge output bounds the monitor's memory and the number of `ferroserve_predictions_total` series.
pub const MAX_CLASSES: usize = 1024;

impl Observation {
    /// The observation of a request with `features` whose model answered `output`: its top-1 class (at most
    /// [`MAX_CLASSES`]) and score; `None` for an empty output.
    #[must_use]
    pub fn of(features: Features, output: &[f32]) -> Option<Self> {
        let (class, confidence) = features::top1(output)?;
        Some(Self { features, class: class.min(MAX_CLASSES), confidence })
    }
}

/// One model version as the monitor knows it; shared by the request path (which hands rows over) and the
/// monitor's thread (which writes its status).
pub struct Tap {
    name: String,
    version: String,
    set: FeatureSet,
    names: Vec<String>,
    labels: Vec<String>,
    profile: ProfileFile,
    alive: AtomicBool,
    status: Mutex<Status>,
}

/// Where a model's reference profile is read from.
#[derive(Debug, Clone)]
struct ProfileFile {
    path: PathBuf,
    /// Named in the configuration (a missing file is an error), rather than the default name (a missing file
    /// means: take the first requests).
    named: bool,
}

impl Tap {
    /// The label of class `class`: its name from the model's labels, else its index.
    fn label(&self, class: usize) -> String {
        if class >= MAX_CLASSES {
            return "other".into();
        }
        self.labels.get(class).map_or_else(|| class.to_string(), Clone::clone)
    }
}

/// The drift state of a model version, as the describe API shows it.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    /// Where the reference comes from (a file, or the first requests).
    pub reference: String,
    /// Requests in the reference so far.
    pub reference_samples: u64,
    /// Requests the reference is complete at.
    pub reference_size: u64,
    /// Why the configured profile could not be used, when it could not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Requests in the window being filled.
    pub window_samples: usize,
    /// The last closed window's comparison, and when it closed (RFC 3339).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_window: Option<LastWindow>,
}

/// The last closed window's verdict.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LastWindow {
    /// When it closed.
    pub closed_at: String,
    /// The comparison.
    #[serde(flatten)]
    pub report: Report,
}

impl LastWindow {
    fn now(report: Report) -> Self {
        Self { closed_at: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(), report }
    }
}

/// A row on its way to the monitor.
struct Row {
    tap: Arc<Tap>,
    observation: Observation,
}

/// A request's features, computed before its inference, waiting for its prediction.
pub struct Pending {
    tap: Arc<Tap>,
    features: Features,
}

/// The server's drift monitor: the taps of the models seen so far and the channel to the monitor's thread.
pub struct Drift {
    taps: RwLock<HashMap<String, HashMap<String, Arc<Tap>>>>,
    /// `None` when drift detection is off.
    rows: Option<Sender<Row>>,
    metrics: DriftMetrics,
    config: Config,
}

impl Drift {
    /// Starts the monitor's thread (when `drift_detection` is on); it ends when the `Drift` is dropped. A thread
    /// that cannot start leaves drift detection off, with an error in the log.
    #[must_use]
    pub fn start(config: &Config, metrics: DriftMetrics) -> Self {
        let rows =
            config.drift.enabled.then(|| crossbeam_channel::bounded(config.drift.queue_size)).and_then(|(tx, rx)| {
                match monitor::spawn(rx, &config.drift, metrics.clone()) {
                    Ok(()) => Some(tx),
                    Err(error) => {
                        tracing::error!(%error, "cannot start the drift monitor; drift detection is off");
                        None
                    }
                }
            });
        Self { taps: RwLock::default(), rows, metrics, config: config.clone() }
    }

    /// The features of one sample `input` of per-sample `shape` to `model`, to hand over with its prediction
    /// ([`Self::observe`]); `None` when drift detection is off, or when the model's first sample had features of
    /// another kind (a model with open shapes is watched for the kind of its first request).
    #[must_use]
    pub fn features(&self, model: &Model, input: &[f32], shape: &[usize]) -> Option<Pending> {
        self.rows.as_ref()?;
        let set = FeatureSet::for_shape(shape);
        let tap = self.tap(model, &set);
        (tap.set == set).then(|| Pending { features: set.compute(input, shape), tap })
    }

    /// Hands a request's features and its model's `output` row to the monitor, without waiting: when the
    /// monitor's queue is full the row is dropped and counted in `ferroserve_drift_rows_dropped_total`.
    pub fn observe(&self, pending: Pending, output: &[f32]) {
        let Some(rows) = &self.rows else { return };
        let Some(observation) = Observation::of(pending.features, output) else { return };
        let row = Row { tap: pending.tap, observation };
        if let Err(TrySendError::Full(_)) = rows.try_send(row) {
            self.metrics.dropped.inc();
        }
    }

    /// The drift state of a model version, once it has had a request.
    #[must_use]
    pub fn status(&self, name: &str, version: &str) -> Option<Status> {
        let taps = self.taps.read();
        taps.get(name)?.get(version).map(|tap| tap.status.lock().clone())
    }

    /// Stops watching a model version (it was unregistered); the monitor drops its state and series.
    pub fn forget(&self, name: &str, version: &str) {
        let mut taps = self.taps.write();
        if let Some(tap) = taps.get_mut(name).and_then(|versions| versions.remove(version)) {
            tap.alive.store(false, Ordering::Release);
        }
    }

    /// The tap of `model`, made at its first request.
    fn tap(&self, model: &Model, set: &FeatureSet) -> Arc<Tap> {
        let (name, version) = (model.name(), model.version());
        if let Some(tap) = self.taps.read().get(name).and_then(|v| v.get(version)) {
            return Arc::clone(tap);
        }
        let mut taps = self.taps.write();
        let versions = taps.entry(name.to_string()).or_default();
        let tap = versions.entry(version.to_string()).or_insert_with(|| Arc::new(self.new_tap(model, set)));
        Arc::clone(tap)
    }

    fn new_tap(&self, model: &Model, set: &FeatureSet) -> Tap {
        let (name, version) = (model.name(), model.version());
        let configured = self.config.model_config(name, version).and_then(|m| m.drift_profile.as_deref());
        let store = &self.config.model_store;
        let profile = match configured {
            Some(file) => ProfileFile { path: store.join(file), named: true },
            None => ProfileFile { path: store.join(format!("{name}.drift.json")), named: false },
        };
        Tap {
            name: name.to_string(),
            version: version.to_string(),
            set: set.clone(),
            names: set.names(),
            labels: model.labels().map(<[String]>::to_vec).unwrap_or_default(),
            profile,
            alive: AtomicBool::new(true),
            status: Mutex::new(Status::default()),
        }
    }
}
