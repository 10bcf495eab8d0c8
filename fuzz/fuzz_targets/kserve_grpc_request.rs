//! Any bytes as a KServe v2 gRPC `ModelInferRequest`: a validated request or a 400, never a panic, and nothing
//! allocated for a claimed shape the bytes do not carry.
#![no_main]

use ferroserve_engine::ModelSpec;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let spec = ModelSpec {
        input_name: "landmarks".into(),
        input_shape: vec![2, 3, 3].into(),
        output_name: "probabilities".into(),
        output_shape: vec![10].into(),
    };
    if let Ok(samples) = ferroserve::api::kserve::grpc::validate_request(data, &spec) {
        assert!(samples >= 1);
    }
});
