//! With the `torch` feature, links this package's binaries, tests and benches to libtorch.

include!("../engine/libtorch_link.rs");

fn main() {
    println!("cargo:rerun-if-changed=../engine/libtorch_link.rs");
    link_libtorch();
}
