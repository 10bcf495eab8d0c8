#!/usr/bin/env bash
# The same archive with its own Python handler (server/tests/python_handler: an eager landmark classifier, a state
# dict, a custom handler with pre- and post-processing) under TorchServe 0.12 and under ferroserve, back to back,
# with the same workers, batch settings and closed-loop load (wrk, one connection per concurrent client).
# Prints a Markdown table: throughput, p50 and p99 latency, and the CPU the front end spent per request (the
# TorchServe Java process, the ferroserve process; the Python workers, which run the same handler in both, not
# counted).
# Usage: bash benches/torchserve_compare.sh      (from the repository root, after `make deps` and
#        `cargo build --release --bin ferroserve`)
# Env: DURATION (per run, default 20s), CONCURRENCY (64), WORKERS (Python workers, 2), BATCH (8), DELAY_MS (5),
# BIN (the ferroserve binary, default target/release/ferroserve), VENV (the venv with torchserve 0.12).
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-20s}
CONCURRENCY=${CONCURRENCY:-64}
WORKERS=${WORKERS:-2}
BATCH=${BATCH:-8}
DELAY_MS=${DELAY_MS:-5}
BIN=${BIN:-target/release/ferroserve}
VENV=${VENV:-$HOME/.cache/ferroserve/venv-torch-2.13.0}

command -v wrk >/dev/null || { echo "wrk is needed: apt-get install wrk" >&2; exit 1; }
command -v java >/dev/null || { echo "TorchServe needs a JDK (17): apt-get install openjdk-17-jre-headless" >&2; exit 1; }
[ -x "$BIN" ] || { echo "build first: cargo build --release --bin ferroserve" >&2; exit 1; }
[ -x "$VENV/bin/torchserve" ] || { echo "make deps installs torchserve into $VENV" >&2; exit 1; }

work=$(mktemp -d)
ts_started=
fs_pid=
cleanup() {
    [ -n "$fs_pid" ] && kill "$fs_pid" 2>/dev/null
    [ -n "$ts_started" ] && ts_stop
    rm -rf "$work"
}
trap cleanup EXIT
# TorchServe keeps its pid file in the temporary folder: a private one, so that --stop stops this one only.
ts_stop() { (cd "$work" && TMPDIR="$work" "$VENV/bin/torchserve" --stop >/dev/null 2>&1) || true; }

# The archive, made as the integration test makes it.
mkdir -p "$work/src" "$work/store"
cp server/tests/python_handler/{model.py,sign_handler.py,feature_engineering.py,make_model.py} "$work/src/"
"$VENV/bin/python" "$work/src/make_model.py" "$work/src" 2>/dev/null
"$VENV/bin/torch-model-archiver" --model-name signs --version 1.0 --model-file "$work/src/model.py" \
    --serialized-file "$work/src/model.pt" --handler "$work/src/sign_handler.py" \
    --extra-files "$work/src/feature_engineering.py,$work/src/index_to_name.json" --export-path "$work/store"

source benches/server.sh
write_post_lua "$work/post.lua"

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
models="{\"signs\": {\"1.0\": {\"minWorkers\": $WORKERS, \"maxWorkers\": $WORKERS, \"batchSize\": $BATCH, \
\"maxBatchDelay\": $DELAY_MS, \"responseTimeout\": 120}}}"

# CPU seconds (user + system) process $1 has used, its threads included, its children not.
cpu_seconds() { awk -v hz="$(getconf CLK_TCK)" '{ split($0, a, ") "); split(a[2], f, " "); print (f[12] + f[13]) / hz }' "/proc/$1/stat"; }

wait_ready() {
    for _ in $(seq 600); do
        code=$(curl -s -o /dev/null -w '%{http_code}' -X POST -H 'Content-Type: application/json' \
            --data-binary @models/signnet/example.json "$1" || true)
        [ "$code" = 200 ] && return 0
        sleep 0.5
    done
    echo "no answer from $1" >&2
    return 1
}

# measure NAME URL PID: warm-up, then the run; prints one table row.
measure() {
    local name=$1 url=$2 pid=$3
    wrk -t1 -c16 -d5s -s "$work/post.lua" "$url" >/dev/null
    local before after out
    before=$(cpu_seconds "$pid")
    out=$(wrk -t1 -c"$CONCURRENCY" -d"$DURATION" --latency -s "$work/post.lua" "$url")
    after=$(cpu_seconds "$pid")
    local rps p50 p99 requests errors
    rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
    p50=$(awk '/^ +50%/ {print $2}' <<<"$out")
    p99=$(awk '/^ +99%/ {print $2}' <<<"$out")
    requests=$(awk '/requests in/ {print $1}' <<<"$out")
    errors=$(awk '/Non-2xx/ {print $5}' <<<"$out")
    local per_request
    per_request=$(awk -v a="$after" -v b="$before" -v n="$requests" 'BEGIN { printf "%.3f", (a - b) * 1000 / n }')
    printf '| %s | %s | %s | %s | %s | %s | %s |\n' "$name" "$CONCURRENCY" "$rps" "$p50" "$p99" "$per_request" \
        "${errors:-0}"
}

echo "| server | concurrency | req/s | p50 | p99 | front-end CPU ms/request | non-2xx |"
echo "|---|---|---|---|---|---|---|"

# TorchServe 0.12 (its Java front end, the same Python worker).
ts_ports=($(free_port) $(free_port) $(free_port))
cat > "$work/ts.properties" <<PROPS
inference_address=http://127.0.0.1:${ts_ports[0]}
management_address=http://127.0.0.1:${ts_ports[1]}
metrics_address=http://127.0.0.1:${ts_ports[2]}
model_store=$work/store
load_models=signs.mar
default_workers_per_model=$WORKERS
job_queue_size=1000
disable_token_authorization=true
enable_model_api=false
models=$models
PROPS
(cd "$work" && TMPDIR="$work" LOG_LOCATION="$work/ts-logs" METRICS_LOCATION="$work/ts-logs" \
    PATH="$VENV/bin:$PATH" "$VENV/bin/torchserve" --start --ncs --ts-config "$work/ts.properties" >"$work/ts.out" 2>&1)
ts_started=1
wait_ready "http://127.0.0.1:${ts_ports[0]}/predictions/signs"
ts_pid=$(cat "$work/.model_server.pid")
measure "TorchServe 0.12.0" "http://127.0.0.1:${ts_ports[0]}/predictions/signs" "$ts_pid"
ts_stop
ts_started=
sleep 3

# ferroserve, the same archive and settings.
fs_ports=($(free_port) $(free_port) $(free_port))
cat > "$work/fs.properties" <<PROPS
inference_address=http://127.0.0.1:${fs_ports[0]}
management_address=http://127.0.0.1:${fs_ports[1]}
metrics_address=http://127.0.0.1:${fs_ports[2]}
model_store=$work/store
load_models=signs.mar
default_workers_per_model=$WORKERS
job_queue_size=1000
disable_token_authorization=true
key_file=$work/key_file.json
python_executable=$VENV/bin/python
models=$models
PROPS
"$BIN" --ts-config "$work/fs.properties" 2>"$work/fs.log" &
fs_pid=$!
wait_ready "http://127.0.0.1:${fs_ports[0]}/predictions/signs"
measure "ferroserve" "http://127.0.0.1:${fs_ports[0]}/predictions/signs" "$fs_pid"
