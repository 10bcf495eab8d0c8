#!/usr/bin/env bash
# The GPU bundle's one command (README "The GPU bundle"): on a host with an NVIDIA GPU and PyTorch installed, and
# nothing else of ferroserve's (no Rust, no network), it runs, against that PyTorch's libtorch:
#   1. ferroserve-gpu-check: CUDA detected first, signnet's reference probabilities on the GPU, two workers on two
#      distinct pool streams overlapping, then throughput at batch 1, 8, 32 and 128 through ferroserve's engine
#      against direct forward calls, and one stream against two (the compass: 90 %, 1.5x);
#   2. the ferroserve server with TORCH_DEVICE=cuda serving signnet.pt (and signnet.onnx on the CPU, with the
#      bundled ONNX Runtime), answering signnet's reference, "device":"cuda", x-device cuda:N, device="cuda" metrics.
# It writes $OUT/report.md (the figures, each check PASS or FAIL), $OUT/server.log and $OUT/libraries.txt (what the
# server mapped: which libtorch, which CUDA libraries). Exit status 0 when every check passed (a compass figure
# missed is reported, not failed), 1 when one failed, 2 when it could not start.
#
# Usage: ./run.sh [--cpu]        (--cpu, or TORCH_DEVICE=cpu: the same on the CPU, as the bundle is tested)
# Environment: OUT (default ./report), PYTHON (default python3), FERROSERVE_TORCH_DIR (the torch package folder,
# default: asked of $PYTHON with `import torch`), FERROSERVE_CHECK_SECONDS (each measurement, default 2),
# FERROSERVE_CHECK_BATCHES (default 1,8,32,128), FERROSERVE_IGNORE_TORCH_VERSION=1 (run on another torch).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=/dev/null
source "$here/BUILD-INFO"
device=${TORCH_DEVICE:-cuda}
[ "${1:-}" = --cpu ] && device=cpu
python=${PYTHON:-python3}
OUT=${OUT:-$here/report}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
report=$OUT/report.md
fail() { echo "run.sh: $*" >&2; exit 2; }

torch_dir=${FERROSERVE_TORCH_DIR:-}
if [ -z "$torch_dir" ]; then
    torch_dir=$("$python" -c 'import torch, os; print(os.path.dirname(torch.__file__))') \
        || fail "cannot import torch with $python: set PYTHON, or FERROSERVE_TORCH_DIR to the torch package folder"
fi
[ -f "$torch_dir/lib/libtorch_cpu.so" ] || fail "$torch_dir/lib/libtorch_cpu.so is missing: not a torch package folder"
torch_version=$(sed -n "s/^__version__ = '\(.*\)'.*/\1/p" "$torch_dir/version.py" 2>/dev/null || true)
case "$torch_version" in
    "$BUILT_FOR_TORCH"|"$BUILT_FOR_TORCH"+*) ;;
    *) [ "${FERROSERVE_IGNORE_TORCH_VERSION:-0}" = 1 ] \
        || fail "this bundle's plugin is built for torch $BUILT_FOR_TORCH, $torch_dir is torch ${torch_version:-of unknown version} (rebuild with make gpu-bundle GPU_BUNDLE_TORCH=..., or FERROSERVE_IGNORE_TORCH_VERSION=1)" ;;
esac
# libtorch, and the CUDA libraries of the wheel's nvidia-* packages beside it (libtorch_cuda names them; pip puts
# them in site-packages/nvidia/*/lib, which torch's Python finds by itself and a plain process does not).
site=$(dirname "$torch_dir")
lib_path=$torch_dir/lib
for d in "$site"/nvidia/*/lib "$site"/nvidia/*/*/lib; do
    [ -d "$d" ] && lib_path=$lib_path:$d
done
export LD_LIBRARY_PATH=$lib_path${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
export FERROSERVE_TORCH_PLUGIN=$here/lib/libferroserve_torch.so
export ORT_DYLIB_PATH=$here/lib/$ORT_LIBRARY
export TORCH_DEVICE=$device

{
    echo "# ferroserve GPU bundle report"
    echo
    echo "- date: $(date -u '+%Y-%m-%d %H:%M:%S UTC'); host: $(uname -srm), $(nproc) CPUs"
    echo "- bundle: ferroserve $FERROSERVE_COMMIT, plugin built with tch $BUILT_WITH_TCH for torch $BUILT_FOR_TORCH"
    echo "- torch found: $torch_version in $torch_dir"
    echo "- TORCH_DEVICE=$device; GPUs: $(nvidia-smi -L 2>/dev/null | paste -sd';' || echo 'nvidia-smi not found')"
    echo "- driver: $(nvidia-smi --query-gpu=driver_version --format=csv,noheader 2>/dev/null | head -1 || echo '-')"
    echo
} > "$report"

started=$SECONDS
status=0
timeout "${FERROSERVE_CHECK_TIMEOUT:-420}" "$here/bin/ferroserve-gpu-check" "$here/models/signnet" "$report" \
    || status=1

# The server: signnet.pt on $device; signnet.onnx on the CPU beside it (ONNX Runtime's CUDA provider is not in
# the bundle: README "The GPU bundle").
read -r http management metrics < <("$python" -c '
import socket
socks = [socket.socket() for _ in range(3)]
for s in socks: s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in socks))')
work=$(mktemp -d)
server_pid=
cleanup() { [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT
cat > "$work/config.properties" <<CFG
inference_address=http://127.0.0.1:$http
management_address=http://127.0.0.1:$management
metrics_address=http://127.0.0.1:$metrics
disable_token_authorization=true
model_store=$here/models
load_models=signnet=signnet/signnet.pt,signnet_onnx=signnet/signnet.onnx
models={"signnet_onnx": {"1.0": {"deviceType": "cpu"}}}
batch_size=8
max_batch_delay=2
CFG
"$here/bin/ferroserve" --ts-config "$work/config.properties" >"$OUT/server.log" 2>&1 &
server_pid=$!
timeout 180 "$python" "$here/e2e.py" "http://127.0.0.1:$http" "http://127.0.0.1:$metrics" "$here/models" \
    "$report" "signnet=$device" "signnet_onnx=cpu" || status=1
if [ -r "/proc/$server_pid/maps" ]; then
    awk '$6 ~ /\.so/ {print $6}' "/proc/$server_pid/maps" | sort -u > "$OUT/libraries.txt"
fi
kill "$server_pid" 2>/dev/null && wait "$server_pid" 2>/dev/null || true
server_pid=

{
    echo
    echo "Whole run: $((SECONDS - started)) s. Result: $([ "$status" = 0 ] && echo 'every check passed' || echo 'FAILED')."
} >> "$report"
echo "report: $report"
exit "$status"
