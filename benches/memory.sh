#!/usr/bin/env bash
# Memory benchmark (issue 17): the release server's resident memory (VmRSS, with its anonymous part from
# /proc/<pid>/smaps_rollup) at idle after start, at the peak of a load by the release ferroserve-loadtest, and after
# the load; once serving only the bundled ONNX model, once with signnet.pt (TorchScript, through the plugin)
# beside it. Prints one table, and fails if the ONNX-only server maps a library of libtorch or CUDA; not part of
# `make test` (server/tests/cli.rs checks the same of the debug binary).
# Usage: bash benches/memory.sh   (after `make build`; `make bench-memory` does both)
# Env: DURATION (30s of load per case), CONCURRENCY (64 connections, closed loop), WORKERS (2), SETTLE (5 s of
#      idle before each idle reading and after the load).
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-30s}
CONCURRENCY=${CONCURRENCY:-64}
WORKERS=${WORKERS:-2}
SETTLE=${SETTLE:-5}
SERVER=target/release/ferroserve
LOADTEST=target/release/ferroserve-loadtest
[ -x "$SERVER" ] && [ -x "$LOADTEST" ] || { echo "build first: make build (and the release ferroserve-loadtest)" >&2; exit 1; }

work=$(mktemp -d)
server_pid=
sampler_pid=
cleanup() {
    [ -n "$sampler_pid" ] && kill "$sampler_pid" 2>/dev/null
    [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null
    rm -rf "$work"
}
trap cleanup EXIT
source benches/server.sh

# rss PID: "VmRSS Anonymous" in MiB.
rss() {
    awk '/^VmRSS/ {r = $2} END {printf "%.1f", r / 1024}' "/proc/$1/status"
    awk '/^Anonymous:/ {printf " %.1f", $2 / 1024}' "/proc/$1/smaps_rollup"
}

# measure NAME MODEL LOAD_MODELS: one row of the table.
measure() {
    local name=$1 model=$2 models=$3
    start_server "$work" "$SERVER" "default_workers_per_model=$WORKERS
batch_size=16
max_batch_delay=2"
    # start_server loads signnet; the TorchScript case registers its model at start instead.
    if [ "$models" != signnet ]; then
        kill "$server_pid"; wait "$server_pid" 2>/dev/null || true
        sed -i "s|^load_models=.*|load_models=$models|" "$work/config.properties"
        : > "$work/server.log"
        "$SERVER" --ts-config "$work/config.properties" 2> "$work/server.log" &
        server_pid=$!
        for _ in $(seq 100); do grep -q "metrics API on" "$work/server.log" && break; sleep 0.1; done
        inference=$(sed -n 's/.*inference API on http:\/\///p' "$work/server.log")
    fi
    curl -sf -o /dev/null -X POST "http://$inference/predictions/$model" -H 'content-type: application/json' \
        --data-binary @models/signnet/example.json || { cat "$work/server.log" >&2; exit 1; }
    sleep "$SETTLE"
    # What the release binary has mapped: serving ONNX only, nothing of libtorch or CUDA (issue 17).
    local runtimes
    runtimes=$(grep -oE '[^/]*(libtorch|libc10|libcu|libnv)[^/ ]*\.so[^/ ]*$' "/proc/$server_pid/maps" | sort -u | tr '\n' ' ' || true)
    if [ "$models" = signnet ] && [ -n "$runtimes" ]; then
        echo "serving ONNX only, the server maps $runtimes" >&2
        exit 1
    fi
    echo "$name maps: ${runtimes:-no libtorch, no CUDA}" >&2
    local idle peak after
    idle=$(rss "$server_pid")
    : > "$work/peak.txt"
    (while kill -0 "$server_pid" 2>/dev/null; do rss "$server_pid" >> "$work/peak.txt"; echo >> "$work/peak.txt"; sleep 0.5; done) &
    sampler_pid=$!
    "$LOADTEST" --quiet --target "http://$inference" --model "$model" --body models/signnet/example.json \
        --concurrency "$CONCURRENCY" --duration "$DURATION" > "$work/load.txt"
    kill "$sampler_pid"; wait "$sampler_pid" 2>/dev/null || true
    sampler_pid=
    peak=$(sort -n -k1 "$work/peak.txt" | tail -n 1)
    sleep "$SETTLE"
    after=$(rss "$server_pid")
    local rate
    rate=$(awk '/req\/s|requests\/s|throughput/ {print; exit}' "$work/load.txt")
    printf '%-28s %-18s %-18s %-18s %s\n' "$name" "$idle" "$peak" "$after" "$rate"
    kill "$server_pid"; wait "$server_pid" 2>/dev/null || true
    server_pid=
}

echo "RSS and its anonymous part in MiB; $CONCURRENCY connections for $DURATION, $WORKERS workers" >&2
printf '%-28s %-18s %-18s %-18s %s\n' case "idle (rss anon)" "load peak" "after load" "load"
measure "ONNX only (signnet)" signnet signnet
measure "ONNX + TorchScript (.pt)" signnet_ts "signnet,signnet_ts=signnet/signnet.pt"
