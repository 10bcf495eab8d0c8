//! Models that leave their input shape to the requests, on the echo fake: samples of several shapes submitted at
//! once from several threads each get their own row back with its shape (a batch that mixed shapes would stack
//! rows of different lengths and hand them out wrongly), every batch the backend ran held one shape, a shape the
//! model rejects is answered to every request of its batch as the client's error while the worker goes on, and a
//! sample that does not fit what the model declares is refused before it is queued.

mod support;

use std::{sync::Arc, time::Duration};

use ferroserve_engine::{
    backend::{FakeBackend, FakeMode, FakeStep, Gate, Shape},
    request::InferResult,
    BackendError, EngineError, Model, ModelSpec,
};
use support::{answer, error, options, output, policy, start};
use tokio::sync::oneshot;

/// A fake whose input shape is unknown (and so its output's: the echo gives back the whole sample).
fn open_shape_echo() -> FakeBackend {
    let spec = ModelSpec {
        input_name: "x".into(),
        input_shape: Shape::unknown(),
        output_name: "y".into(),
        output_shape: Shape::unknown(),
    };
    FakeBackend::new(spec, FakeMode::Echo)
}

/// The shapes the tests mix: one value, three values, and three values as one row of three.
const SHAPES: [&[usize]; 3] = [&[1], &[3], &[1, 3]];

/// Sample `id`: shape `SHAPES[id % 3]`, values of its own.
fn sample(id: u16) -> (Vec<f32>, &'static [usize]) {
    let shape = SHAPES[usize::from(id) % SHAPES.len()];
    let x = f32::from(id);
    (std::iter::successors(Some(x), |v| Some(v + 0.25)).take(shape.iter().product()).collect(), shape)
}

fn submit(model: &Model, id: u16) -> oneshot::Receiver<InferResult> {
    let (input, shape) = sample(id);
    model.submit_shaped(input, Some(shape), None).expect("accepted")
}

#[test]
fn samples_of_several_shapes_get_their_own_rows_from_batches_of_one_shape() {
    let fake = open_shape_echo();
    let model = start(&fake, options(3, policy(8, Duration::from_millis(1))));
    std::thread::scope(|s| {
        for thread in 0..4_u16 {
            let model = &model;
            s.spawn(move || {
                let ids: Vec<u16> = (0..150).map(|k| thread * 150 + k).collect();
                let pending: Vec<_> = ids.iter().map(|&id| (id, submit(model, id))).collect();
                for (id, rx) in pending {
                    let (input, shape) = sample(id);
                    let out = output(rx);
                    assert_eq!(out.output, input, "request {id} got another row");
                    assert_eq!(out.shape.as_deref(), Some(shape), "request {id}");
                }
            });
        }
    });
    let (sizes, shapes) = (fake.batch_sizes(), fake.shapes.lock().clone());
    assert_eq!(sizes.iter().sum::<usize>(), 600, "every request ran once");
    assert_eq!(shapes.len(), sizes.len(), "every batch ran with the shape of its samples");
    model.shutdown();
}

#[test]
fn a_backlog_of_two_shapes_goes_in_batches_of_one_shape_in_order() {
    let fake = open_shape_echo();
    fake.gate.close();
    let model = start(&fake, options(1, policy(4, Duration::ZERO)));
    let first = submit(&model, 0);
    fake.gate.wait_arrived(1);
    // Queued behind the held batch: shapes [3] [3] [1] [1] [1] [3] (ids 1, 4, 3, 6, 9, 7).
    let ids = [1_u16, 4, 3, 6, 9, 7];
    let pending: Vec<_> = ids.iter().map(|&id| (id, submit(&model, id))).collect();
    fake.gate.open();
    assert_eq!(output(first).output, sample(0).0);
    for (id, rx) in pending {
        assert_eq!(output(rx).output, sample(id).0, "request {id}");
    }
    assert_eq!(fake.batch_sizes(), [1, 2, 3, 1], "a change of shape ends a batch, the order is kept");
    let shapes: Vec<Vec<usize>> = [&[1][..], &[3], &[1], &[3]].iter().map(|s| s.to_vec()).collect();
    assert_eq!(*fake.shapes.lock(), shapes);
    model.shutdown();
}

