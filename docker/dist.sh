#!/usr/bin/env bash
# `make dist`: the release binaries and the native libraries that docker/Dockerfile copies into the images, in
# dist/linux-<arch>/ (what the Dockerfile's `dist` stage reads; its `build` stage runs this same script inside a
# rust image). Files of the wheels are hard-linked when they can be, so a dist costs no disk.
#
#   bin/ferroserve        default features (ONNX Runtime and libtorch with CUDA): the cuda image
#   bin/ferroserve-cpu    the same binary without libtorch_cuda among its libraries: libtorch on the CPU only
#   bin/ferroserve-onnx   ONNX Runtime only (`--no-default-features --features onnx`): the slim image
#   lib/onnxruntime/      libonnxruntime (and its CUDA provider when the venv has onnxruntime-gpu)
#   lib/torch-cpu/        libtorch_cpu and what it needs (libc10, libgomp, and the two small CUDA libraries it
#                         names: libcudart, libcupti; they load without a GPU)
#   lib/torch-cuda/       with DIST_CUDA=1: every library of the torch wheel and its nvidia-* wheels
set -euo pipefail
cd "$(dirname "$0")/.."

arch=$(uname -m)
case $arch in
    x86_64) platform=linux-amd64 ;;
    aarch64) platform=linux-arm64 ;;
    *) echo "dist: unsupported architecture $arch" >&2; exit 1 ;;
esac
out=dist/$platform
if ! command -v patchelf >/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq patchelf >/dev/null
fi
torch=$(readlink -f third_party/libtorch)
ort=$(readlink -f third_party/onnxruntime/capi)
rm -rf "$out"
mkdir -p "$out"/bin "$out"/lib/{onnxruntime,torch-cpu}

# Links a file into a folder (a copy when hard links cannot cross file systems).
place() { ln -f "$1" "$2/" 2>/dev/null || cp -f "$1" "$2/"; }

cargo build --release --bin ferroserve
strip --strip-unneeded -o "$out/bin/ferroserve" target/release/ferroserve
cp "$out/bin/ferroserve" "$out/bin/ferroserve-cpu"
# libtorch.so is a stub that pulls in libtorch_cuda (and so every CUDA library); libtorch_cpu is all the CPU
# path uses. The linker keeps both because of --no-as-needed (see engine/libtorch_link.rs).
patchelf --remove-needed libtorch_cuda.so --remove-needed libtorch.so --remove-rpath "$out/bin/ferroserve-cpu"
patchelf --remove-rpath "$out/bin/ferroserve"

cargo build --release --bin ferroserve -p ferroserve --no-default-features --features onnx
strip --strip-unneeded -o "$out/bin/ferroserve-onnx" target/release/ferroserve

for lib in "$ort"/libonnxruntime.so.* "$ort"/libonnxruntime_providers_*.so; do
    [[ -e $lib ]] && place "$lib" "$out/lib/onnxruntime"
done
for lib in libtorch_cpu.so libc10.so libgomp.so.1; do
    place "$torch/lib/$lib" "$out/lib/torch-cpu"
done
for lib in libcudart.so.13 libcupti.so.13; do
    place "$torch/../nvidia/cu13/lib/$lib" "$out/lib/torch-cpu"
done

if [[ ${DIST_CUDA:-0} == 1 ]]; then
    mkdir -p "$out/lib/torch-cuda"
    for lib in "$torch"/lib/*.so* "$torch"/../nvidia/*/lib/*.so*; do
        [[ $(basename "$lib") == libtorch_python.so ]] && continue
        place "$lib" "$out/lib/torch-cuda"
    done
fi
du -shL "$out"/bin/* "$out"/lib/*
