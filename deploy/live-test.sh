#!/usr/bin/env bash
# The live test of deploy/: a real Prometheus (Debian's prometheus) scrapes a real ferroserve serving the bundled
# model every second, with the rule files of deploy/prometheus loaded, while ferroserve-loadtest drives it.
#
#   1. Idle: the autoscaling metric exists and is 0 (not NaN, not absent).
#   2. An open loop at LIVE_RATE req/s (default 1000) for LIVE_SECONDS (default 30): Prometheus' p99 of the
#      request latency over the run agrees with ferroserve-loadtest's p99 within one bucket.
#   3. A closed-loop burst beyond max_inflight_requests (set to 48 here): 429s are counted, requests queue, and
#      the autoscaling metric rises above 0.
#   4. Every recording rule and every Grafana panel query returns data.
#
# Loopback only, on free ports; about a minute; every process it starts is stopped on exit; exit status 1 on a
# failure. FERROSERVE_BIN and FERROSERVE_LOADTEST_BIN name the binaries (default target/release/...).
# LIVE_ALLOW_MISSING=family,... skips (and reports) the rules and panels that read a metric family the server
# does not export yet, e.g. ferroserve_model_responses_total on a server older than the SLO rules.
set -euo pipefail
DEPLOY="$(cd "$(dirname "$0")" && pwd)"
source "$DEPLOY/venv.sh"
source "$DEPLOY/lib.sh"
RATE="${LIVE_RATE:-1000}"
SECONDS_RUN="${LIVE_SECONDS:-30}"
status=0

start_ferroserve "max_inflight_requests=48"
start_prometheus
wait_scraped 20
sleep 3

ratio='ferroserve:queue_compute_ratio:1m{pod="ferroserve-0"}'
idle=$(prom_value "$ratio") || fail "the autoscaling metric is absent at idle"
log "idle: autoscaling metric $idle"
[[ "$idle" == "0.0" ]] || { log "FAIL: the autoscaling metric is $idle at idle, not 0"; status=1; }

started=$SECONDS
log "open loop at $RATE req/s for ${SECONDS_RUN}s"
loadtest --rate "$RATE" --duration "${SECONDS_RUN}s" --max-in-flight 40 --json "$WORK/run.json" >"$WORK/run.txt" \
    || { cat "$WORK/run.txt" >&2; fail "ferroserve-loadtest failed"; }
sed 's/^/  /' "$WORK/run.txt" >&2
sleep 2
# The window covers the run and the idle seconds around it, and nothing else was sent.
"$VENV/bin/python" "$DEPLOY/live_check.py" p99 --prom "$PROM_URL" --report "$WORK/run.json" \
    --window $((SECONDS - started + 1)) || status=1

log "closed-loop burst: 96 connections for 5s against max_inflight_requests=48"
loadtest --concurrency 96 --duration 5s --json "$WORK/burst.json" >/dev/null || true
python3 -c "import json; r = json.load(open('$WORK/burst.json')); print('  burst:', r['success_rps'], 'ok/s, errors', r['errors'])" >&2
sleep 2
peak=$(prom_value "max_over_time(${ratio}[15s])")
log "autoscaling metric, highest in the last 15 s: $peak"
python3 -c "import sys; sys.exit(0 if 0 < float('$peak') < float('inf') else 1)" \
    || { log "FAIL: the autoscaling metric did not rise under overload"; status=1; }

"$VENV/bin/python" "$DEPLOY/live_check.py" data --prom "$PROM_URL" --allow-missing "${LIVE_ALLOW_MISSING:-}" \
    || status=1

if ((status == 0)); then log "live test passed"; else log "live test FAILED"; fi
exit "$status"
