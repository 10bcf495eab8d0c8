//! Batching under concurrency, on the echo fake: hundreds of distinct requests submitted at once from several
//! threads or async tasks, served by several workers, each get exactly their own row back (no cross-talk), every
//! request runs exactly once, and no batch is larger than `max_batch_size`. A backlog is served in full batches.

mod support;

use std::{sync::Arc, time::Duration};

use ferroserve_engine::{backend::FakeBackend, InferOutput, Model};
use support::{
    assert_own_row, assert_own_rows, echo, gated_echo, hold_workers, options, output, policy, start, submit, submit_all,
};

const MAX_BATCH: usize = 8;
const WORKERS: usize = 3;
const THREADS: u16 = 4;
const PER_THREAD: u16 = 150;
const TOTAL: u16 = THREADS * PER_THREAD;

/// An echo model with several workers and a short delay, so that batches of every size from 1 to the maximum form.
fn concurrent_model() -> (FakeBackend, Model) {
    let fake = echo();
    let model = start(&fake, options(WORKERS, policy(MAX_BATCH, Duration::from_millis(1))));
    (fake, model)
}

fn assert_answer(id: u16, out: &InferOutput) {
    assert_own_row(id, out);
    assert!(
        (1..=MAX_BATCH).contains(&out.timing.batch_size),
        "request {id} reports a batch of {}",
        out.timing.batch_size
    );
}

/// Once all `total` requests are answered: every one ran exactly once, in batches of at most `MAX_BATCH`.
fn assert_batches(fake: &FakeBackend, model: &Model, total: u16) {
    let sizes = fake.batch_sizes();
    assert!(sizes.iter().all(|n| (1..=MAX_BATCH).contains(n)), "batch sizes {sizes:?}");
    assert_eq!(sizes.iter().sum::<usize>(), usize::from(total));
    let stats = model.stats();
    assert_eq!(stats.accepted, u64::from(total));
    assert_eq!(stats.batched, u64::from(total));
    assert_eq!(stats.batches, sizes.len() as u64);
    assert_eq!(stats.failed_batches, 0);
}

#[test]
fn concurrent_requests_from_threads_each_get_their_own_row() {
    let (fake, model) = concurrent_model();
    std::thread::scope(|s| {
        for t in 0..THREADS {
            let model = &model;
            s.spawn(move || {
                // All of this thread's requests are in flight before it waits for the first answer.
                for (id, rx) in submit_all(model, t * PER_THREAD..(t + 1) * PER_THREAD) {
                    assert_answer(id, &output(rx));
                }
            });
        }
    });
    assert_batches(&fake, &model, TOTAL);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_requests_from_async_tasks_each_get_their_own_row() {
    let (fake, model) = concurrent_model();
    let model = Arc::new(model);
    let tasks: Vec<_> = (0..TOTAL)
        .map(|id| {
            let model = Arc::clone(&model);
            tokio::spawn(async move {
                let rx = submit(&model, id);
                (id, rx.await.expect("the engine answers").expect("success"))
            })
        })
        .collect();
    for task in tasks {
        let (id, out) = task.await.expect("the task does not panic");
        assert_answer(id, &out);
    }
    assert_batches(&fake, &model, TOTAL);
}

/// Requests that queued while the worker was busy, longer than `max_delay`, still go together: the delay bounds
/// how long a batch waits for requests yet to come, it must not leave the ones already queued behind (under load
/// the oldest request is always late, and batches of one would follow).
#[test]
fn a_backlog_is_served_in_full_batches() {
    let fake = gated_echo();
    let model = start(&fake, options(1, policy(1, Duration::ZERO)));
    let held = hold_workers(&model, &fake, 0);
    model.set_policy(policy(MAX_BATCH, Duration::ZERO));
    let backlog = u16::try_from(2 * MAX_BATCH).expect("small");
    let queued = submit_all(&model, 1..1 + backlog);
    fake.gate.open();
    assert_own_rows(held);
    for (id, rx) in queued {
        let out = output(rx);
        assert_own_row(id, &out);
        assert_eq!(out.timing.batch_size, MAX_BATCH);
    }
    assert_eq!(fake.batch_sizes(), vec![1, MAX_BATCH, MAX_BATCH]);
}
