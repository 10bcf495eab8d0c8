#!/usr/bin/env bash
# The checks that need an NVIDIA GPU, in one run (CI has none and skips them):
#   1. build in release mode (torch on; `make deps` installs onnxruntime-gpu when nvidia-smi finds a GPU);
#   2. the CUDA tests (engine/tests/torch_cuda.rs, ignored elsewhere): CUDA detected first, signnet's reference
#      answers on cuda:0 from TorchScript and from ONNX Runtime's CUDA provider, and two workers on two distinct
#      pool streams (neither the default one) that run concurrently;
#   3. the backend bench at batch 1, 8 and 32 on cuda:0, then on the CPU for the in-process comparison;
#   4. the server end to end with TORCH_DEVICE=cuda: the answer says "device":"cuda", x-device names a GPU (cuda:N) and the
#      metrics carry device="cuda".
# Needs: an NVIDIA GPU, a Rust toolchain, and the network (make deps, the crates) or, with SKIP_DEPS=1, torch 2.13
# and onnxruntime-gpu 1.31.1 linked under third_party/ and the crates fetched beforehand. The workplace's lent GPU
# machine has none of these (torch 2.11, no cargo, no registry, 64 MiB per call): see the README.
# Usage: bash scripts/gpu-check.sh   (from anywhere; SKIP_DEPS=1 when third_party/ is linked already,
#        SKIP_BENCH=1 to skip step 3). Logs and bench output go to $OUT (default target/gpu-check).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-target/gpu-check}
mkdir -p "$OUT"
step() { printf '\n== %s\n' "$*" | tee -a "$OUT/summary.txt"; }

step "GPU"
nvidia-smi -L | tee -a "$OUT/summary.txt" || { echo "no NVIDIA GPU here (nvidia-smi -L failed)" >&2; exit 1; }

step "build"
[ "${SKIP_DEPS:-0}" = 1 ] || make deps
cargo build --release -p ferroserve -p ferroserve-torch-plugin --lib --bin ferroserve 2>&1 | tail -3
# ONNX Runtime's CUDA provider finds the CUDA libraries of the torch wheel's nvidia-* wheels here (see the README).
LD_LIBRARY_PATH=$(ls -d "$HOME"/.cache/ferroserve/venv-torch-*/lib/python3*/site-packages/nvidia/*/lib | paste -sd:)${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
export LD_LIBRARY_PATH

step "CUDA tests"
cargo test --release -p ferroserve-engine --test torch_cuda -- --ignored --nocapture --test-threads=1 2>&1 \
    | tee "$OUT/cuda-tests.log" | grep -E "^test |streams|throughput|test result"

if [ "${SKIP_BENCH:-0}" != 1 ]; then
    for device in cuda cpu; do
        step "bench on $device, batches 1 8 32"
        FERROSERVE_BENCH_DEVICE=$device FERROSERVE_BENCH_BATCHES=1,8,32 \
            cargo bench -p ferroserve-benches --bench backend -- signnet 2>&1 \
            | tee "$OUT/bench-$device.log" | grep -E "^(onnx|torchscript)_signnet|time:|thrpt:|skipped" \
            | grep -v "change" | tee -a "$OUT/summary.txt"
    done
fi

step "server with TORCH_DEVICE=cuda"
work=$(mktemp -d)
server_pid=
cleanup() { [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT
cat > "$work/config.properties" <<CFG
inference_address=http://127.0.0.1:18080
management_address=http://127.0.0.1:18081
metrics_address=http://127.0.0.1:18082
disable_token_authorization=true
model_store=models
load_models=signnet
batch_size=8
max_batch_delay=2
CFG
TORCH_DEVICE=cuda target/release/ferroserve --ts-config "$work/config.properties" 2>"$OUT/server.log" &
server_pid=$!
for _ in $(seq 100); do curl -sf http://127.0.0.1:18080/ping >/dev/null && break; sleep 0.2; done
curl -sf -D "$work/headers" -X POST http://127.0.0.1:18080/predictions/signnet \
    -H 'Content-Type: application/json' -d @models/signnet/example.json | tee "$work/body"
echo
grep -i '^x-device' "$work/headers" | tee -a "$OUT/summary.txt"
grep -q '"device":"cuda"' "$work/body" || { echo "FAIL: the answer does not say cuda" >&2; exit 1; }
grep -qiE '^x-device: cuda:[0-9]+' "$work/headers" || { echo "FAIL: x-device names no CUDA device" >&2; exit 1; }
curl -sf http://127.0.0.1:18082/metrics | grep -q 'device="cuda"' || { echo "FAIL: no device=\"cuda\" metric" >&2; exit 1; }
grep -E "model loaded" "$OUT/server.log" | tee -a "$OUT/summary.txt"

step "all GPU checks passed"
