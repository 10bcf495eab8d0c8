#!/usr/bin/env bash
# The cost of the access log and traces: the release server with the bundled model, observability on and off in
# alternation (ROUNDS times each; the order swaps every round), driven by the release ferroserve-loadtest over
# loopback (closed loop, CONCURRENCY connections, DURATION a run after a 2 s warm-up). "on" is access_log to a file
# plus OTLP traces sampled at RATIO (10 %) to SINK:
#   SINK=receiver (default): the otlp_sink example, a local OTLP/gRPC receiver that counts what it gets;
#   SINK=refused: a port nobody listens on, every export fails (what a collector that is down costs).
# Prints per run the answered requests per second, p99, and the server's CPU time per request (user + system, from
# /proc), which a machine shared with other work disturbs far less than the throughput; then the lines the access
# log got and the spans the sink counted.
# Usage: bash benches/obs-cost.sh      (`make bench-obs` builds the binaries first)
# Env: ROUNDS (3), DURATION (5s), CONCURRENCY (64), BATCH (16), DELAY_MS (2), WORKERS (2), RATIO (0.1),
# SINK (receiver|refused), BIN, LT, SINK_BIN.
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-5s}
CONCURRENCY=${CONCURRENCY:-64}
BATCH=${BATCH:-16}
DELAY_MS=${DELAY_MS:-2}
WORKERS=${WORKERS:-2}
RATIO=${RATIO:-0.1}
SINK=${SINK:-receiver}
BIN=${BIN:-target/release/ferroserve}
LT=${LT:-target/release/ferroserve-loadtest}
SINK_BIN=${SINK_BIN:-target/release/examples/otlp_sink}

source benches/server.sh
for b in "$BIN" "$LT" "$SINK_BIN"; do
    [ -x "$b" ] || { echo "build first: $b is missing (make bench-obs builds it)" >&2; exit 1; }
done
work=$(mktemp -d)
server_pid=
sink_pid=
trap '[ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null; [ -n "$sink_pid" ] && kill "$sink_pid" 2>/dev/null; rm -rf "$work"' EXIT

# A free port: bound and released by Python (the sink then listens on it, or nobody does for SINK=refused).
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
if [ "$SINK" = receiver ]; then
    "$SINK_BIN" "127.0.0.1:$port" > "$work/sink.log" &
    sink_pid=$!
    for _ in $(seq 50); do grep -q listening "$work/sink.log" && break; sleep 0.1; done
fi

# The server's CPU time so far, in clock ticks (utime + stime).
cpu_ticks() { awk '{print $14 + $15}' "/proc/$server_pid/stat"; }

echo "sink: $SINK on 127.0.0.1:$port; sampling ratio $RATIO; load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
printf '%-4s %-6s %10s %9s %16s\n' obs round "req/s" "p99 ms" "cpu us/request"
for round in $(seq "$ROUNDS"); do
    order="on off"
    [ $((round % 2)) = 0 ] && order="off on"
    for obs in $order; do
        extra="default_workers_per_model=$WORKERS
job_queue_size=1000
batch_size=$BATCH
max_batch_delay=$DELAY_MS"
        if [ "$obs" = on ]; then
            : > "$work/access.log"
            extra="$extra
access_log=$work/access.log
otlp_endpoint=http://127.0.0.1:$port
otlp_sampling_ratio=$RATIO"
        fi
        start_server "$work" "$BIN" "$extra"
        "$LT" run --target "http://$inference" --model signnet --quiet -c 16 -d 2s >/dev/null 2>&1 || true # warm-up
        before=$(cpu_ticks)
        "$LT" run --target "http://$inference" --model signnet --quiet --json "$work/run.json" \
            -c "$CONCURRENCY" -d "$DURATION" >/dev/null 2>&1 || true
        after=$(cpu_ticks)
        python3 - "$work/run.json" "$((after - before))" "$(getconf CLK_TCK)" "$obs" "$round" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
ticks, hz, obs, rnd = int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
n = r["requests"] if "requests" in r else r["success_rps"] * r["elapsed_s"]
us = ticks / hz * 1e6 / max(n, 1)
print(f'{obs:<4} {rnd:<6} {r["success_rps"]:10.0f} {r["latency"]["p99_ms"]:9.2f} {us:16.1f}')
PY
        kill "$server_pid"; wait "$server_pid" 2>/dev/null || true; server_pid=
        if [ "$obs" = on ]; then
            echo "     access log: $(wc -l < "$work/access.log") lines"
        fi
    done
done
if [ -n "$sink_pid" ]; then
    echo "spans the sink received: $(tail -n 1 "$work/sink.log")"
fi
