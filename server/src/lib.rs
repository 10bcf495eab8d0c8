//! The HTTP front end of ferroserve: TorchServe's `config.properties`, its inference API and error bodies, over
//! hyper 1. It knows nothing of tensors beyond parsing requests into model inputs and printing outputs; the
//! queue, batching and models live in `ferroserve-engine`.

pub mod app;
pub mod config;
pub mod error;
pub mod http;
pub mod landmarks;

pub use config::Config;
pub use http::{run, AppState};
