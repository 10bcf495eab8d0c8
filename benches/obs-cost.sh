#!/usr/bin/env bash
# The cost of the access log and traces: the release server with the bundled model, in each of MODES in rotation
# (ROUNDS times each; the order rotates every round), driven by the release ferroserve-loadtest over loopback
# (closed loop, CONCURRENCY connections, DURATION a run after a 2 s warm-up). The modes:
#   off: neither; log: access_log to a file; traces: OTLP traces sampled at RATIO (10 %) to SINK; both: the two.
#   SINK=receiver (default): the otlp_sink example, a local OTLP/gRPC receiver that counts what it gets;
#   SINK=refused: a port nobody listens on, every export fails (what a collector that is down costs).
# Prints per run the answered requests per second, p50 and p99, and the server's CPU time per request (user +
# system, from /proc), which a machine shared with other work disturbs far less than the throughput; then the
# lines the access log got and the spans the sink counted, and the medians of each mode.
# Usage: bash benches/obs-cost.sh      (`make bench-obs` builds the binaries first)
# Env: MODES ("off log traces both"), ROUNDS (3), DURATION (5s), CONCURRENCY (64), BATCH (16), DELAY_MS (2),
# WORKERS (2), RATIO (0.1), SINK (receiver|refused), BIN, LT, SINK_BIN.
set -euo pipefail
cd "$(dirname "$0")/.."

MODES=${MODES:-off log traces both}
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
printf '%-6s %-6s %10s %9s %9s %16s\n' mode round "req/s" "p50 ms" "p99 ms" "cpu us/request"
read -r -a modes <<<"$MODES"
for round in $(seq "$ROUNDS"); do
    # Rotate the order, so that no mode always runs first (or last) in a round.
    shift_by=$(( (round - 1) % ${#modes[@]} ))
    order=("${modes[@]:$shift_by}" "${modes[@]:0:$shift_by}")
    for mode in "${order[@]}"; do
        extra="default_workers_per_model=$WORKERS
job_queue_size=1000
batch_size=$BATCH
max_batch_delay=$DELAY_MS"
        if [ "$mode" = log ] || [ "$mode" = both ]; then
            : > "$work/access.log"
            extra="$extra
access_log=$work/access.log"
        fi
        if [ "$mode" = traces ] || [ "$mode" = both ]; then
            extra="$extra
otlp_endpoint=http://127.0.0.1:$port
otlp_sampling_ratio=$RATIO"
        fi
        start_server "$work" "$BIN" "$extra"
        "$LT" run --target "http://$inference" --model signnet --quiet -c 16 -d 2s >/dev/null 2>&1 || true # warm-up
        before=$(cpu_ticks)
        "$LT" run --target "http://$inference" --model signnet --quiet --json "$work/run.json" \
            -c "$CONCURRENCY" -d "$DURATION" >/dev/null 2>&1 || true
        after=$(cpu_ticks)
        python3 - "$work/run.json" "$((after - before))" "$(getconf CLK_TCK)" "$mode" "$round" "$work/all.txt" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
ticks, hz, mode, rnd = int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
n = r["requests"] if "requests" in r else r["success_rps"] * r["elapsed_s"]
us = ticks / hz * 1e6 / max(n, 1)
row = (mode, r["success_rps"], r["latency"]["p50_ms"], r["latency"]["p99_ms"], us)
print(f'{mode:<6} {rnd:<6} {row[1]:10.0f} {row[2]:9.2f} {row[3]:9.2f} {us:16.1f}')
open(sys.argv[6], "a").write(" ".join(map(str, row)) + "\n")
PY
        kill "$server_pid"; wait "$server_pid" 2>/dev/null || true; server_pid=
        if [ "$mode" = log ] || [ "$mode" = both ]; then
            echo "       access log: $(wc -l < "$work/access.log") lines"
        fi
    done
done
python3 - "$work/all.txt" <<'PY'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
print("median of each mode:")
print(f'{"mode":<6} {"req/s":>10} {"p50 ms":>9} {"p99 ms":>9} {"cpu us/request":>16}')
for mode in dict.fromkeys(r[0] for r in rows):
    mine = [list(map(float, r[1:])) for r in rows if r[0] == mode]
    m = [statistics.median(c) for c in zip(*mine)]
    print(f'{mode:<6} {m[0]:10.0f} {m[1]:9.2f} {m[2]:9.2f} {m[3]:16.1f}')
PY
if [ -n "$sink_pid" ]; then
    echo "spans the sink received: $(tail -n 1 "$work/sink.log")"
fi
