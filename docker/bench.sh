#!/usr/bin/env bash
# The bundled model's throughput in the cpu image against the same binary outside it, back to back, same load:
# wrk over loopback, one connection per client, at concurrency 1 and 64, alternating host and container ROUNDS
# times. Both use the image's configuration (docker/config.properties: 2 workers, batchSize 16, 2 ms); the
# container has no CPU limit, so both get the same cores. Needs `make dist` and the ferroserve:cpu image
# (`make image-test` builds it).
#   bash docker/bench.sh        Env: DURATION (default 10s), ROUNDS (2)
set -euo pipefail
cd "$(dirname "$0")/.."
source docker/podman.sh
source benches/server.sh
podman_setup

DURATION=${DURATION:-10s}
ROUNDS=${ROUNDS:-2}
dist=dist/linux-amd64
name=ferroserve-bench
command -v wrk >/dev/null || apt-get install -y -qq wrk >/dev/null
work=$(mktemp -d)
server_pid=
cleanup() {
    [[ -n $server_pid ]] && kill "$server_pid" 2>/dev/null
    podman rm -f -t 0 "$name" >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT
write_post_lua "$work/post.lua"

measure() {
    local where=$1 addr=$2
    wrk -t1 -c16 -d2s -s "$work/post.lua" "http://$addr/predictions/signnet" >/dev/null
    for c in 1 64; do
        local out
        out=$(wrk -t1 -c"$c" -d"$DURATION" --latency -s "$work/post.lua" "http://$addr/predictions/signnet")
        printf '%-10s %-12s %12s %10s %10s %8s\n' "$where" "$c" "$(awk '/Requests\/sec/ {print $2}' <<<"$out")" \
            "$(awk '/^ +50%/ {print $2}' <<<"$out")" "$(awk '/^ +99%/ {print $2}' <<<"$out")" \
            "$(awk '/Non-2xx/ {print $5}' <<<"$out" | grep . || echo 0)"
    done
}

# The image's own settings, minus what only makes sense inside it.
image_settings=$(grep -v -E '^(inference|management|metrics)_address|^model_store|^load_models|^key_file' \
    docker/config.properties)
printf '%-10s %-12s %12s %10s %10s %8s\n' where concurrency "req/s" p50 p99 errors
for _ in $(seq "$ROUNDS"); do
    FERROSERVE_TORCH_PLUGIN=$dist/lib/torch-cpu/libferroserve_torch.so ORT_DYLIB_PATH=$(ls "$dist"/lib/onnxruntime/libonnxruntime.so.*) \
        start_server "$work" "$dist/bin/ferroserve" "$image_settings"
    measure host "$inference"
    kill "$server_pid"
    wait "$server_pid" 2>/dev/null || true
    server_pid=

    podman run -d --name "$name" --read-only -p 127.0.0.1::8080 ferroserve:cpu >/dev/null 2>>"$work/podman.log"
    addr=$(podman port "$name" 8080/tcp)
    for _ in $(seq 300); do curl -sf -o /dev/null "http://$addr/ping" && break; sleep 0.1; done
    measure container "$addr"
    podman rm -f -t 30 "$name" >/dev/null 2>>"$work/podman.log"
done
