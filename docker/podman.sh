#!/usr/bin/env bash
# Builds and runs ferroserve's images on a machine without Docker and without a container registry: Debian's
# podman (as root) with a base image made locally by mmdebstrap. Sourced by docker/image-test.sh; also usable by
# hand: `source docker/podman.sh && podman_setup && base_image`, then `podman build --pull=never ...`.
#
# What this machine needs, found by trying (podman 4.3, hybrid cgroups):
#  - runc, not crun (crun rejects the hybrid cgroup setup); cgroup_manager "cgroupfs"; events to a file;
#  - ulimits capped at 16384 (podman's default asks more than the sandbox allows);
#  - a `debian:bookworm-slim` made from the mirror apt already uses (mmdebstrap), imported under Docker Hub's name
#    so that an unchanged `FROM debian:bookworm-slim` builds with `--pull=never`. Air-gapped users do the same.
#  - Debian's docker-compose 1.29 drives podman's Docker-compatible API socket (`podman system service`), with
#    DOCKER_BUILDKIT=0 (the socket speaks the classic build API).
set -euo pipefail

FERRO_CACHE=${FERRO_CACHE:-$HOME/.cache/ferroserve}
PODMAN_STATE=${PODMAN_STATE:-$FERRO_CACHE/podman}
export CONTAINERS_CONF=$PODMAN_STATE/containers.conf
PODMAN_SOCKET=$PODMAN_STATE/podman.sock

# Installs podman, runc, mmdebstrap and docker-compose when missing, and writes containers.conf.
podman_setup() {
    local missing=()
    command -v podman >/dev/null || missing+=(podman)
    command -v runc >/dev/null || missing+=(runc)
    command -v mmdebstrap >/dev/null || missing+=(mmdebstrap)
    if ((${#missing[@]})); then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
    if ! command -v docker-compose >/dev/null; then
        # Without recommends: the docker.io engine it recommends cannot run here.
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends docker-compose >/dev/null
    fi
    mkdir -p "$PODMAN_STATE"
    cat >"$CONTAINERS_CONF" <<CONF
[containers]
default_ulimits = ["nofile=16384:16384", "nproc=16384:16384"]

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
CONF
}

# The mirror apt uses (first URIs of debian.sources, else of sources.list).
apt_mirror() {
    local uri
    uri=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
    [[ -n $uri ]] || uri=$(awk '$1 == "deb" {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
    echo "${uri:-http://deb.debian.org/debian}"
}

# Makes (once, cached as a tarball) and imports debian:bookworm-slim for the host's architecture, or, given
# `arm64` on another host, as localhost/debian-arm64:bookworm-slim (made under qemu-user through binfmt_misc;
# docker/image-test.sh sets that up for IMAGE_TEST_ARM64=1).
base_image() {
    local arch=${1:-$(dpkg --print-architecture)} name=docker.io/library/debian:bookworm-slim
    [[ $arch == "$(dpkg --print-architecture)" ]] || name=localhost/debian-$arch:bookworm-slim
    local tarball=$FERRO_CACHE/images/debian-bookworm-slim-$arch.tar
    if podman image exists "$name"; then
        return
    fi
    if [[ ! -s $tarball ]]; then
        mkdir -p "$(dirname "$tarball")"
        mmdebstrap --quiet --format=tar --variant=apt --architectures="$arch" --include=ca-certificates bookworm \
            "$tarball.part" "deb $(apt_mirror) bookworm main"
        mv "$tarball.part" "$tarball"
    fi
    podman import --quiet --arch "$arch" --change 'CMD ["bash"]' "$tarball" "$name" >/dev/null
}

# Lets this x86-64 host run arm64 binaries (qemu-user through binfmt_misc): for the arm64 base image and for
# running the arm64 image under emulation.
arm64_emulation() {
    if [[ ! -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]]; then
        command -v qemu-aarch64-static >/dev/null \
            || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq qemu-user-static binfmt-support >/dev/null
        mountpoint -q /proc/sys/fs/binfmt_misc || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
        update-binfmts --enable qemu-aarch64
    fi
}

# Starts podman's Docker-compatible API (for docker-compose) unless it already answers; exports DOCKER_HOST.
podman_service() {
    export DOCKER_HOST=unix://$PODMAN_SOCKET DOCKER_BUILDKIT=0 COMPOSE_DOCKER_CLI_BUILD=0
    if curl -sf --unix-socket "$PODMAN_SOCKET" http://d/_ping >/dev/null 2>&1; then
        return
    fi
    rm -f "$PODMAN_SOCKET"
    podman system service --time=0 "$DOCKER_HOST" >"$PODMAN_STATE/service.log" 2>&1 &
    PODMAN_SERVICE_PID=$!
    for _ in $(seq 100); do
        curl -sf --unix-socket "$PODMAN_SOCKET" http://d/_ping >/dev/null 2>&1 && return
        sleep 0.1
    done
    echo "podman system service did not start; see $PODMAN_STATE/service.log" >&2
    return 1
}

podman_service_stop() {
    if [[ -n ${PODMAN_SERVICE_PID:-} ]]; then
        kill "$PODMAN_SERVICE_PID" 2>/dev/null || true
        wait "$PODMAN_SERVICE_PID" 2>/dev/null || true
    fi
}
