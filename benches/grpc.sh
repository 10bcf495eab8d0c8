#!/usr/bin/env bash
# KServe v2 inference over gRPC with raw tensors against the same over HTTP with JSON, on the release server and
# the bundled model (batchSize 16, maxBatchDelay 2 ms, 2 workers), with one load generator for both
# (ferroserve-loadtest: --kserve-v2 over HTTP/1.1, --grpc over HTTP/2 with GRPC_CONNECTIONS connections, default
# 1; closed loop, requests generated from the model's metadata, 16 seeded bodies): CONCURRENCY (default "64 1"),
# SECONDS_PER_RUN (default 8) a run after a 1 s warm-up, the two modes in alternation, ROUNDS (default 2) times.
# Prints one line per run: throughput, p50 and p99, and the CPU the generator and the server used per request
# (µs, user + system, measured over the recorded window).
set -euo pipefail
cd "$(dirname "$0")/.."
source benches/server.sh
bin=target/release/ferroserve
load=target/release/ferroserve-loadtest
[ -x "$bin" ] && [ -x "$load" ] || {
    echo "build first: cargo build --release --bin ferroserve --bin ferroserve-loadtest" >&2
    exit 1
}
work=$(mktemp -d)
server_pid=
trap '[ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null; rm -rf "$work"' EXIT
start_server "$work" "$bin" $'batch_size=16\nmax_batch_delay=2\ndefault_workers_per_model=2\nintra_op_threads=1'
grpc=$(sed -n 's/.*inference API over gRPC on //p' "$work/server.log")
for round in $(seq "${ROUNDS:-2}"); do
    for concurrency in ${CONCURRENCY:-64 1}; do
        for mode in http grpc; do
            flags=(--kserve-v2 --target "http://$inference")
            [ "$mode" = grpc ] && flags=(--grpc --target "$grpc" --grpc-connections "${GRPC_CONNECTIONS:-1}")
            "$load" "${flags[@]}" --model signnet --key-file "$work/key_file.json" --concurrency "$concurrency" \
                --warmup 1s --duration "${SECONDS_PER_RUN:-8}s" --server-pid "$server_pid" --quiet \
                --json "$work/run.json" >/dev/null
            python3 - "$work/run.json" "$round" "$mode" "$concurrency" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
n = max(r["requests"], 1)
cpu = r["cpu"]
per = lambda s: f"{s * 1e6 / n:.0f}" if s is not None else "-"
print(f"round={sys.argv[2]} mode={sys.argv[3]} concurrency={sys.argv[4]} requests={r['requests']} "
      f"errors={sum(r['errors'].values())} throughput={r['throughput_rps']:.1f}/s p50={r['latency']['p50_ms']:.2f}ms "
      f"p99={r['latency']['p99_ms']:.2f}ms client_cpu_us_per_req={per(cpu['generator_s'])} "
      f"server_cpu_us_per_req={per(cpu.get('server_s'))}")
PY
        done
    done
done
