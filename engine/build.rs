//! With the `torch` feature: compiles the CUDA stream shim (`csrc/stream.cpp`) against the c10 headers under
//! `$LIBTORCH/include`, and links this package's tests to libtorch (see `libtorch_link.rs`).

include!("libtorch_link.rs");

fn main() {
    println!("cargo:rerun-if-changed=csrc/stream.cpp");
    println!("cargo:rerun-if-changed=libtorch_link.rs");
    if std::env::var_os("CARGO_FEATURE_TORCH").is_none() {
        return;
    }
    let Some(root) = std::env::var_os("LIBTORCH") else {
        panic!("the torch feature needs LIBTORCH (the torch wheel's folder): run `make deps`");
    };
    let include = std::path::Path::new(&root).join("include");
    cc::Build::new()
        .cpp(true)
        .std("c++17")
        .include(&include)
        .define("_GLIBCXX_USE_CXX11_ABI", "1")
        .file("csrc/stream.cpp")
        .compile("ferroserve_stream");
    link_libtorch();
}
