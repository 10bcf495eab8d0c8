#!/bin/sh
# Assembles, in /rootfs, the whole file system of one ferroserve image: the binary of the variant, the native
# libraries it loads, the C and C++ runtime they need (found with ldd, so nothing else of Debian comes along),
# a passwd naming the non-root user 65532, the default config and the bundled model. Runs in the Dockerfile's
# rootfs stage, on Debian, with dist/ copied to /dist and the config and models under /src.
#
#   rootfs.sh slim|cpu|cuda
set -eu
variant=$1
root=/rootfs
app=$root/opt/ferroserve

case $variant in
    slim) binary=ferroserve-onnx; libs="onnxruntime" ;;
    cpu) binary=ferroserve; libs="onnxruntime torch-cpu" ;;
    cuda) binary=ferroserve; libs="onnxruntime torch-cuda" ;;
    *) echo "rootfs.sh: unknown variant $variant (slim, cpu or cuda)" >&2; exit 2 ;;
esac

mkdir -p "$app/bin" "$app/lib" "$root/etc" "$root/config" "$root/models" "$root/var/lib/ferroserve" "$root/tmp"
cp /dist/bin/$binary "$app/bin/ferroserve"
for dir in $libs; do
    if [ ! -d "/dist/lib/$dir" ]; then
        echo "rootfs.sh: /dist/lib/$dir is missing (the $variant image needs it; see docker/dist.sh)" >&2
        exit 1
    fi
    cp -a "/dist/lib/$dir/." "$app/lib/"
done
# ORT_DYLIB_PATH names this link, whatever version the wheel was.
ln -s "$(cd "$app/lib" && ls libonnxruntime.so.* | head -n 1)" "$app/lib/libonnxruntime.so"

# The system libraries of the binary and of every bundled library, with the dynamic loader, at their own paths.
for file in "$app/bin/ferroserve" "$app"/lib/*.so*; do
    LD_LIBRARY_PATH=$app/lib ldd "$file" 2>/dev/null | awk '
        $2 == "=>" && $3 ~ /^\// { print $3 }
        $1 ~ /^\// { print $1 }'
done | sort -u | while read -r lib; do
    case $lib in "$app"/*) continue ;; esac
    mkdir -p "$root$(dirname "$lib")"
    cp -L "$lib" "$root$lib"
done
# The loader as the binaries name it (PT_INTERP), which ldd may print under another path.
for loader in /lib64/ld-linux-x86-64.so.2 /lib/ld-linux-aarch64.so.1; do
    if [ -e "$loader" ] && [ ! -e "$root$loader" ]; then
        mkdir -p "$root$(dirname "$loader")"
        cp -L "$loader" "$root$loader"
    fi
done

# A root and a non-root user (distroless's numbers); the server runs as the second.
printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' \
    >"$root/etc/passwd"
printf 'root:x:0:\nnonroot:x:65532:\n' >"$root/etc/group"
mkdir -p "$root/home/nonroot"
cp /src/docker/config.properties "$root/config/config.properties"
cp -a /src/models/. "$root/models/"
# The slim image cannot run TorchScript: leave only what it serves.
if [ "$variant" = slim ]; then
    find "$root/models" -name '*.pt' -o -name '*.pt.json' | xargs -r rm -f
fi
find "$root/models" -name '*.py' -delete
chown -R 65532:65532 "$root/var/lib/ferroserve" "$root/home/nonroot"
chmod 1777 "$root/tmp"
