//! A model spread over several devices ([`MultiDevice`]): worker `w` runs on the `w % n`-th device, each answer
//! names the device of the worker that computed it, a device is loaded when its first worker starts, and scaling
//! down and up keeps the spread even. Two fakes stand for two GPUs; they compute differently (echo, batch size)
//! so that an answer shows which one ran it.

mod support;

use std::{
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use ferroserve_engine::{
    backend::{FakeBackend, FakeMode, Gate, MultiDevice},
    metrics::EngineMetrics,
    BackendError, BackendFactory, Device, Model, ModelSpec,
};
use support::{echoed, options, output, policy, spec, submit, FOREVER};

fn gpu(index: usize, mode: FakeMode) -> FakeBackend {
    let mut fake = FakeBackend::new(spec(), mode).on(Device::Cuda(index));
    fake.gate = Gate::closed();
    fake
}

/// A model on two fake GPUs with `workers` workers, and how many times a device was loaded.
fn spread(first: &FakeBackend, second: &FakeBackend, workers: usize) -> (Model, Arc<AtomicUsize>) {
    let loads = Arc::new(AtomicUsize::new(0));
    let (a, b, counted) = (first.clone(), second.clone(), Arc::clone(&loads));
    let load = move |device: Device| -> Result<Arc<dyn BackendFactory>, BackendError> {
        counted.fetch_add(1, Ordering::AcqRel);
        Ok(if device == Device::Cuda(0) { Arc::new(a.clone()) } else { Arc::new(b.clone()) })
    };
    let factory = MultiDevice::new(vec![Device::Cuda(0), Device::Cuda(1)], load).expect("loads on the first GPU");
    let model = Model::start_with(Arc::new(factory), options(workers, policy(1, FOREVER)), &EngineMetrics::detached())
        .expect("starts");
    (model, loads)
}

#[test]
fn workers_alternate_over_the_devices_and_answers_name_their_own() {
    let (first, second) = (gpu(0, FakeMode::Echo), gpu(1, FakeMode::BatchSize));
    let (model, _) = spread(&first, &second, 4);
    let devices: Vec<_> = (0..4).map(|w| model.worker_device(w)).collect();
    assert_eq!(devices, [Device::Cuda(0), Device::Cuda(1), Device::Cuda(0), Device::Cuda(1)]);
    assert_eq!(model.device(), Device::Cuda(0));

    // Four requests held at the gates: four workers took one each, two on each device.
    let pending: Vec<_> = (0..4).map(|id| (id, submit(&model, id))).collect();
    first.gate.wait_arrived(2);
    second.gate.wait_arrived(2);
    first.gate.open();
    second.gate.open();
    let mut seen = [0, 0];
    for (id, rx) in pending {
        let out = output(rx);
        match out.device {
            Device::Cuda(0) => assert_eq!(out.output, echoed(id), "cuda:0 echoes"),
            Device::Cuda(1) => assert_eq!(out.output, vec![1.0, 0.0], "cuda:1 answers the batch size"),
            other => panic!("request {id} ran on {other}"),
        }
        seen[usize::from(out.device == Device::Cuda(1))] += 1;
    }
    assert_eq!(seen, [2, 2]);
    model.shutdown();
}

/// Waits until the model runs exactly `ids` (retirement takes up to one idle poll); the bound only turns a
/// worker that never retires into a failure instead of a hung test.
fn wait_for_ids(model: &Model, ids: &[usize]) {
    let give_up = Instant::now() + Duration::from_secs(60);
    while model.worker_ids() != ids {
        assert!(Instant::now() < give_up, "workers {:?}, expected {ids:?}", model.worker_ids());
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn devices_load_with_their_first_worker_and_scaling_keeps_the_spread_even() {
    let (first, second) = (gpu(0, FakeMode::Echo), gpu(1, FakeMode::Echo));
    first.gate.open();
    second.gate.open();
    let (model, loads) = spread(&first, &second, 1);
    assert_eq!(loads.load(Ordering::Acquire), 1, "one worker: the second GPU is not loaded");
    model.scale(4).expect("scale up");
    assert_eq!(model.worker_ids(), [0, 1, 2, 3]);
    assert_eq!(loads.load(Ordering::Acquire), 2, "each device is loaded once");
    // Down to 2: workers 2 and 3 retire, whichever is idle first, so one worker stays on each GPU.
    model.scale(2).expect("scale down");
    wait_for_ids(&model, &[0, 1]);
    model.scale(3).expect("scale up again");
    assert_eq!(model.worker_ids(), [0, 1, 2]);
    let on: Vec<_> = model.worker_ids().into_iter().map(|w| model.worker_device(w)).collect();
    assert_eq!(on, [Device::Cuda(0), Device::Cuda(1), Device::Cuda(0)]);
    assert_eq!(output(submit(&model, 7)).output, echoed(7));
    model.shutdown();
}

#[test]
fn the_devices_must_hold_the_same_model() {
    let other = ModelSpec { input_shape: vec![7].into(), ..spec() };
    let (a, b) = (gpu(0, FakeMode::Echo), FakeBackend::new(other, FakeMode::Echo).on(Device::Cuda(1)));
    let load = move |device: Device| -> Result<Arc<dyn BackendFactory>, BackendError> {
        Ok(if device == Device::Cuda(0) { Arc::new(a.clone()) } else { Arc::new(b.clone()) })
    };
    let factory = MultiDevice::new(vec![Device::Cuda(0), Device::Cuda(1)], load).expect("the first GPU loads");
    let started = Model::start_with(Arc::new(factory), options(2, policy(1, FOREVER)), &EngineMetrics::detached());
    let Err(BackendError::Load(message)) = started else {
        panic!("different shapes on two devices must be refused when the second is loaded");
    };
    assert!(message.contains("cuda:0") && message.contains("cuda:1"), "{message}");
    let none = MultiDevice::new(Vec::new(), |_| Err(BackendError::load("never called")));
    assert!(none.is_err());
}
