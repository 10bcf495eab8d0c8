//! Live changes to a running model: scaling workers up and down under load loses no accepted request, a caller
//! can wait for the surplus workers to stop, and a model scaled to zero refuses requests until it is scaled up. (A batch policy changed while a worker waits is tested on virtual time in
//! `batcher.rs`.)

mod support;

use std::time::Duration;

use support::{echo, echoed, options, output, policy, start, submit_all};

/// Waits (bounded) until the model runs `want` workers; retirement happens between batches.
fn wait_live(model: &ferroserve_engine::Model, want: usize) {
    for _ in 0..2_000 {
        if model.workers().1 == want {
            return;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    panic!("the model runs {:?} workers, expected {want}", model.workers());
}

#[test]
fn scaling_up_and_down_under_load_answers_every_request() {
    let fake = echo();
    let model = start(&fake, options(1, policy(4, Duration::from_micros(200))));
    assert_eq!(model.workers(), (1, 1));
    let mut pending = submit_all(&model, 0..300);
    model.scale(3).expect("scale up");
    assert_eq!(model.workers(), (3, 3));
    pending.extend(submit_all(&model, 300..600));
    model.scale(1).expect("scale down");
    pending.extend(submit_all(&model, 600..900));
    for (id, rx) in pending {
        assert_eq!(output(rx).output, echoed(id), "request {id}");
    }
    wait_live(&model, 1);
    assert_eq!(fake.batch_sizes().iter().sum::<usize>(), 900, "every request ran exactly once");
}

#[test]
fn a_model_scaled_to_zero_refuses_at_once_and_serves_again_when_scaled_up() {
    let fake = echo();
    let model = start(&fake, options(2, policy(1, Duration::ZERO)));
    model.scale(0).expect("scale");
    assert!(model.wait_for_workers(Duration::from_secs(60)), "both workers stop");
    assert_eq!(model.workers(), (0, 0));
    match model.submit(vec![0.0; support::INPUT_LEN]) {
        Err(ferroserve_engine::EngineError::NoWorkers(name)) => assert_eq!(name, "fake"),
        other => panic!("expected NoWorkers, got {other:?}"),
    }
    model.scale(1).expect("scale up");
    assert_eq!(model.workers(), (1, 1));
    let (id, rx) = submit_all(&model, 7..8).pop().expect("one request");
    assert_eq!(output(rx).output, echoed(id));
}

#[test]
fn waiting_for_workers_returns_once_the_surplus_ones_have_stopped() {
    let fake = echo();
    let model = start(&fake, options(3, policy(1, Duration::ZERO)));
    model.scale(1).expect("scale down");
    assert!(model.wait_for_workers(Duration::from_secs(60)), "the two surplus workers stop");
    assert_eq!((model.workers(), model.worker_ids()), ((1, 1), vec![0]));
    // Held by a batch in progress, a surplus worker cannot stop: the wait gives up at its timeout.
    model.scale(2).expect("scale up");
    fake.gate.close();
    let pending = submit_all(&model, 0..2);
    fake.gate.wait_arrived(2);
    model.scale(1).expect("scale down");
    assert!(!model.wait_for_workers(Duration::from_millis(100)), "worker 1 is still in its batch");
    fake.gate.open();
    assert!(model.wait_for_workers(Duration::from_secs(60)));
    for (id, rx) in pending {
        assert_eq!(output(rx).output, echoed(id));
    }
}

#[test]
fn scaling_to_zero_answers_what_was_accepted_and_refuses_what_comes_after() {
    let fake = echo();
    fake.gate.close();
    let model = start(&fake, options(1, policy(1, Duration::ZERO)));
    let mut pending = submit_all(&model, 0..1);
    fake.gate.wait_arrived(1);
    // Three more wait in the queue behind the batch the worker is held in.
    pending.extend(submit_all(&model, 1..4));
    model.scale(0).expect("scale to zero");
    match model.submit(vec![0.0; support::INPUT_LEN]) {
        Err(ferroserve_engine::EngineError::NoWorkers(_)) => {}
        other => panic!("a request after the scale to zero is refused at once, got {other:?}"),
    }
    fake.gate.open();
    for (id, rx) in pending {
        assert_eq!(output(rx).output, echoed(id), "request {id}, accepted before the scale to zero");
    }
    assert!(model.wait_for_workers(Duration::from_secs(60)), "the last worker leaves once the queue is empty");
    assert_eq!(model.workers(), (0, 0));
}
