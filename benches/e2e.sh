#!/usr/bin/env bash
# End-to-end benchmark: the release server with the bundled model, driven over loopback by wrk (closed loop,
# one connection per concurrent client) at concurrency 1, 16 and 64, for batchSize 1 and 16.
# Usage: bash benches/e2e.sh            (from the repository root, after `make build`; `make bench-e2e` does both)
# Env: DURATION (per run, default 10s), BATCH_SIZES ("1 16"), CONCURRENCY ("1 16 64"), DELAY_MS (2), WORKERS (2),
# BIN (the server binary, default target/release/ferroserve: another build to compare with), CANARY (unset: one
# version of signnet; a percentage: a second version, 2.0, of the same model file is loaded beside it, with
# WORKERS workers of its own, and made the canary with that share; 0 loads it without a split, the baseline to
# compare a canary with). wrk sends no x-canary-key: each request is drawn at random. DRIFT (true: drift
# detection on, as by default; false to measure its cost). TLS=ab: instead of the wrk table, TLS off and on back to
# back for each batch size and concurrency, ROUNDS (3) times (the order swaps every round), with the server's CPU
# time per request (from /proc, over the measured run; each run's connections are new, their handshakes counted),
# driven by ferroserve-loadtest (LOADTEST, default
# target/release/ferroserve-loadtest; closed loop, keep-alive connections) over http:// and then over https://
# with the test certificate of server/tests/fixtures/tls (RSA 2048), signed by its test CA, ca.crt, trusted with --ca-cert.
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
if [ "${TLS:-}" = ab ]; then
    bench_setup "$BIN" # ferroserve-loadtest drives it: no wrk
else
    wrk_bench_setup "$BIN"
fi

# With CANARY: a model store holding signnet and a no-archive folder of the same files, version 2.0.
store_lines=
if [ -n "${CANARY:-}" ]; then
    mkdir -p "$work/store/signnet-v2/MAR-INF"
    cp -r models/signnet "$work/store/signnet"
    cp models/signnet/signnet.onnx models/signnet/index_to_name.json "$work/store/signnet-v2/"
    printf '%s' '{"model": {"modelName": "signnet", "modelVersion": "2.0", "serializedFile": "signnet.onnx"}}' \
        > "$work/store/signnet-v2/MAR-INF/MANIFEST.json"
    store_lines="model_store=$work/store
load_models=signnet,signnet-v2"
    if [ "$CANARY" != 0 ]; then
        store_lines="$store_lines
models={\"signnet\": {\"1.0\": {\"defaultVersion\": true}, \"2.0\": {\"canaryPercent\": $CANARY}}}"
    fi
    echo "signnet 1.0 (default) and 2.0 (canary at ${CANARY} %)" >&2
fi

if [ "${TLS:-}" = ab ]; then
    LOADTEST=${LOADTEST:-target/release/ferroserve-loadtest}
    ROUNDS=${ROUNDS:-3}
    [ -x "$LOADTEST" ] || { echo "build first: cargo build --release -p ferroserve-loadtest" >&2; exit 1; }
    tls_dir=server/tests/fixtures/tls
    echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
    printf '%-6s %-6s %-10s %-12s %12s %10s %10s %10s %16s\n' tls round batchSize concurrency "req/s" p50_ms p99_ms \
        errors "cpu us/request"
    for round in $(seq "$ROUNDS"); do
        order="off on"
        [ $((round % 2)) = 0 ] && order="on off"
        for batch in $BATCH_SIZES; do
            for tls in $order; do
                scheme=http tls_lines=
                if [ $tls = on ]; then
                    scheme=https
                    tls_lines="private_key_file=$tls_dir/rsa-pkcs1.key
certificate_file=$tls_dir/rsa.crt"
                fi
                start_server "$work" "$BIN" "default_workers_per_model=$WORKERS
job_queue_size=1000
batch_size=$batch
max_batch_delay=$DELAY_MS
drift_detection=$DRIFT
$tls_lines" "$scheme"
                url="$scheme://localhost:${inference##*:}"
                for c in $CONCURRENCY; do
                    "$LOADTEST" run --target "$url" --ca-cert "$tls_dir/ca.crt" --body models/signnet/example.json \
                        --concurrency "$c" --warmup 0s --duration 2s --quiet >/dev/null # warm-up
                    before=$(awk '{print $14 + $15}' "/proc/$server_pid/stat")
                    "$LOADTEST" run --target "$url" --ca-cert "$tls_dir/ca.crt" --body models/signnet/example.json \
                        --concurrency "$c" --warmup 0s --duration "$DURATION" --quiet --json "$work/run.json" >/dev/null
                    after=$(awk '{print $14 + $15}' "/proc/$server_pid/stat")
                    python3 - "$work/run.json" "$tls" "$round" "$batch" "$c" "$((after - before))" "$(getconf CLK_TCK)" \
                        "$work/tls.txt" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
errors = sum(r["errors"].values())
us = int(sys.argv[6]) / int(sys.argv[7]) * 1e6 / max(r["requests"], 1)
print(f"{sys.argv[2]:<6} {sys.argv[3]:<6} {sys.argv[4]:<10} {sys.argv[5]:<12} {r['throughput_rps']:12.1f} "
      f"{r['latency']['p50_ms']:10.2f} {r['latency']['p99_ms']:10.2f} {errors:10d} {us:16.1f}")
open(sys.argv[8], "a").write(f"{sys.argv[2]} {sys.argv[4]} {sys.argv[5]} {r['throughput_rps']} "
                             f"{r['latency']['p50_ms']} {r['latency']['p99_ms']} {us}\n")
PY
                done
                kill "$server_pid"; wait "$server_pid" 2>/dev/null || true; server_pid=
            done
        done
    done
    python3 - "$work/tls.txt" <<'PY'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
print("median of the rounds:")
print(f'{"tls":<6} {"batchSize":<10} {"concurrency":<12} {"req/s":>12} {"p50_ms":>10} {"p99_ms":>10} {"cpu us/request":>16}')
for key in dict.fromkeys(tuple(r[:3]) for r in rows):
    mine = [list(map(float, r[3:])) for r in rows if tuple(r[:3]) == key]
    m = [statistics.median(c) for c in zip(*mine)]
    print(f'{key[0]:<6} {key[1]:<10} {key[2]:<12} {m[0]:12.1f} {m[1]:10.2f} {m[2]:10.2f} {m[3]:16.1f}')
PY
    exit 0
fi

printf '%-10s %-12s %12s %10s %10s %10s\n' batchSize concurrency "req/s" p50 p99 errors
for batch in $BATCH_SIZES; do
    start_server "$work" "$BIN" "default_workers_per_model=$WORKERS
job_queue_size=1000
batch_size=$batch
max_batch_delay=$DELAY_MS
$store_lines
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
