//! Helpers shared by the engine's integration tests: an echo fake whose every request has an input of its own, a
//! model started on it, a worker held at the fake's gate, and blocking waits for answers.
//!
//! The fake echoes the first [`OUTPUT_LEN`] of the [`INPUT_LEN`] values of each row, so an answer that holds
//! anything but its own request's values is cross-talk between requests.
#![allow(dead_code, reason = "each test crate uses a part of these helpers")]

pub(crate) mod signnet;

use std::time::Duration;

use ferroserve_engine::{
    backend::{FakeBackend, FakeMode, Gate},
    request::InferResult,
    BatchPolicy, EngineError, InferOutput, Model, ModelOptions, ModelSpec,
};
use tokio::sync::oneshot;

/// Values in one request's input.
pub(crate) const INPUT_LEN: usize = 3;
/// Values in one request's output: fewer than the input, so that rows are cut at the right place.
pub(crate) const OUTPUT_LEN: usize = 2;
/// A delay or timeout no test reaches: a batch waiting this long would hang the test, not pass it.
pub(crate) const FOREVER: Duration = Duration::from_secs(600);

/// The shapes of the fake model.
pub(crate) fn spec() -> ModelSpec {
    ModelSpec {
        input_name: "x".into(),
        input_shape: vec![INPUT_LEN].into(),
        output_name: "y".into(),
        output_shape: vec![OUTPUT_LEN].into(),
    }
}

/// The input of request `id`, different from every other id's.
pub(crate) fn input(id: u16) -> Vec<f32> {
    let x = f32::from(id);
    vec![x, x + 0.5, -x]
}

/// What the echo fake answers to [`input`]`(id)`.
pub(crate) fn echoed(id: u16) -> Vec<f32> {
    input(id)[..OUTPUT_LEN].to_vec()
}

/// An echo fake with an open gate and an empty script.
pub(crate) fn echo() -> FakeBackend {
    FakeBackend::new(spec(), FakeMode::Echo)
}

/// An echo fake whose gate holds every batch until the test opens it.
pub(crate) fn gated_echo() -> FakeBackend {
    let mut fake = echo();
    fake.gate = Gate::closed();
    fake
}

/// A batch policy.
pub(crate) fn policy(max_batch_size: usize, max_delay: Duration) -> BatchPolicy {
    BatchPolicy { max_batch_size, max_delay }
}

/// Settings for a model named `fake` with `workers` workers, a queue too large to fill by accident and a
/// response timeout no test reaches; tests change fields with `..options(..)`.
pub(crate) fn options(workers: usize, policy: BatchPolicy) -> ModelOptions {
    ModelOptions {
        name: "fake".into(),
        version: "1.0".into(),
        workers,
        queue_size: 1024,
        policy,
        response_timeout: FOREVER,
    }
}

/// Starts a model on the fake (its backends share the fake's script, gate and batch log).
pub(crate) fn start(fake: &FakeBackend, options: ModelOptions) -> Model {
    Model::start(fake, options).expect("the fake backend always loads")
}

/// Submits [`input`]`(id)`, which must be accepted.
pub(crate) fn submit(model: &Model, id: u16) -> oneshot::Receiver<InferResult> {
    model.submit(input(id)).expect("the queue has room for this request")
}

/// Submits the inputs of `ids`, which must all be accepted, and keeps each id with its receiver.
pub(crate) fn submit_all(model: &Model, ids: std::ops::Range<u16>) -> Vec<(u16, oneshot::Receiver<InferResult>)> {
    ids.map(|id| (id, submit(model, id))).collect()
}

/// Holds every worker at the fake's closed gate with one request each (ids `first..`), so that whatever is
/// submitted next stays in the queue until the test opens the gate. Returns the held requests as [`submit_all`]
/// does.
///
/// The model must have been started with batches of one, so that each worker takes exactly one request; a test
/// sets the policy it wants once the workers are held ([`Model::set_policy`]).
pub(crate) fn hold_workers(
    model: &Model,
    fake: &FakeBackend,
    first: u16,
) -> Vec<(u16, oneshot::Receiver<InferResult>)> {
    assert_eq!(model.policy().max_batch_size, 1, "start a held model with batches of one");
    let workers = u16::try_from(model.options().workers).expect("a few workers");
    (0..workers)
        .map(|w| {
            let rx = submit(model, first + w);
            fake.gate.wait_arrived(usize::from(w) + 1);
            (first + w, rx)
        })
        .collect()
}

/// Blocks until the engine answers (never from inside an async runtime).
pub(crate) fn answer(rx: oneshot::Receiver<InferResult>) -> InferResult {
    rx.blocking_recv().expect("the engine answers every accepted request")
}

/// Blocks for the answer, which must be a success.
pub(crate) fn output(rx: oneshot::Receiver<InferResult>) -> InferOutput {
    answer(rx).expect("the request succeeds")
}

/// Blocks for the answer, which must be an error.
pub(crate) fn error(rx: oneshot::Receiver<InferResult>) -> EngineError {
    match answer(rx) {
        Ok(out) => panic!("expected an error, got {out:?}"),
        Err(e) => e,
    }
}

/// Checks that request `id` got its own row back.
pub(crate) fn assert_own_row(id: u16, out: &InferOutput) {
    assert_eq!(out.output, echoed(id), "request {id} got another row");
}

/// Blocks for every answer, each of which must be its own request's row.
pub(crate) fn assert_own_rows(pending: Vec<(u16, oneshot::Receiver<InferResult>)>) {
    for (id, rx) in pending {
        assert_own_row(id, &output(rx));
    }
}
