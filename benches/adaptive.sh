#!/usr/bin/env bash
# Adaptive batching (`maxBatchDelay` "auto" for a p99 objective) against fixed settings, on the release server
# with the bundled model, driven by the release ferroserve-loadtest over loopback. One server; the settings are
# changed live through the management API between runs, back to back:
#   1. capacity: closed loop, 64 connections, batchSize 16 / 2 ms;
#   2. a lone client (closed loop, 1 connection): p50 and p99 with auto, with 16 / 2 ms and with batch size 1;
#   3. open loop at 10, 50, 80 and 95 % of the capacity, for auto, 16 / 2 ms and batch size 1 (p50, p99,
#      answered per second, errors);
#   4. a step: 10 %, then 90 %, then 10 % of the capacity, auto, each second's p99.
# Usage: bash benches/adaptive.sh       (`make bench-adaptive` builds both binaries first)
# Env: DURATION (per run, default 5s), SLO_MS (25), WORKERS (2), BIN (target/release/ferroserve),
# LT (target/release/ferroserve-loadtest).
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-5s}
SLO_MS=${SLO_MS:-25}
WORKERS=${WORKERS:-2}
BIN=${BIN:-target/release/ferroserve}
LT=${LT:-target/release/ferroserve-loadtest}

source benches/server.sh
for b in "$BIN" "$LT"; do
    [ -x "$b" ] || { echo "build first: $b is missing (make bench-adaptive builds it)" >&2; exit 1; }
done
work=$(mktemp -d)
server_pid=
trap '[ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null; rm -rf "$work"' EXIT

start_server "$work" "$BIN" "default_workers_per_model=$WORKERS
job_queue_size=1000
disable_token_authorization=true
batch_size=16
max_batch_delay=2"

# batching QUERY: changes the model's batching live (PUT /models/signnet?QUERY).
batching() {
    curl -sf -X PUT "http://$management/models/signnet?$1" >/dev/null
}

declare -A SETTINGS=(
    [auto]="batch_size=16&max_batch_delay=auto&slo_p99_ms=$SLO_MS"
    [fixed16x2ms]="batch_size=16&max_batch_delay=2"
    [batch1]="batch_size=1&max_batch_delay=0"
)

# load ARGS...: one loadtest run; prints "p50 p99 answered/s errors" from its JSON report.
load() {
    "$LT" run --target "http://$inference" --quiet --json "$work/run.json" "$@" >/dev/null 2>&1 || true
    python3 - "$work/run.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
lat = r["latency"]
print(f'{lat["p50_ms"]:.2f} {lat["p99_ms"]:.2f} {r["success_rps"]:.0f} {sum(r["errors"].values())}')
PY
}

echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
batching "${SETTINGS[fixed16x2ms]}"
"$LT" run --target "http://$inference" --quiet -c 16 -d 2s >/dev/null 2>&1 || true # warm-up
read -r _ _ capacity _ < <(load -c 64 -d "$DURATION")
echo "capacity (closed loop, 64 connections, batchSize 16 / 2 ms): $capacity answered/s"

printf '\n%-12s %-14s %10s %10s %12s %8s\n' setting load p50_ms p99_ms answered/s errors
for name in auto fixed16x2ms batch1; do
    batching "${SETTINGS[$name]}"
    read -r p50 p99 rps errors < <(load -c 1 -d "$DURATION")
    printf '%-12s %-14s %10s %10s %12s %8s\n' "$name" "lone client" "$p50" "$p99" "$rps" "$errors"
done
for share in 10 50 80 95; do
    rate=$((capacity * share / 100))
    for name in auto fixed16x2ms batch1; do
        batching "${SETTINGS[$name]}"
        read -r p50 p99 rps errors < <(load -r "$rate" -d "$DURATION" --max-in-flight 4096)
        printf '%-12s %-14s %10s %10s %12s %8s\n' "$name" "$share % ($rate/s)" "$p50" "$p99" "$rps" "$errors"
    done
done

echo
echo "step 10 % -> 90 % -> 10 % of capacity, auto, p99 (ms) of each second:"
batching "${SETTINGS[auto]}"
for share in 10 90 10; do
    rate=$((capacity * share / 100))
    "$LT" run --target "http://$inference" --quiet --json "$work/step.json" -r "$rate" -d "$DURATION" \
        --max-in-flight 4096 >/dev/null 2>&1 || true
    python3 - "$work/step.json" "$share" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
seconds = " ".join(f'{i["latency"]["p99_ms"]:.1f}' for i in r.get("intervals", []))
print(f"  {sys.argv[2]:>3} %: {seconds}")
PY
done
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
