//! Admission and skipping, on the echo fake with its worker held at a closed gate: a full queue refuses at once
//! and recovers, requests whose caller has gone never reach the backend, requests past their deadline are answered
//! with a timeout, inputs of the wrong size are refused before they are queued, and a closed model refuses new
//! requests but answers those it had accepted.

mod support;

use std::time::Duration;

use ferroserve_engine::{EngineError, ModelOptions};
use support::{
    assert_own_row, assert_own_rows, error, gated_echo, hold_workers, input, options, output, policy, start, submit,
    submit_all, INPUT_LEN,
};

/// Batches of one without delay: what the held-worker tests start with (see `hold_workers`).
fn one_by_one() -> ModelOptions {
    options(1, policy(1, Duration::ZERO))
}

#[test]
fn a_full_queue_refuses_at_once_and_recovers_once_the_worker_is_free() {
    const QUEUE: u16 = 5;
    let fake = gated_echo();
    let model = start(&fake, ModelOptions { queue_size: usize::from(QUEUE), ..one_by_one() });
    let held = hold_workers(&model, &fake, 0);
    let queued = submit_all(&model, 1..1 + QUEUE);
    assert_eq!(model.queue_len(), usize::from(QUEUE));

    match model.submit(input(99)) {
        Err(EngineError::QueueFull { model, capacity }) => {
            assert_eq!((model.as_str(), capacity), ("fake", usize::from(QUEUE)));
        }
        other => panic!("expected QueueFull, got {other:?}"),
    }
    let stats = model.stats();
    assert_eq!((stats.accepted, stats.rejected_queue_full), (1 + u64::from(QUEUE), 1));

    fake.gate.open();
    assert_own_rows(held);
    assert_own_rows(queued);
    assert_own_rows(submit_all(&model, 100..100 + QUEUE));
}

#[test]
fn requests_whose_caller_has_gone_are_skipped_and_counted() {
    let fake = gated_echo();
    let model = start(&fake, one_by_one());
    let held = hold_workers(&model, &fake, 0);
    model.set_policy(policy(8, Duration::ZERO));
    for (_, rx) in submit_all(&model, 1..5) {
        drop(rx);
    }
    let last = submit(&model, 5);
    fake.gate.open();
    assert_own_rows(held);
    assert_own_row(5, &output(last));
    assert_eq!(fake.batch_sizes(), vec![1, 1], "only the held request and the last one reached the backend");
    let stats = model.stats();
    assert_eq!((stats.caller_gone, stats.batched), (4, 2));
}

#[test]
fn requests_past_their_deadline_are_answered_with_a_timeout() {
    // A zero timeout puts every deadline in the past by the time a worker looks, whatever the scheduling: a
    // positive one would make the test depend on how fast a thread wakes.
    let fake = gated_echo();
    fake.gate.open();
    let model =
        start(&fake, ModelOptions { response_timeout: Duration::ZERO, ..options(1, policy(8, Duration::ZERO)) });
    for (id, rx) in submit_all(&model, 0..5) {
        match error(rx) {
            EngineError::Timeout { .. } => {}
            other => panic!("request {id}: expected a timeout, got {other:?}"),
        }
    }
    assert!(fake.batch_sizes().is_empty(), "nothing reached the backend");
    let stats = model.stats();
    assert_eq!((stats.expired, stats.batches), (5, 0));
}

#[test]
fn an_input_of_the_wrong_size_is_refused_before_it_is_queued() {
    let fake = gated_echo();
    let model = start(&fake, one_by_one());
    for len in [0, INPUT_LEN - 1, INPUT_LEN + 1, 1000] {
        match model.submit(vec![0.5; len]) {
            Err(EngineError::InvalidInput(msg)) => {
                assert!(msg.contains(&len.to_string()), "{msg}");
            }
            other => panic!("{len} values: expected InvalidInput, got {other:?}"),
        }
    }
    assert_eq!(model.stats().accepted, 0);
    assert_eq!(model.queue_len(), 0);
}

#[test]
fn a_closed_model_refuses_new_requests_and_answers_those_it_accepted() {
    let fake = gated_echo();
    let model = start(&fake, one_by_one());
    let held = hold_workers(&model, &fake, 0);
    let queued = submit_all(&model, 1..4);
    model.close();
    match model.submit(input(9)) {
        Err(EngineError::ShuttingDown(name)) => assert_eq!(name, "fake"),
        other => panic!("expected ShuttingDown, got {other:?}"),
    }
    fake.gate.open();
    model.shutdown();
    assert_own_rows(held);
    assert_own_rows(queued);
}
