#!/usr/bin/env bash
# `make dist`: the release binaries and the native libraries that docker/Dockerfile copies into the images, in
# dist/linux-<arch>/ (what the Dockerfile's `dist` stage reads; its `build` stage runs this same script inside a
# rust image). Files of the wheels are hard-linked when they can be, so a dist costs no disk.
#
#   bin/ferroserve        default features (ONNX Runtime, and TorchScript through the plugin): the cpu and cuda
#                         images; it links no libtorch (the plugin is opened when a TorchScript model loads)
#   bin/ferroserve-onnx   ONNX Runtime only (`--no-default-features --features onnx`): the slim image
#   lib/onnxruntime/      libonnxruntime; with DIST_CUDA=1 that of onnxruntime-gpu (same version, installed into
#                         a venv of its own under ~/.cache/ferroserve) with its CUDA provider
#   lib/torch-cpu/        the TorchScript plugin (libferroserve_torch.so, its rpath $ORIGIN), libtorch_cpu and what
#                         it needs (libc10, libgomp, and the two small CUDA libraries it names: libcudart, libcupti;
#                         they load without a GPU)
#   lib/torch-cuda/       with DIST_CUDA=1: the plugin and every library of the torch wheel and its nvidia-* wheels
#                         (the plugin opens libtorch_cuda when the machine has a CUDA GPU)
#
# DIST_PROFILE=dev takes the debug binaries instead of the release ones (`make test` builds its images so, from the
# binaries its tests already built: the images' layout, user, libraries and answers are checked without a release
# build of its own); the images users build come from the release profile.
#
# DIST_ARCH=arm64 on an x86-64 host cross-builds the slim binary only (Debian's gcc-aarch64-linux-gnu links it;
# libonnxruntime comes from PyPI's aarch64 wheel): libtorch is not cross-built (see README, Containers).
set -euo pipefail
cd "$(dirname "$0")/.."

# The onnxruntime version of the linked wheel: the cross build and the cuda build take the same one.
ort_version=$(basename "$(readlink -f third_party/onnxruntime/capi/libonnxruntime.so.*)")
ort_version=${ort_version#libonnxruntime.so.}
host=$(dpkg --print-architecture)
arch=${DIST_ARCH:-$host}
out=dist/linux-$arch
if [[ $arch != "$host" ]]; then
    [[ $arch == arm64 && $host == amd64 ]] || { echo "dist: cannot cross-build $arch on $host" >&2; exit 1; }
    command -v aarch64-linux-gnu-gcc >/dev/null \
        || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq gcc-aarch64-linux-gnu >/dev/null
    rustup target list --installed | grep -qx aarch64-unknown-linux-gnu || rustup target add aarch64-unknown-linux-gnu
    wheels=${FERRO_CACHE:-$HOME/.cache/ferroserve}/wheels-arm64
    ls "$wheels"/onnxruntime-"$ort_version"-*aarch64.whl >/dev/null 2>&1 \
        || python3 -m pip download --quiet --no-deps --only-binary=:all: --platform manylinux_2_28_aarch64 \
            --python-version 3.11 "onnxruntime==$ort_version" -d "$wheels"
    rm -rf "$out"
    mkdir -p "$out"/bin "$out"/lib/onnxruntime
    cargo build --release --target aarch64-unknown-linux-gnu --bin ferroserve -p ferroserve \
        --no-default-features --features onnx
    aarch64-linux-gnu-strip --strip-unneeded -o "$out/bin/ferroserve-onnx" \
        target/aarch64-unknown-linux-gnu/release/ferroserve
    python3 - "$wheels"/onnxruntime-"$ort_version"-*aarch64.whl "$out/lib/onnxruntime" <<'PY'
import os, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as wheel:
    for name in wheel.namelist():
        if name.startswith("onnxruntime/capi/libonnxruntime"):
            target = os.path.join(sys.argv[2], os.path.basename(name))
            with open(target, "wb") as out:
                out.write(wheel.read(name))
PY
    du -sh "$out"/bin/* "$out"/lib/*
    exit 0
fi
if ! command -v patchelf >/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq patchelf >/dev/null
fi
torch=$(readlink -f third_party/libtorch)
ort=$(readlink -f third_party/onnxruntime/capi)
rm -rf "$out"
mkdir -p "$out"/bin "$out"/lib/{onnxruntime,torch-cpu}

# Links a file into a folder (a copy when hard links cannot cross file systems).
place() { ln -f "$1" "$2/" 2>/dev/null || cp -f "$1" "$2/"; }

profile=${DIST_PROFILE:-release}
case $profile in
    release) built=target/release ;;
    dev) built=target/debug ;;
    *) echo "dist: DIST_PROFILE is release or dev, not $profile" >&2; exit 1 ;;
esac
cargo build --profile "$profile" -p ferroserve -p ferroserve-torch-plugin --lib --bin ferroserve
strip --strip-unneeded -o "$out/bin/ferroserve" "$built/ferroserve"
# The plugin names libtorch_cpu and libc10 only (libtorch_cuda it opens itself on a GPU machine); in the images
# they lie beside it.
plugin=$out/lib/libferroserve_torch.so
strip --strip-unneeded -o "$plugin" "$built/libferroserve_torch.so"
patchelf --set-rpath '$ORIGIN' "$plugin"

cargo build --profile "$profile" --bin ferroserve -p ferroserve --no-default-features --features onnx
strip --strip-unneeded -o "$out/bin/ferroserve-onnx" "$built/ferroserve"

for lib in "$ort"/libonnxruntime.so.* "$ort"/libonnxruntime_providers_*.so; do
    [[ -e $lib ]] && place "$lib" "$out/lib/onnxruntime"
done
cp "$plugin" "$out/lib/torch-cpu/"
for lib in libtorch_cpu.so libc10.so libgomp.so.1; do
    place "$torch/lib/$lib" "$out/lib/torch-cpu"
done
for lib in libcudart.so.13 libcupti.so.13; do
    place "$torch/../nvidia/cu13/lib/$lib" "$out/lib/torch-cpu"
done

if [[ ${DIST_CUDA:-0} == 1 ]]; then
    gpu_venv=${FERRO_CACHE:-$HOME/.cache/ferroserve}/venv-ort-gpu-$ort_version
    if [[ ! -f $gpu_venv/.stamp ]]; then
        python3 -m venv "$gpu_venv"
        "$gpu_venv/bin/pip" install --quiet --no-deps "onnxruntime-gpu==$ort_version"
        touch "$gpu_venv/.stamp"
    fi
    rm -f "$out"/lib/onnxruntime/*
    for lib in "$gpu_venv"/lib/python3*/site-packages/onnxruntime/capi/libonnxruntime*.so*; do
        place "$lib" "$out/lib/onnxruntime"
    done
    mkdir -p "$out/lib/torch-cuda"
    cp "$plugin" "$out/lib/torch-cuda/"
    for lib in "$torch"/lib/*.so* "$torch"/../nvidia/*/lib/*.so*; do
        [[ $(basename "$lib") == libtorch_python.so ]] && continue
        place "$lib" "$out/lib/torch-cuda"
    done
fi
rm "$plugin"
du -shL "$out"/bin/* "$out"/lib/*
