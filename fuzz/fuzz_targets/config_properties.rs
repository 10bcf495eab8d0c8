//! Any text as config.properties: a config or an error naming the key, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = ferroserve::Config::from_reader(data, std::path::Path::new("fuzz.properties"));
});
