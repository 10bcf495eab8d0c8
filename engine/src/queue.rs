//! A model's job queue: a bounded crossbeam channel. Pushing never blocks; a full queue refuses at once.

use std::time::Instant;

use crossbeam_channel::{Receiver, Sender, TrySendError};

use crate::{
    batcher::{Pending, Skip},
    request::InferRequest,
};

/// Why a push was refused; the request is handed back (boxed: the error stays small on the hot path).
#[derive(Debug)]
pub enum PushError {
    /// The queue holds `job_queue_size` requests already.
    Full(Box<InferRequest>),
    /// The workers are gone (the model is shutting down).
    Closed(Box<InferRequest>),
}

/// Makes a queue of `capacity` requests (at least 1): the sending half and the workers' receiving half.
#[must_use]
pub fn bounded(capacity: usize) -> (Sender<InferRequest>, Receiver<InferRequest>) {
    crossbeam_channel::bounded(capacity.max(1))
}

/// Pushes without blocking.
///
/// # Errors
/// [`PushError::Full`] or [`PushError::Closed`], with the request.
pub fn push(tx: &Sender<InferRequest>, request: InferRequest) -> Result<(), PushError> {
    tx.try_send(request).map_err(|e| match e {
        TrySendError::Full(r) => PushError::Full(Box::new(r)),
        TrySendError::Disconnected(r) => PushError::Closed(Box::new(r)),
    })
}

impl Pending for InferRequest {
    fn arrived(&self) -> Instant {
        self.arrived
    }

    fn skip(&self, now: Instant) -> Option<Skip> {
        if self.reply.is_closed() {
            Some(Skip::CallerGone)
        } else if now >= self.deadline {
            Some(Skip::Expired)
        } else {
            None
        }
    }

    /// Requests of a model that fixes its shape carry none and always batch together.
    fn batches_with(&self, first: &Self) -> bool {
        self.shape == first.shape
    }

    fn deadline(&self) -> Option<Instant> {
        Some(self.deadline)
    }
}
