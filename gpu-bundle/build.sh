#!/usr/bin/env bash
# Builds the GPU bundle (`make gpu-bundle`; README "The GPU bundle"): what a host with an NVIDIA GPU and PyTorch
# $GPU_BUNDLE_TORCH installed, and no Rust, no network, needs to run ferroserve and check it there, packed in one
# tarball of at most 64 MiB:
#   bin/ferroserve                 the release server, stripped (it links no libtorch: the plugin does)
#   bin/ferroserve-gpu-check       the CUDA tests' checks and the GPU figures (benches/src/bin/ferroserve-gpu-check)
#   lib/libferroserve_torch.so     the TorchScript plugin built against torch $GPU_BUNDLE_TORCH's libtorch
#                                  (gpu-bundle/plugin-torch-2.11: tch 0.24), stripped, rpath $ORIGIN only
#   lib/libonnxruntime.so.*        ONNX Runtime's CPU library (the host's onnxruntime is too old for ort's API)
#   models/signnet/                the model in both formats, its labels and reference outputs
#   run.sh, e2e.py, BUILD-INFO     the one command to run there, its HTTP client, what was built with what
# Environment (the Makefile sets them): LIBTORCH_211 (the torch package folder of the wheel to build against),
# ORT_LIB (libonnxruntime of the CPU wheel), OUT_DIR (default target/gpu-bundle).
set -euo pipefail
cd "$(dirname "$0")/.."
: "${LIBTORCH_211:?the torch 2.11 package folder (make gpu-bundle sets it)}" "${ORT_LIB:?libonnxruntime.so (make gpu-bundle sets it)}"
GPU_BUNDLE_TORCH=${GPU_BUNDLE_TORCH:-2.11.0}
OUT_DIR=${OUT_DIR:-target/gpu-bundle}
LIMIT=$((64 * 1024 * 1024))
name=ferroserve-gpu-bundle-torch$GPU_BUNDLE_TORCH
plugin_project=gpu-bundle/plugin-torch-2.11
export CARGO_BUILD_JOBS=${CARGO_BUILD_JOBS:-2}

echo "== the release server and the check program (the workspace's own build)"
nice -n 19 cargo build --release --locked -p ferroserve --bin ferroserve -p ferroserve-benches --bin ferroserve-gpu-check

echo "== the TorchScript plugin against torch $GPU_BUNDLE_TORCH ($plugin_project, its own lock and target folder)"
LIBTORCH=$LIBTORCH_211 CARGO_TARGET_DIR=$OUT_DIR/plugin-target nice -n 19 cargo build --release --locked \
    --manifest-path "$plugin_project/Cargo.toml"

echo "== staging and packing"
stage=$OUT_DIR/stage/$name
rm -rf "$OUT_DIR/stage"
mkdir -p "$stage/bin" "$stage/lib" "$stage/models/signnet"
strip -o "$stage/bin/ferroserve" target/release/ferroserve
strip -o "$stage/bin/ferroserve-gpu-check" target/release/ferroserve-gpu-check
strip --strip-unneeded -o "$stage/lib/libferroserve_torch.so" "$OUT_DIR/plugin-target/release/libferroserve_torch.so"
# The build's rpath names this machine's wheel; on the host run.sh puts that PyTorch's libtorch on the path.
patchelf --set-rpath '$ORIGIN' "$stage/lib/libferroserve_torch.so"
cp "$ORT_LIB" "$stage/lib/"
cp models/signnet/{signnet.pt,signnet.pt.json,signnet.onnx,reference.json,example.json,index_to_name.json} \
    "$stage/models/signnet/"
cp gpu-bundle/run.sh gpu-bundle/e2e.py "$stage/"
tch=$(sed -n 's/^tch = "=\(.*\)"/\1/p' "$plugin_project/Cargo.toml")
cat > "$stage/BUILD-INFO" <<INFO
# What this bundle was built from and for (sourced by run.sh).
FERROSERVE_COMMIT=$(git rev-parse --short HEAD)$(git diff --quiet HEAD -- . ':!target' 2>/dev/null || echo -dirty)
BUILT_FOR_TORCH=$GPU_BUNDLE_TORCH
BUILT_WITH_TCH=$tch
ORT_LIBRARY=$(basename "$ORT_LIB")
INFO
tarball=$OUT_DIR/$name.tar.xz
tar -C "$OUT_DIR/stage" --owner=0 --group=0 -cf - "$name" | xz -T2 -6 > "$tarball.tmp"
mv "$tarball.tmp" "$tarball"

size=$(stat -c %s "$tarball")
du -b "$stage"/bin/* "$stage"/lib/* | awk '{printf "  %6.1f MiB  %s\n", $1 / 1048576, $2}'
printf '%s: %.1f MiB (limit 64 MiB), %.1f MiB unpacked\n' "$tarball" "$(echo "$size / 1048576" | bc -l)" \
    "$(du -sb "$stage" | awk '{print $1 / 1048576}')"
if [ "$size" -gt "$LIMIT" ]; then
    echo "FAIL: the bundle is $size bytes, over the 64 MiB ($LIMIT bytes) a run may bring to the GPU host" >&2
    exit 1
fi
