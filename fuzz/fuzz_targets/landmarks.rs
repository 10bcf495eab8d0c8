//! Any body for the landmark handler (signnet's shape): a request of exactly the model's size, or a 400.
#![no_main]

use ferroserve::landmarks::{parse, LandmarkShape};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let shape = LandmarkShape { frames: 30, points: 21, coords: 3 };
    let mut body = data.to_vec();
    if let Ok(request) = parse(&mut body, shape) {
        assert_eq!(request.input.len(), 30 * 21 * 3);
        assert!(request.input.iter().all(|x| x.is_finite()));
    }
});
