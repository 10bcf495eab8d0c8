//! Backend failures on the scripted fake: a failed batch answers each of its requests with the backend's error and
//! the next batch succeeds; a backend that panics does not take its worker down.

mod support;

use std::time::Duration;

use ferroserve_engine::{
    backend::{FakeBackend, FakeStep},
    BackendError, EngineError, Model,
};
use support::{answer, assert_own_rows, echo, options, policy, start, submit_all, FOREVER};

/// Requests per batch: the delay never ends, so every batch is exactly this size.
const BATCH: u16 = 4;

/// An echo model whose batches are always `BATCH` requests, following `step` on its first batch.
fn scripted(workers: usize, step: FakeStep) -> (FakeBackend, Model) {
    let fake = echo();
    fake.script.push(step);
    let model = start(&fake, options(workers, policy(usize::from(BATCH), FOREVER)));
    (fake, model)
}

/// Sends batch number `round` and checks that each of its requests gets its own row.
fn assert_round_succeeds(model: &Model, round: u16) {
    assert_own_rows(submit_all(model, round * BATCH..(round + 1) * BATCH));
}

/// Sends batch number `round` and checks that each of its requests fails with an inference error whose message
/// satisfies `check`.
fn assert_round_fails(model: &Model, round: u16, check: impl Fn(&str) -> bool) {
    for (id, rx) in submit_all(model, round * BATCH..(round + 1) * BATCH) {
        match answer(rx) {
            Err(EngineError::Backend(BackendError::Inference(msg))) if check(&msg) => {}
            other => panic!("request {id}: unexpected answer {other:?}"),
        }
    }
}

#[test]
fn a_failed_batch_fails_each_of_its_requests_and_the_next_batch_succeeds() {
    let (fake, model) = scripted(2, FakeStep::Fail("out of memory".into()));
    assert_round_fails(&model, 0, |msg| msg == "out of memory");
    assert_round_succeeds(&model, 1);
    assert_eq!(fake.batch_sizes(), vec![4, 4]);
    let stats = model.stats();
    assert_eq!((stats.batches, stats.failed_batches), (2, 1));
}

#[test]
fn a_panicking_backend_does_not_kill_its_worker() {
    // One worker: the batches after the panic can only be run by the worker that panicked.
    let (fake, model) = scripted(1, FakeStep::Panic("index out of bounds".into()));
    assert_round_fails(&model, 0, |msg| msg.contains("panicked") && msg.contains("index out of bounds"));
    assert_round_succeeds(&model, 1);
    assert_round_succeeds(&model, 2);
    assert_eq!(fake.batch_sizes(), vec![4, 4, 4]);
    assert_eq!(model.stats().failed_batches, 1);
}

#[test]
fn a_slow_batch_still_answers_its_own_rows() {
    let (fake, model) = scripted(1, FakeStep::Sleep(Duration::from_millis(1)));
    assert_round_succeeds(&model, 0);
    assert_eq!(fake.batch_sizes(), vec![4]);
}
