//! Live changes to a running model: scaling workers up and down under load loses no accepted request, and
//! scaling to zero keeps one worker. (A batch policy changed while a worker waits is tested on virtual time in
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
fn scaling_to_zero_keeps_one_worker() {
    let fake = echo();
    let model = start(&fake, options(2, policy(1, Duration::ZERO)));
    model.scale(0).expect("scale");
    wait_live(&model, 1);
    let (id, rx) = submit_all(&model, 7..8).pop().expect("one request");
    assert_eq!(output(rx).output, echoed(id));
}
