# Shared by deploy/live-test.sh and deploy/measure-load.sh (sourced, not run): a real ferroserve and a real
# Prometheus on loopback ports chosen free, with the rule files under deploy/prometheus loaded, both stopped on exit.
#
# Environment: FERROSERVE_BIN (default target/release/ferroserve), FERROSERVE_LOADTEST_BIN (default
# target/release/ferroserve-loadtest), PROMETHEUS_BIN (default prometheus on PATH).

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
FERROSERVE_BIN="${FERROSERVE_BIN:-$ROOT/target/release/ferroserve}"
FERROSERVE_LOADTEST_BIN="${FERROSERVE_LOADTEST_BIN:-$ROOT/target/release/ferroserve-loadtest}"
PROMETHEUS_BIN="${PROMETHEUS_BIN:-prometheus}"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/ferroserve-deploy.XXXXXX")"
PIDS=()

log() { printf '%s %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
fail() { log "FAIL: $*"; exit 1; }

cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    if [[ -n "${KEEP_WORK:-}" ]]; then log "kept $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# A TCP port on 127.0.0.1 that nothing listens on now.
free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

# wait_for URL SECONDS: until URL answers 200.
wait_for() {
    local url="$1" deadline=$((SECONDS + $2))
    until curl -fsS -o /dev/null --max-time 2 "$url" 2>/dev/null; do
        ((SECONDS < deadline)) || return 1
        sleep 0.2
    done
}

# start_ferroserve [EXTRA_LINE...]: config/config.properties with free loopback ports, the model store and key file
# made absolute, and the extra `key=value` lines (a key given again there wins); sets INFERENCE_URL,
# MANAGEMENT_URL, METRICS_URL, KEY_FILE, SERVER_PID. FERROSERVE_NAME (default ferroserve) names its files in WORK
# (NAME.properties, NAME.log, NAME_key_file.json), so that one script can run several servers.
start_ferroserve() {
    [[ -x "$FERROSERVE_BIN" ]] || fail "no ferroserve binary at $FERROSERVE_BIN (set FERROSERVE_BIN)"
    local inference management metrics name=${FERROSERVE_NAME:-ferroserve}
    KEY_FILE="$WORK/${name}_key_file.json"
    inference=$(free_port) management=$(free_port) metrics=$(free_port)
    {
        grep -vE '^(inference_address|management_address|metrics_address|grpc_inference_address|grpc_management_address|grpc_inference_port|grpc_management_port|model_store|key_file)=' \
            "$ROOT/config/config.properties"
        echo "grpc_inference_port=0"
        echo "grpc_management_port=0"
        echo "inference_address=http://127.0.0.1:$inference"
        echo "management_address=http://127.0.0.1:$management"
        echo "metrics_address=http://127.0.0.1:$metrics"
        echo "model_store=$ROOT/models"
        echo "key_file=$KEY_FILE"
        printf '%s\n' "$@"
    } >"$WORK/$name.properties"
    "$FERROSERVE_BIN" --ts-config "$WORK/$name.properties" >"$WORK/$name.log" 2>&1 &
    SERVER_PID=$!
    PIDS+=("$SERVER_PID")
    INFERENCE_URL="http://127.0.0.1:$inference"
    MANAGEMENT_URL="http://127.0.0.1:$management"
    METRICS_URL="http://127.0.0.1:$metrics/metrics"
    wait_for "$INFERENCE_URL/ping" 60 || { tail -20 "$WORK/$name.log" >&2; fail "$name did not become healthy"; }
    log "$name (pid $SERVER_PID) on $INFERENCE_URL, metrics $METRICS_URL"
}

# start_prometheus: scrapes METRICS_URL every second, as pod ferroserve-0 of namespace live-test (the labels
# Kubernetes service discovery would give), evaluates the rule files every second; sets PROM_URL.
start_prometheus() {
    command -v "$PROMETHEUS_BIN" >/dev/null || fail "no prometheus binary (apt-get install prometheus)"
    local port target
    port=$(free_port)
    target="${METRICS_URL#http://}"
    target="${target%/metrics}"
    cat >"$WORK/prometheus.yml" <<EOF
global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
rule_files:
  - $ROOT/deploy/prometheus/ferroserve-rules.yml
  - $ROOT/deploy/prometheus/slo-rules.yml
scrape_configs:
  - job_name: ferroserve
    static_configs:
      - targets: ["$target"]
        labels:
          namespace: live-test
          pod: ferroserve-0
EOF
    "$PROMETHEUS_BIN" --config.file="$WORK/prometheus.yml" --storage.tsdb.path="$WORK/prometheus-data" \
        --web.listen-address="127.0.0.1:$port" --log.level=warn >"$WORK/prometheus.log" 2>&1 &
    PIDS+=("$!")
    PROM_URL="http://127.0.0.1:$port"
    wait_for "$PROM_URL/-/ready" 30 || { tail -20 "$WORK/prometheus.log" >&2; fail "prometheus did not start"; }
    log "prometheus on $PROM_URL"
}

# prom_query EXPR [TIME]: the result of an instant query as JSON lines, one per series:
# {"metric": {...}, "value": float or "NaN"}. Fails when the query is refused.
prom_query() {
    local args=(--data-urlencode "query=$1")
    [[ -n "${2:-}" ]] && args+=(--data-urlencode "time=$2")
    curl -fsS --max-time 10 "${args[@]}" "$PROM_URL/api/v1/query" | python3 -c '
import json, sys
answer = json.load(sys.stdin)
if answer.get("status") != "success":
    sys.exit("query failed: " + json.dumps(answer))
result = answer["data"]["result"]
if answer["data"]["resultType"] == "scalar":
    result = [{"metric": {}, "value": result}]
for series in result:
    print(json.dumps({"metric": series["metric"], "value": float(series["value"][1])}))
'
}

# prom_value EXPR [TIME]: the value of a query that gives exactly one series.
prom_value() {
    local lines
    lines=$(prom_query "$@") || return 1
    [[ $(printf '%s\n' "$lines" | grep -c .) -eq 1 ]] || { log "expected one series from $1, got: $lines"; return 1; }
    printf '%s\n' "$lines" | python3 -c 'import json, sys; print(json.loads(sys.stdin.read())["value"])'
}

# wait_scraped SECONDS: until Prometheus has scraped ferroserve at least once (its `up` is 1).
wait_scraped() {
    local deadline=$((SECONDS + $1))
    until [[ "$(prom_value 'up{job="ferroserve"}' 2>/dev/null)" == "1.0" ]]; do
        ((SECONDS < deadline)) || fail "prometheus did not scrape ferroserve"
        sleep 0.5
    done
}

# loadtest ARGS...: ferroserve-loadtest against the server, quiet.
loadtest() {
    [[ -x "$FERROSERVE_LOADTEST_BIN" ]] || fail "no ferroserve-loadtest at $FERROSERVE_LOADTEST_BIN (set FERROSERVE_LOADTEST_BIN)"
    "$FERROSERVE_LOADTEST_BIN" --target "$INFERENCE_URL" --quiet "$@"
}
