//! Criterion benchmarks of the ferroserve engine; the code is in `benches/`, this library is empty. The package
//! also builds `ferroserve-gpu-check` (`src/bin/`), the checks and figures of the GPU bundle (`make gpu-bundle`).
//!
//! `cargo bench -p ferroserve-benches --bench backend` (or `make bench-backend`) measures the ONNX backend alone
//! on the bundled signnet model at batch 1 and 16, and the engine's own cost per request with the echo fake
//! behind a full model. `FERROSERVE_BENCH_INTRA_THREADS` sets the ONNX Runtime threads per session (default 1).
//! `benches/e2e.sh` is the end-to-end HTTP benchmark.
