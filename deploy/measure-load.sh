#!/usr/bin/env bash
# The autoscaling metric at 25 %, 80 % and 120 % of the bundled model's capacity, and the replicas the HPA's
# formula gives for each (desired = ceil(current x value / target), one replica now).
#
# Capacity is the highest open-loop rate that meets the deploy configuration's latency objective (p99 under
# 25 ms, no errors), found by `ferroserve-loadtest tune` at the shipped batch setting (16, 2 ms): a closed loop's
# saturation throughput overstates it, since an open loop past it queues without bound. Each level is an open
# loop at a fixed rate for LEVEL_SECONDS; the metric is read from Prometheus after 70 s, when its one-minute
# windows hold that level only. About 6 minutes in all. Prints a Markdown table; the raw reports stay in $WORK
# when KEEP_WORK=1.
#
#   FERROSERVE_BIN=... FERROSERVE_LOADTEST_BIN=... deploy/measure-load.sh
#   CAPACITY=5000 deploy/measure-load.sh      # skip the capacity search
set -euo pipefail
source "$(dirname "$0")/lib.sh"

TARGET="${HPA_TARGET:-1}"        # the HPA's averageValue (deploy/kubernetes/overlays/hpa/hpa.yaml)
LEVEL_SECONDS="${LEVEL_SECONDS:-80}"
LEVELS="${LEVELS:-25 80 120}"

start_ferroserve
start_prometheus
wait_scraped 20

if [[ -z "${CAPACITY:-}" ]]; then
    "$FERROSERVE_LOADTEST_BIN" tune --target "$INFERENCE_URL" --management-url "$MANAGEMENT_URL" \
        --key-file "$KEY_FILE" --quiet --slo p99=25ms --max-error-percent 0 --batch-sizes 16 --delays 2ms \
        --start-rate 2000 --precision 0.1 --window 1s --window-requests 500 --trial-warmup 1s --max-in-flight 1000 \
        --json "$WORK/capacity.json" >"$WORK/capacity.txt"
    CAPACITY=$(python3 -c "import json; print(round(json.load(open('$WORK/capacity.json'))['settings'][0]['best_rate']))")
    # Let the search leave the one-minute windows.
    sleep 65
fi
log "capacity: $CAPACITY req/s (the highest open-loop rate with p99 under 25 ms and no errors)"

ratio='ferroserve:queue_compute_ratio:1m{pod="ferroserve-0"}'
waiting='sum(ferroserve:queue_waiting_requests:avg1m{pod="ferroserve-0"})'
computing='sum(ferroserve:requests_in_compute:avg1m{pod="ferroserve-0"})'
echo "| load | rate (req/s) | answered/s | errors | client p99 | waiting | computing | metric | desired replicas (target $TARGET) |"
echo "|---|---|---|---|---|---|---|---|---|"
for percent in $LEVELS; do
    rate=$((CAPACITY * percent / 100))
    loadtest --rate "$rate" --duration "${LEVEL_SECONDS}s" --max-in-flight 1000 --json "$WORK/level-$percent.json" \
        >/dev/null &
    generator=$!
    PIDS+=("$generator")
    sleep 70
    value=$(prom_value "$ratio")
    w=$(prom_value "$waiting")
    c=$(prom_value "$computing")
    wait "$generator" || true
    python3 - "$WORK/level-$percent.json" "$percent" "$rate" "$value" "$w" "$c" "$TARGET" <<'EOF'
import json, math, sys
report, percent, rate, value, waiting, computing, target = sys.argv[1:]
r = json.load(open(report))
errors = sum(r["errors"].values()) if isinstance(r["errors"], dict) else r["errors"]
desired = max(1, math.ceil(1 * float(value) / float(target)))
print(f"| {percent} % | {rate} | {r['success_rps']:.0f} | {errors} | {r['latency']['p99_ms']:.1f} ms "
      f"| {float(waiting):.2f} | {float(computing):.2f} | {float(value):.2f} | {desired} |")
EOF
done
log "the metric 70 s after the load stopped: $(sleep 70; prom_value "$ratio")"
