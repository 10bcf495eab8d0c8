#!/usr/bin/env bash
# The GPU bundle's test on a machine without a GPU (`make gpu-bundle-test`): the tarball within 64 MiB, unpacked
# into a temporary folder outside the clone, run with TORCH_DEVICE=cpu in a clean environment with nothing but the
# bundle and the libraries of the torch wheel it was built against (no third_party/, no target/, no cargo). It
# must answer signnet's reference with "device":"cpu", load libtorch from the wheel and the plugin and ONNX Runtime
# from the bundle and nothing from the clone, and refuse a torch of another version.
# Usage: gpu-bundle/test.sh TARBALL TORCH_DIR [OTHER_TORCH_DIR]
set -euo pipefail
tarball=$(realpath "$1")
torch_dir=$(realpath "$2")
other_torch=${3:-}
repo=$(cd "$(dirname "$0")/.." && pwd)
LIMIT=$((64 * 1024 * 1024))
fail() { echo "FAIL: $*" >&2; exit 1; }

size=$(stat -c %s "$tarball")
[ "$size" -le "$LIMIT" ] || fail "$tarball is $size bytes, over 64 MiB"
echo "size: $size bytes ($(echo "scale=1; $size / 1048576" | bc) MiB) <= 64 MiB"

work=$(mktemp -d /tmp/ferroserve-gpu-bundle-test.XXXXXX)
trap 'rm -rf "$work"' EXIT
case "$work" in "$repo"/*) fail "the temporary folder $work is inside the clone" ;; esac
tar -C "$work" -xJf "$tarball"
bundle=$(echo "$work"/ferroserve-gpu-bundle-*)
[ -x "$bundle/run.sh" ] || fail "no run.sh in the bundle"
python=$(python3 -c 'import sys; print(sys.executable)')

clean_run() {
    (cd "$work" && env -i PATH=/usr/bin:/bin HOME="$work" LANG=C.UTF-8 PYTHON="$python" "$@")
}

started=$SECONDS
status=0
clean_run OUT="$work/out" FERROSERVE_TORCH_DIR="$torch_dir" FERROSERVE_CHECK_SECONDS=0.3 \
    bash "$bundle/run.sh" --cpu > "$work/run.log" 2>&1 || status=$?
echo "run.sh --cpu: exit $status in $((SECONDS - started)) s"
report=$work/out/report.md
[ -f "$report" ] && cat "$report"
[ "$status" = 0 ] || { cat "$work/run.log" "$work/out/server.log" 2>/dev/null | tail -40; fail "run.sh exited $status"; }

grep -q '^| signnet.pt loads | PASS | on cpu |' "$report" || fail "the check did not load signnet.pt on the CPU"
grep -q '^| reference probabilities, batch 1 and 8 | PASS |' "$report" || fail "no reference check passed"
grep -q '^| signnet answers the reference | PASS | .*"device":"cpu"' "$report" || fail "the server's signnet.pt answers"
grep -q '^| signnet_onnx answers the reference | PASS |' "$report" || fail "the server's signnet.onnx answers"
for batch in 1 8 32 128; do
    grep -qE "^\| $batch \| [0-9]+ \| [0-9]+ \|" "$report" || fail "no throughput at batch $batch"
done
grep -q 'FAIL' "$report" && fail "a check failed"

libraries=$work/out/libraries.txt
[ -s "$libraries" ] || fail "no list of the server's libraries"
grep -qx "$torch_dir/lib/libtorch_cpu.so" "$libraries" || fail "libtorch_cpu not from $torch_dir: $(grep torch_cpu "$libraries")"
grep -qx "$bundle/lib/libferroserve_torch.so" "$libraries" || fail "the plugin not from the bundle"
grep -qx "$bundle/lib/libonnxruntime.so.1.31.1" "$libraries" || fail "ONNX Runtime not from the bundle"
if grep -E "^$repo/|/third_party/|/target/" "$libraries"; then
    fail "the server mapped the libraries above from the clone"
fi
echo "libraries: libtorch from $torch_dir, the plugin and ONNX Runtime from the bundle, nothing from the clone"

if [ -n "$other_torch" ]; then
    other=0
    clean_run OUT="$work/other" FERROSERVE_TORCH_DIR="$other_torch" bash "$bundle/run.sh" --cpu \
        > "$work/other.log" 2>&1 || other=$?
    [ "$other" = 2 ] && grep -q "built for torch" "$work/other.log" \
        || { cat "$work/other.log"; fail "a torch of another version was not refused (exit $other)"; }
    echo "another torch ($other_torch): refused, $(tail -1 "$work/other.log")"
fi
echo "PASS: the GPU bundle runs on the CPU from $work"
