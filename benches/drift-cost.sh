#!/usr/bin/env bash
# The cost of drift detection: the release server with the bundled model, drift_detection on and off in
# alternation (ROUNDS times each), driven by wrk over loopback (closed loop, CONCURRENCY connections, batchSize
# BATCH, DURATION a run; the order swaps every round). Prints per run the throughput and the server's CPU time per request (user + system,
# from /proc), which a machine shared with other work disturbs far less than the throughput.
# Usage: bash benches/drift-cost.sh     (from the repository root, after `make build`)
# Env: ROUNDS (3), DURATION (5s), CONCURRENCY (64), BATCH (16), DELAY_MS (2), WORKERS (2), BIN.
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-5s}
CONCURRENCY=${CONCURRENCY:-64}
BATCH=${BATCH:-16}
DELAY_MS=${DELAY_MS:-2}
WORKERS=${WORKERS:-2}
BIN=${BIN:-target/release/ferroserve}
source benches/server.sh
wrk_bench_setup "$BIN"

# The server's CPU time so far, in clock ticks (utime + stime).
cpu_ticks() { awk '{print $14 + $15}' "/proc/$server_pid/stat"; }

printf '%-6s %-6s %12s %10s %16s\n' drift round "req/s" p99 "cpu us/request"
for round in $(seq "$ROUNDS"); do
    # Each round swaps the order, so that a machine that speeds up or slows down over a round favours neither.
    order="true false"
    [ $((round % 2)) = 0 ] && order="false true"
    for drift in $order; do
        start_server "$work" "$BIN" "default_workers_per_model=$WORKERS
job_queue_size=1000
batch_size=$BATCH
max_batch_delay=$DELAY_MS
drift_detection=$drift"
        wrk -t1 -c16 -d2s -s "$work/post.lua" "http://$inference/predictions/signnet" >/dev/null # warm-up
        before=$(cpu_ticks)
        out=$(wrk -t1 -c"$CONCURRENCY" -d"$DURATION" --latency -s "$work/post.lua" "http://$inference/predictions/signnet")
        after=$(cpu_ticks)
        requests=$(awk '/requests in/ {print $1}' <<<"$out")
        rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
        p99=$(awk '/^ +99%/ {print $2}' <<<"$out")
        us=$(awk -v t=$((after - before)) -v n="$requests" -v hz="$(getconf CLK_TCK)" 'BEGIN {printf "%.1f", t / hz * 1e6 / n}')
        printf '%-6s %-6s %12s %10s %16s\n' "$drift" "$round" "$rps" "$p99" "$us"
        kill "$server_pid"; wait "$server_pid" 2>/dev/null || true; server_pid=
    done
done
