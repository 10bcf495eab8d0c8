#!/usr/bin/env bash
# Soak benchmark (issue 6): the release server with the bundled model under an open-loop load at about 3x what
# it sustains, for 10 minutes. Reports requests accepted and answered, rejected by cause, lost (sent and never
# answered: timeouts and broken connections; must be 0), and the server's memory (must stay flat after the
# first minute). Not part of `make test`.
# Usage: bash benches/soak.sh   (after `make build`; `make soak` does both)
# Env: DURATION (600s), RATE (requests/s, default 3 x SUSTAINABLE), SUSTAINABLE (9400, from `make bench-e2e`),
#      WORKERS (2), TIMEOUT (10s, the generator's give-up time).
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-600s}
SUSTAINABLE=${SUSTAINABLE:-9400}
RATE=${RATE:-$((3 * SUSTAINABLE))}
WORKERS=${WORKERS:-2}
TIMEOUT=${TIMEOUT:-10s}
# Above the server's in-flight limit (1024), so that its admission control answers, and below its connection
# limit and the kernel's accept queue (somaxconn, 4096 here): with HTTP/1.1 each request in flight is a connection,
# and connections past the accept queue are dropped by the kernel before the server sees them.
MAX_IN_FLIGHT=${MAX_IN_FLIGHT:-3000}
SERVER=target/release/ferroserve
LOADTEST=target/release/ferroserve-loadtest
[ -x "$SERVER" ] && [ -x "$LOADTEST" ] || { echo "build first: make build" >&2; exit 1; }

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
start_server "$work" "$SERVER" "default_workers_per_model=$WORKERS
job_queue_size=100
batch_size=16
max_batch_delay=2"

# The server's resident memory every 5 s: seconds since start, kB.
(
    start=$(date +%s)
    while kill -0 "$server_pid" 2>/dev/null; do
        rss=$(awk '/^VmRSS/ {print $2}' "/proc/$server_pid/status" 2>/dev/null || true)
        [ -n "$rss" ] && echo "$(( $(date +%s) - start )) $rss" >> "$work/rss.txt"
        sleep 5
    done
) &
sampler_pid=$!

echo "soak: $RATE requests/s open loop for $DURATION against http://$inference (sustainable about $SUSTAINABLE)" >&2
"$LOADTEST" --target "http://$inference" --model signnet --body models/signnet/example.json \
    --rate "$RATE" --duration "$DURATION" --timeout "$TIMEOUT" --max-in-flight "$MAX_IN_FLIGHT" \
    --metrics-url "http://$metrics/metrics" --json "$work/soak.json" > "$work/loadtest.txt" || true
cat "$work/loadtest.txt"
curl -s "http://$metrics/metrics" > "$work/metrics.txt" || true

python3 - "$work/soak.json" "$work/rss.txt" "$work/metrics.txt" <<'PY'
import json, re, sys
report = json.load(open(sys.argv[1]))
rss = [tuple(map(int, line.split())) for line in open(sys.argv[2])]
served = {}
for line in open(sys.argv[3]):
    m = re.match(r'ferroserve_http_responses_total\{api="inference",class="(\w+)"\} (\d+)', line)
    if m:
        served[m.group(1)] = int(m.group(2))
errors = report["errors"]
lost = sum(errors.get(k, 0) for k in ("timeout", "io"))
rejected = {k: v for k, v in errors.items() if k not in ("timeout", "io")}
first = max((kb for t, kb in rss if t <= 60), default=0)
later = max((kb for t, kb in rss if t > 60), default=first)
print(f"sent and finished : {report['requests']}")
print(f"answered 2xx      : {report['successes']}")
print(f"rejected by cause : {rejected}")
print(f"lost (no answer)  : {lost}")
print(f"server's answers  : {served} (total {sum(served.values())})")
print(f"server RSS        : peak in the first minute {first / 1024:.1f} MiB, peak after it {later / 1024:.1f} MiB, last {rss[-1][1] / 1024:.1f} MiB")
print(f"generator lag     : {report.get('schedule_lag')}")
ok = lost == 0 and later <= first * 1.10 + 8 * 1024
print("verdict           :", "PASS" if ok else "FAIL")
sys.exit(0 if ok else 1)
PY
