# Sourced by the benchmark scripts: starts the release server on the bundled model, every API on a free port,
# and prepares wrk (wrk_bench_setup, at the end).
#
# start_server WORK BIN EXTRA [SCHEME]: writes WORK/config.properties (ports 0, models/, signnet, the key file in
# WORK) followed by the config lines EXTRA, starts BIN, waits until it listens, and sets server_pid and the
# addresses inference, management and metrics (HOST:PORT). SCHEME https serves the inference API over TLS (EXTRA
# then names the key and certificate). Exits with the server's log when it does not start.
start_server() {
    local work=$1 bin=$2 extra=$3 scheme=${4:-http}
    printf '%s\n' "inference_address=$scheme://127.0.0.1:0" "management_address=http://127.0.0.1:0" \
        "metrics_address=http://127.0.0.1:0" "grpc_inference_port=0" "grpc_management_port=0" "model_store=models" "load_models=signnet" \
        "key_file=$work/key_file.json" "$extra" > "$work/config.properties"
    # Emptied first: the redirection below happens in the child, after this shell may already read the log.
    : > "$work/server.log"
    "$bin" --ts-config "$work/config.properties" 2> "$work/server.log" &
    server_pid=$!
    for _ in $(seq 100); do
        grep -q "metrics API on" "$work/server.log" && break
        sleep 0.1
    done
    inference=$(sed -n 's/.*inference API on https\{0,1\}:\/\///p' "$work/server.log")
    management=$(sed -n 's/.*management API on http:\/\///p' "$work/server.log")
    metrics=$(sed -n 's/.*metrics API on http:\/\///p' "$work/server.log")
    if [ -z "$metrics" ]; then
        cat "$work/server.log" >&2
        exit 1
    fi
}

# write_post_lua FILE: the wrk script that POSTs the bundled example (models/signnet/example.json) as JSON.
write_post_lua() {
    cat > "$1" <<LUA
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local f = assert(io.open("models/signnet/example.json", "rb"))
wrk.body = f:read("*a")
f:close()
LUA
}

# wrk_bench_setup BIN: checks for wrk (installs Debian's package when it can), then bench_setup BIN.
wrk_bench_setup() {
    if ! command -v wrk >/dev/null; then
        echo "installing wrk (Debian package)" >&2
        apt-get install -y -qq wrk >/dev/null || { echo "wrk is needed: apt-get install wrk" >&2; exit 1; }
    fi
    bench_setup "$1"
}

# bench_setup BIN: checks for BIN, makes the folder `work` (removed on exit, with the server still running, if
# any) and work/post.lua (write_post_lua).
bench_setup() {
    local bin=$1
    [ -x "$bin" ] || { echo "build first: make build" >&2; exit 1; }
    work=$(mktemp -d)
    server_pid=
    trap '[ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null; rm -rf "$work"' EXIT
    write_post_lua "$work/post.lua"
}
