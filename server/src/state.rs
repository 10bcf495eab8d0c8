//! What every handler shares: the models, the configuration they were loaded with, the metrics and the drift
//! monitor.

use std::{
    collections::BTreeMap,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
};

use ferroserve_engine::Registry;
use parking_lot::RwLock;
use tokio::sync::Semaphore;

use crate::{
    auth::{Keys, Tokens},
    config::{Api, Config},
    drift::Drift,
    metrics::ServerMetrics,
    rollouts::{Rollouts, Scope},
};

/// The server's shared state.
pub struct AppState {
    /// The loaded models.
    pub registry: Arc<Registry>,
    /// The configuration in force (model store, defaults for models registered later, limits).
    pub config: Config,
    /// Prometheus metrics of the engine and the server.
    pub metrics: Arc<ServerMetrics>,
    /// The drift monitor: each answered request's features and prediction go to it.
    pub drift: Drift,
    /// Permits for inference requests in flight (`max_inflight_requests`).
    pub inflight: Arc<Semaphore>,
    /// Permits for open connections, per API (`max_connections`).
    pub connections: [Arc<Semaphore>; Api::ALL.len()],
    /// False once a shutdown has begun: health checks then report not ready.
    ready: AtomicBool,
    /// Models that failed to load, with the reason, until a later registration of the name succeeds.
    failed: RwLock<BTreeMap<String, String>>,
    /// The token keys, when token authorisation is on (the token API replaces them).
    pub keys: Option<Arc<Tokens>>,
    /// The canary rollouts: who splits traffic with whom, and their analysis.
    pub rollouts: Arc<Rollouts>,
    /// The access log and traces of the requests (off unless configured).
    pub observer: Arc<crate::observe::Observer>,
}

impl AppState {
    /// A state over `registry`; the models in it should record into `metrics.engine`. The canaries `config`
    /// states start here, over the models in `registry`.
    #[must_use]
    pub fn new(registry: Arc<Registry>, config: Config, metrics: Arc<ServerMetrics>) -> Self {
        let rollouts = Arc::new(Rollouts::new());
        rollouts.start_configured(&config, Scope { registry: &registry, metrics: &metrics });
        let inflight = Arc::new(Semaphore::new(config.max_inflight_requests));
        let connections = std::array::from_fn(|_| Arc::new(Semaphore::new(config.max_connections)));
        let drift = Drift::start(&config, metrics.drift.clone());
        Self {
            registry,
            config,
            metrics,
            drift,
            inflight,
            connections,
            ready: AtomicBool::new(true),
            failed: RwLock::default(),
            keys: None,
            rollouts,
            observer: Arc::default(),
        }
    }

    /// What the rollouts work on: the models and the metrics.
    #[must_use]
    pub fn scope(&self) -> Scope<'_> {
        Scope { registry: &self.registry, metrics: &self.metrics }
    }

    /// Whether the server takes traffic: not shutting down, and every model has a live worker, but those scaled
    /// to zero on purpose (TorchServe's `min_worker=0`).
    #[must_use]
    pub fn is_ready(&self) -> bool {
        let serving = |m: &Arc<ferroserve_engine::Model>| matches!(m.workers(), (0, _) | (_, 1..));
        self.ready.load(Ordering::Acquire) && self.registry.all().iter().all(serving)
    }

    /// Requires `keys` on the APIs they protect (see [`crate::auth`]).
    #[must_use]
    pub fn with_keys(mut self, keys: Option<Keys>) -> Self {
        self.keys = keys.map(|keys| Arc::new(Tokens::new(keys)));
        self
    }

    /// Logs and traces the requests with `observer`.
    #[must_use]
    pub fn with_observer(mut self, observer: crate::observe::Observer) -> Self {
        self.observer = Arc::new(observer);
        self
    }

    /// Records that model `name` failed to load (`None`: it loaded since).
    pub fn set_failure(&self, name: &str, error: Option<String>) {
        let mut failed = self.failed.write();
        match error {
            Some(e) => failed.insert(name.to_string(), e),
            None => failed.remove(name),
        };
    }

    /// Why model `name` failed to load, if it did.
    #[must_use]
    pub fn failure(&self, name: &str) -> Option<String> {
        self.failed.read().get(name).cloned()
    }

    /// Marks the server as shutting down.
    pub fn stop_ready(&self) {
        self.ready.store(false, Ordering::Release);
    }
}
