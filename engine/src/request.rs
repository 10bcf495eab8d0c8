//! One inference request as it travels through the engine, carrying its own reply channel and tracing span.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use tokio::sync::oneshot;

pub use crate::backend::handler::{HandlerInput, HandlerOutput, Part};
use crate::{backend::Device, error::EngineError};

/// The result a request's caller receives.
pub type InferResult = Result<InferOutput, EngineError>;

/// A sample's shape as it travels with a request or its answer: `None` when it is the model's fixed shape.
pub type SampleShape = Option<Arc<[usize]>>;

/// One request: one sample's input, where to send the answer, its clock and its span.
#[derive(Debug)]
pub struct InferRequest {
    /// One sample, flattened row-major in the model's per-sample input shape.
    pub input: Vec<f32>,
    /// The sample's shape when the model leaves its input shape to the requests; `None` when the model fixes it.
    /// A batch holds samples of one shape only ([`crate::batcher`]).
    pub shape: SampleShape,
    /// Where the worker sends the answer; a closed channel means the caller has gone.
    pub reply: oneshot::Sender<InferResult>,
    /// When it entered the queue (monotonic).
    pub arrived: Instant,
    /// When the caller stops waiting for it; a request still queued past this is answered with a timeout.
    pub deadline: Instant,
    /// The request as a Python handler takes it, for a model served by a TorchServe handler
    /// ([`crate::backend::python`]); `None` for a tensor request (whose sample is `input`).
    pub handler: Option<Box<HandlerInput>>,
    /// Its span (`queued`, DEBUG): a child of the span current where it was submitted, so the caller's own
    /// request span reaches the worker. The worker links it to its batch's span (`follows_from`) and records the
    /// queue time, inference time and batch size into it. Disabled, and free, unless DEBUG spans are on.
    pub span: tracing::Span,
}

/// The answer to one request: its own row of the model output and where its time went.
#[derive(Debug, Clone)]
pub struct InferOutput {
    /// One sample's output, flattened row-major in the model's per-sample output shape.
    pub output: Vec<f32>,
    /// The shape of `output` when the model's output shape is not fixed (the forward gave it); `None` when it is
    /// the model's fixed output shape.
    pub shape: SampleShape,
    /// The device that ran the batch.
    pub device: Device,
    /// Timings and batch size, for response headers and metrics.
    pub timing: Timing,
    /// What the Python handler answered, for a request that carried a [`HandlerInput`] (`output` is then empty).
    pub handler: Option<Box<HandlerOutput>>,
}

/// Where a request's time went inside the engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// From arrival to the moment its batch was dispatched to the backend.
    pub queue: Duration,
    /// How long the backend took for the whole batch.
    pub inference: Duration,
    /// How many requests shared the batch.
    pub batch_size: usize,
    /// The batch's number, unique in the process (counted from 1 across models), so that the requests that
    /// shared a batch can be told apart in logs and traces.
    pub batch_id: u64,
    /// The number of the model's worker that ran the batch.
    pub worker: usize,
}

/// `start + timeout`, or a century later when the sum overflows the clock (a `responseTimeout` of u64::MAX
/// seconds is a configuration, not a reason to panic).
#[must_use]
pub fn deadline(start: Instant, timeout: Duration) -> Instant {
    const CENTURY: Duration = Duration::from_secs(100 * 365 * 24 * 3600);
    start.checked_add(timeout).or_else(|| start.checked_add(CENTURY)).unwrap_or(start)
}
