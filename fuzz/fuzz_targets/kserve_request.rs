//! Any KServe v2 infer body (JSON, or JSON followed by binary tensor data): a validated request or a 400.
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
    // The first byte chooses whether a JSON length header is given, as with binary tensor data.
    let Some((&selector, rest)) = data.split_first() else { return };
    let json_len = (selector % 2 == 1).then(|| usize::from(selector) * 3 % (rest.len() + 1));
    let mut body = rest.to_vec();
    if let Ok(samples) = ferroserve::api::kserve::validate_request(&mut body, json_len, &spec) {
        assert!(samples >= 1);
    }
});
