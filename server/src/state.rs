//! What every handler shares: the models, the configuration they were loaded with, and the metrics.

use std::sync::Arc;

use ferroserve_engine::Registry;

use crate::{config::Config, metrics::ServerMetrics};

/// The server's shared state.
pub struct AppState {
    /// The loaded models.
    pub registry: Arc<Registry>,
    /// The configuration in force (model store, defaults for models registered later, limits).
    pub config: Config,
    /// Prometheus metrics of the engine and the server.
    pub metrics: Arc<ServerMetrics>,
}

impl AppState {
    /// A state over `registry`; the models in it should record into `metrics.engine`.
    #[must_use]
    pub fn new(registry: Arc<Registry>, config: Config, metrics: Arc<ServerMetrics>) -> Self {
        Self { registry, config, metrics }
    }
}
