#!/usr/bin/env bash
# KServe v2 inference over gRPC with raw tensors against the same over HTTP with JSON, on the release server and
# the bundled model (batchSize 16, maxBatchDelay 2 ms, 2 workers), with one client for both
# (server/examples/grpc_load.rs, closed loop): concurrency 64 and 1, SECONDS_PER_RUN (default 8) a run, the two modes in
# alternation, ROUNDS (default 2) times. Prints one line per run, with the CPU seconds the client and the server
# used in it (divide by `requests` for the CPU per request).
set -euo pipefail
cd "$(dirname "$0")/.."
source benches/server.sh
bin=target/release/ferroserve
load=target/release/examples/grpc_load
[ -x "$bin" ] && [ -x "$load" ] || { echo "build first: cargo build --release --bin ferroserve --example grpc_load" >&2; exit 1; }
work=$(mktemp -d)
server_pid=
trap '[ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null; rm -rf "$work"' EXIT
start_server "$work" "$bin" $'batch_size=16\nmax_batch_delay=2\ndefault_workers_per_model=2\nintra_op_threads=1'
grpc=$(sed -n 's/.*inference API over gRPC on //p' "$work/server.log")
# CPU seconds (user + system) the server has used so far.
server_cpu() { awk -v hz="$(getconf CLK_TCK)" '{printf "%.2f", ($14 + $15) / hz}' "/proc/$server_pid/stat"; }
for round in $(seq "${ROUNDS:-2}"); do
    for concurrency in 64 1; do
        for mode in http grpc; do
            addr=$inference
            [ "$mode" = grpc ] && addr=$grpc
            before=$(server_cpu)
            line=$(/usr/bin/time -f "client_cpu_s=%U+%S" "$load" "$mode" "$addr" signnet "$concurrency" \
                "${SECONDS_PER_RUN:-8}" 2>&1 | tr '\n' ' ')
            echo "round=$round $line server_cpu_s=$(echo "$(server_cpu) - $before" | bc)"
        done
    done
done
