//! The adaptive batcher in a running model, on the echo fake: the cost fit learns from the batches the workers
//! run, and once it knows them, a queue too long for the objective (or for a request's own deadline) sheds new
//! requests at once, counted by cause, while those accepted are all answered. Timing-free: the fake's scripted
//! sleeps only set a floor under what the fit sees, and the queue is held at the fake's gate.

mod support;

use std::time::Duration;

use ferroserve_engine::{adaptive::Shed, backend::FakeStep, cost::MIN_SAMPLES, EngineError};
use support::{answer, assert_own_rows, echo, input, options, output, policy, start, submit, submit_all};

/// What each of the first batches sleeps: their fit then predicts at least this for a batch of one.
const BATCH_TIME: Duration = Duration::from_millis(2);

#[test]
fn a_queue_the_objective_cannot_absorb_sheds_by_cause_and_answers_what_it_accepted() {
    let fake = echo();
    for _ in 0..MIN_SAMPLES {
        fake.script.push(FakeStep::Sleep(BATCH_TIME));
    }
    let model = start(&fake, options(1, policy(1, Duration::ZERO)));
    // An objective far above a batch's time, so that how long the sleeps really take (a loaded machine) changes
    // nothing below.
    model.set_slo_target(Some(Duration::from_millis(100)));
    assert_eq!(model.slo_target(), Some(Duration::from_millis(100)));
    // Without a fit, nothing is shed and nothing waits: one request at a time, each answered.
    for id in 0..u16::try_from(MIN_SAMPLES).expect("small") {
        support::assert_own_row(id, &output(submit(&model, id)));
    }
    let (costs, rate) = model.estimates();
    assert_eq!(costs.len(), 1, "one device: {costs:?}");
    let cost = costs[0].1;
    assert_eq!(cost.samples, MIN_SAMPLES);
    assert!(cost.predict(1) >= BATCH_TIME, "{cost:?}");
    assert!(rate > 0.0);

    // The worker held at the gate; requests queue behind it until one would be answered past 100 ms.
    fake.gate.close();
    let held = submit(&model, 100);
    fake.gate.wait_arrived(1);
    let mut accepted = submit_all(&model, 200..201);
    // With one ahead, a request that may wait 1 ms is shed for its own deadline, not for the objective.
    let deadline = model.submit_within(input(300), Some(Duration::from_millis(1))).expect_err("shed for its deadline");
    assert!(matches!(deadline, EngineError::Shed { cause: Shed::Deadline, .. }), "{deadline}");
    let shed = loop {
        let id = 200 + u16::try_from(accepted.len()).expect("small");
        match model.submit(input(id)) {
            Ok(rx) => accepted.push((id, rx)),
            Err(e) => break e,
        }
        assert!(accepted.len() < 60, "60 queued requests of at least 2 ms each never shed for a 100 ms objective");
    };
    match &shed {
        EngineError::Shed { cause: Shed::Slo, predicted_ms, limit, .. } => {
            assert!(*predicted_ms > 100 && limit.contains("100 ms"), "{shed}");
        }
        other => panic!("expected a shed for the objective, got {other:?}"),
    }
    let stats = model.stats();
    assert_eq!((stats.shed_slo, stats.shed_deadline), (1, 1));

    fake.gate.open();
    assert!(answer(held).is_ok());
    assert_own_rows(accepted);
    // Back to the fixed delay: nothing is shed any more.
    model.set_slo_target(None);
    assert_own_rows(submit_all(&model, 400..410));
    model.shutdown();
}
