#!/usr/bin/env bash
# End-to-end benchmark: the release server with the bundled model, driven over loopback by wrk (closed loop,
# one connection per concurrent client) at concurrency 1, 16 and 64, for batchSize 1 and 16.
# Usage: bash benches/e2e.sh            (from the repository root, after `make build`; `make bench-e2e` does both)
# Env: DURATION (per run, default 10s), BATCH_SIZES ("1 16"), CONCURRENCY ("1 16 64"), DELAY_MS (2), WORKERS (2),
# BIN (the server binary, default target/release/ferroserve: another build to compare with), DRIFT (true: drift
# detection on, as by default; false to measure its cost).
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10s}
BATCH_SIZES=${BATCH_SIZES:-1 16}
CONCURRENCY=${CONCURRENCY:-1 16 64}
DELAY_MS=${DELAY_MS:-2}
WORKERS=${WORKERS:-2}
DRIFT=${DRIFT:-true}
BIN=${BIN:-target/release/ferroserve}

source benches/server.sh
wrk_bench_setup "$BIN"

printf '%-10s %-12s %12s %10s %10s %10s\n' batchSize concurrency "req/s" p50 p99 errors
for batch in $BATCH_SIZES; do
    start_server "$work" "$BIN" "default_workers_per_model=$WORKERS
job_queue_size=1000
batch_size=$batch
max_batch_delay=$DELAY_MS
drift_detection=$DRIFT"
    addr=$inference
    wrk -t1 -c16 -d2s -s "$work/post.lua" "http://$addr/predictions/signnet" >/dev/null # warm-up
    for c in $CONCURRENCY; do
        out=$(wrk -t1 -c"$c" -d"$DURATION" --latency -s "$work/post.lua" "http://$addr/predictions/signnet")
        rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
        p50=$(awk '/^ +50%/ {print $2}' <<<"$out")
        p99=$(awk '/^ +99%/ {print $2}' <<<"$out")
        errors=$(awk '/Non-2xx/ {print $5}' <<<"$out")
        printf '%-10s %-12s %12s %10s %10s %10s\n' "$batch" "$c" "$rps" "$p50" "$p99" "${errors:-0}"
    done
    kill "$server_pid"; wait "$server_pid" 2>/dev/null || true; server_pid=
done
