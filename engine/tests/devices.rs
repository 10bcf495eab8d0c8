//! A model spread over several devices ([`MultiDevice`]): worker `w` runs on the `w % n`-th device, and each answer
//! names the device of the worker that computed it. Two fakes stand for two GPUs; they compute differently (echo,
//! batch size) so that an answer shows which one ran it.

mod support;

use std::sync::Arc;

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

#[test]
fn workers_alternate_over_the_devices_and_answers_name_their_own() {
    let (first, second) = (gpu(0, FakeMode::Echo), gpu(1, FakeMode::BatchSize));
    let spread = MultiDevice::new(vec![Arc::new(first.clone()), Arc::new(second.clone())]).expect("same model");
    let model = Model::start_with(Arc::new(spread), options(4, policy(1, FOREVER)), &EngineMetrics::detached())
        .expect("starts");
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

#[test]
fn the_devices_must_hold_the_same_model() {
    let other = ModelSpec { input_shape: vec![7], ..spec() };
    let factories: Vec<Arc<dyn BackendFactory>> =
        vec![Arc::new(gpu(0, FakeMode::Echo)), Arc::new(FakeBackend::new(other, FakeMode::Echo).on(Device::Cuda(1)))];
    let Err(BackendError::Load(message)) = MultiDevice::new(factories) else {
        panic!("different shapes on two devices must be refused");
    };
    assert!(message.contains("cuda:0") && message.contains("cuda:1"), "{message}");
    assert!(MultiDevice::new(Vec::new()).is_err());
}
