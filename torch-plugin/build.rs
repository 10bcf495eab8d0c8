//! Compiles the CUDA stream shim (`csrc/stream.cpp`) against the c10 headers under `$LIBTORCH/include`, and gives
//! the plugin an rpath to `$LIBTORCH/lib` (and to its own folder, where docker/dist.sh puts libtorch): the engine
//! opens it with dlopen, and the loader must then find libtorch_cpu and libc10 without LD_LIBRARY_PATH.
//!
//! Nothing forces libtorch_cuda among the plugin's dependencies (the linker drops what no symbol needs): the
//! plugin opens it itself when a model runs on CUDA (see `enable_cuda` in `src/lib.rs`).

fn main() {
    println!("cargo:rerun-if-changed=csrc/stream.cpp");
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    let Some(root) = std::env::var_os("LIBTORCH") else {
        panic!("the TorchScript plugin needs LIBTORCH (the torch wheel's folder): run `make deps`");
    };
    let root = std::path::Path::new(&root);
    cc::Build::new()
        .cpp(true)
        .std("c++17")
        .include(root.join("include"))
        .define("_GLIBCXX_USE_CXX11_ABI", "1")
        .file("csrc/stream.cpp")
        .compile("ferroserve_stream");
    let lib = root.join("lib");
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
    println!("cargo:rustc-link-arg=-Wl,-rpath,$ORIGIN");
}
