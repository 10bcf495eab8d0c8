//! The engine of ferroserve: everything between a validated request and a model's output, with no HTTP in it.
//!
//! A request ([`request::InferRequest`]) enters a model's bounded lock-free queue ([`queue::JobQueue`]); the
//! model's worker threads ([`scheduler`]) form batches by the policy of [`batcher`] and run them on a synchronous
//! [`backend::Backend`] (ONNX Runtime, TorchScript through libtorch, or the always-compiled fake used by tests) on
//! the device [`device`] selects; every request gets exactly its own row of the output back through its reply
//! channel. [`registry::Registry`] maps model names and versions to the running [`model::Model`]s, and splits a
//! model's traffic between its default and canary versions by [`canary`].

pub mod adaptive;
pub mod archive;
pub mod backend;
pub mod batcher;
pub mod canary;
pub mod cost;
pub mod cuda;
pub mod device;
pub mod error;
pub mod metrics;
pub mod model;
pub mod queue;
pub mod registry;
pub mod request;
pub mod scheduler;
pub mod store;

pub use backend::{Backend, BackendError, BackendFactory, Device, ModelSpec};
pub use batcher::BatchPolicy;
pub use error::EngineError;
pub use model::{Model, ModelOptions};
pub use registry::Registry;
pub use request::{InferOutput, Timing};
