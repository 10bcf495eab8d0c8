//! The HTTP front end of ferroserve: TorchServe's `config.properties`, its inference API and error bodies, over
//! hyper 1, on three listeners (inference, management, metrics) as TorchServe has. It knows nothing of tensors beyond parsing requests into model inputs and printing outputs; the
//! queue, batching and models live in `ferroserve-engine`.

pub mod app;
pub mod auth;
pub mod config;
pub mod error;
pub mod http;
pub mod inference;
mod json;
pub mod kserve;
pub mod landmarks;
pub mod management;
pub mod metrics;
pub mod model_responses;
pub mod slo;
pub mod slo_config;
pub mod state;

pub use config::Config;
pub use http::{run, serve, Api};
pub use state::AppState;
