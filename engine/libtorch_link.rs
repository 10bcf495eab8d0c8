// Shared by the build scripts of every package whose binaries, tests or benches link libtorch (engine, server,
// benches), through `include!`: a build script cannot depend on another package's build script.

/// Makes this package's binaries, tests and benches find libtorch at run time (an rpath to `$LIBTORCH/lib`) and
/// keep `libtorch` and `libtorch_cuda` among their dependencies even though no symbol of theirs is referenced
/// directly (`--no-as-needed`): without that, the binary does not start, or CUDA never registers with c10.
/// Does nothing unless the package's `torch` feature is on.
fn link_libtorch() {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    if std::env::var_os("CARGO_FEATURE_TORCH").is_none() {
        return;
    }
    let Some(root) = std::env::var_os("LIBTORCH") else {
        println!("cargo:warning=LIBTORCH is not set: run `make deps` (it links third_party/libtorch)");
        return;
    };
    let lib = std::path::Path::new(&root).join("lib");
    println!("cargo:rustc-link-search=native={}", lib.display());
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
    println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
    println!("cargo:rustc-link-arg=-ltorch");
    if lib.join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-arg=-ltorch_cuda");
    }
    println!("cargo:rustc-link-arg=-Wl,--as-needed");
}
