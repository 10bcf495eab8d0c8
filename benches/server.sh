# Sourced by the benchmark scripts: starts the release server on the bundled model, every API on a free port.
#
# start_server WORK BIN EXTRA: writes WORK/config.properties (ports 0, models/, signnet, the key file in WORK)
# followed by the config lines EXTRA, starts BIN, waits until it listens, and sets server_pid and the addresses
# inference, management and metrics (HOST:PORT). Exits with the server's log when it does not start.
start_server() {
    local work=$1 bin=$2 extra=$3
    printf '%s\n' "inference_address=http://127.0.0.1:0" "management_address=http://127.0.0.1:0" \
        "metrics_address=http://127.0.0.1:0" "model_store=models" "load_models=signnet" \
        "key_file=$work/key_file.json" "$extra" > "$work/config.properties"
    "$bin" --ts-config "$work/config.properties" 2> "$work/server.log" &
    server_pid=$!
    for _ in $(seq 100); do
        grep -q "metrics API on" "$work/server.log" && break
        sleep 0.1
    done
    inference=$(sed -n 's/.*inference API on http:\/\///p' "$work/server.log")
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
