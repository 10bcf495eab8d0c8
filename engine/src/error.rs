//! Errors a request can meet inside the engine. They are `Clone` because one backend failure answers every
//! request of its batch.

use crate::backend::BackendError;

/// Why the engine could not answer a request.
#[derive(Debug, Clone, thiserror::Error)]
pub enum EngineError {
    /// The model's job queue is full: the request was refused at once, never queued.
    #[error("model \"{model}\" is overloaded: its job queue of {capacity} requests is full, retry later")]
    QueueFull {
        /// Model name.
        model: String,
        /// The queue's capacity (`job_queue_size`).
        capacity: usize,
    },
    /// The adaptive batcher refused the request at admission: the queue is so long that it would be answered
    /// past the model's latency objective (even in full batches), or past its own deadline.
    #[error(
        "model \"{model}\" is overloaded: a request queued now would be answered in about {predicted_ms} ms, past \
         {limit}, retry later"
    )]
    Shed {
        /// Model name.
        model: String,
        /// Why ([`crate::adaptive::Shed`]).
        cause: crate::adaptive::Shed,
        /// The predicted time to its answer, in milliseconds.
        predicted_ms: u64,
        /// What it would miss, in words ("its latency objective of 25 ms").
        limit: String,
    },
    /// The input does not fit the model.
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// The request waited in the queue past its deadline (`default_response_timeout`).
    #[error("the request waited {waited_ms} ms in the queue, past its deadline")]
    Timeout {
        /// How long it waited before it was dropped.
        waited_ms: u64,
    },
    /// The model has no worker to run the request: it was scaled to zero, or every worker died and none could be
    /// restarted.
    #[error("model \"{0}\" has no worker running (scaled to zero, or its workers failed: see the server's log)")]
    NoWorkers(String),
    /// The model is being unloaded or the server is shutting down.
    #[error("model \"{0}\" is shutting down")]
    ShuttingDown(String),
    /// The backend failed on the batch that held this request.
    #[error(transparent)]
    Backend(#[from] BackendError),
}