#[test]
fn a_shape_the_model_rejects_answers_its_batch_and_the_worker_goes_on() {
    let mut fake = open_shape_echo();
    fake.gate = Gate::closed();
    fake.script.push(FakeStep::Sleep(Duration::ZERO));
    fake.script.push(FakeStep::Reject("mat1 and mat2 shapes cannot be multiplied".into()));
    let model = start(&fake, options(1, policy(4, Duration::ZERO)));
    let held = submit(&model, 3);
    fake.gate.wait_arrived(1);
    // Three of shape [1] queue behind the held batch and form the next one, which the model rejects.
    let same: Vec<_> = [6_u16, 9, 12].iter().map(|&id| submit(&model, id)).collect();
    fake.gate.open();
    assert_eq!(output(held).output, sample(3).0);
    for rx in same {
        match error(rx) {
            EngineError::Backend(BackendError::Input(message)) => {
                assert!(message.contains("mat1 and mat2"), "{message}");
            }
            other => panic!("expected the model's rejection, got {other:?}"),
        }
    }
    let next = output(submit(&model, 4));
    assert_eq!(next.output, sample(4).0, "the worker goes on");
    let stats = model.stats();
    assert_eq!((stats.failed_batches, fake.batch_sizes()), (0, vec![1, 3, 1]), "a rejection is no model failure");
    model.shutdown();
}

#[test]
fn samples_that_do_not_fit_the_declaration_are_refused_before_they_are_queued() {
    let spec = ModelSpec {
        input_name: "x".into(),
        input_shape: Shape::partial(vec![None, Some(3)]),
        output_name: "y".into(),
        output_shape: Shape::unknown(),
    };
    let fake = FakeBackend::new(spec, FakeMode::Echo);
    let model = start(&fake, options(1, policy(1, Duration::ZERO)));
    let refused = |input: Vec<f32>, shape: Option<&[usize]>, why: &str| match model.submit_shaped(input, shape, None) {
        Err(EngineError::InvalidInput(message)) => assert!(message.contains(why), "{shape:?}: {message}"),
        other => panic!("{shape:?}: expected InvalidInput, got {other:?}"),
    };
    refused(vec![0.0; 6], Some(&[2, 2][..]), "input of shape [2, 2]: the model takes [-1, 3]");
    refused(vec![0.0; 6], Some(&[6][..]), "the model takes [-1, 3]");
    refused(vec![0.0; 5], Some(&[2, 3][..]), "input of shape [2, 3] has 5 values");
    refused(vec![0.0; 6], None, "the model's input shape [-1, 3] is not fixed: the request must give its own");
    refused(vec![], Some(&[0, 3][..]), "every size must be at least 1");
    let out = answer(model.submit_shaped(vec![1.0; 6], Some(&[2, 3][..]), None).expect("accepted")).expect("answered");
    assert_eq!((out.output, out.shape), (vec![1.0; 6], Some(Arc::from(&[2, 3][..]))));
    assert_eq!(model.stats().accepted, 1);
    model.shutdown();
}

#[test]
fn a_model_that_fixes_its_shape_takes_only_that_shape() {
    let fake = support::echo();
    let model = start(&fake, options(1, policy(1, Duration::ZERO)));
    match model.submit_shaped(vec![0.0; 3], Some(&[1, 3][..]), None) {
        Err(EngineError::InvalidInput(message)) => assert!(message.contains("the model takes [3]"), "{message}"),
        other => panic!("expected InvalidInput, got {other:?}"),
    }
    let out =
        answer(model.submit_shaped(support::input(5), Some(&[3][..]), None).expect("accepted")).expect("answered");
    assert_eq!((out.output, out.shape), (support::echoed(5), None), "the fixed path, as before");
    model.shutdown();
}
