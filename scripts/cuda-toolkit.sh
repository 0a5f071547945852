#!/usr/bin/env bash
# Installs what `cargo build --features cuda` needs -- CUDA's compiler, headers and the libraries candle links --
# from NVIDIA's PyPI wheels into DIR (outside the repository), with no GPU and no system CUDA, and writes DIR/env.sh.
#
#   scripts/cuda-toolkit.sh DIR            # compiler + headers + link libraries (~700 MB, for a full build)
#   scripts/cuda-toolkit.sh --check DIR    # compiler + headers only (~150 MB, enough for `cargo check`)
#   source DIR/env.sh && cargo build --release --features cuda
#
# CUDA 13.0 is pinned: PTX that a newer nvcc writes is refused by older drivers, and 13.0 runs on every driver
# from 580 on. The GPU target is CUDA_COMPUTE_CAP (default 90, Hopper: H100/H200). For other cards set it before
# sourcing env.sh: 80 A100/A30, 86 RTX 30xx/A10/A40, 89 RTX 40xx/L4/L40S, 75 T4/RTX 20xx (no bf16 kernels below 80),
# 100/120 Blackwell. PTX built for a lower capability also runs on newer cards (the driver compiles it at load).
#
# At run time the binary needs the driver (libcuda.so.1) and CUDA 13's libcudart, libcublas, libcublasLt,
# libcurand and libnvrtc on the library path: DIR/env.sh's LD_LIBRARY_PATH, or a PyTorch/CuPy install's
# site-packages/nvidia/cu13/lib (scripts/gpu-check.sh looks there).
set -euo pipefail

check_only=0
if [ "${1:-}" = "--check" ]; then check_only=1; shift; fi
if [ $# -ne 1 ]; then
    echo "usage: $0 [--check] DIR" >&2
    exit 2
fi
mkdir -p "$1"
dir=$(cd "$1" && pwd)
site="$dir/site"
root="$site/nvidia/cu13"

packages=(
    "nvidia-cuda-nvcc==13.0.88" "nvidia-nvvm==13.0.88" "nvidia-cuda-crt==13.0.88"
    "nvidia-cuda-runtime==13.0.96" "nvidia-cuda-cccl==13.0.85"
)
if [ $check_only = 0 ]; then
    packages+=("nvidia-cuda-nvrtc==13.0.88" "nvidia-cublas>=13.0,<13.1" "nvidia-curand>=10.4.0,<10.4.1")
fi
# A second run with the same packages installs nothing (CI keeps DIR between runs).
stamp="$dir/installed.txt"
if [ "$(cat "$stamp" 2>/dev/null)" != "${packages[*]}" ]; then
    echo "cuda-toolkit: installing ${#packages[@]} NVIDIA wheels into $site" >&2
    rm -f "$stamp"
    python3 -m pip install --quiet --disable-pip-version-check --no-deps --upgrade --target "$site" "${packages[@]}"
    echo "${packages[*]}" >"$stamp"
fi

# The wheels keep versioned sonames only (libcublas.so.13); the linker looks for libcublas.so.
cd "$root/lib"
for lib in lib*.so.*; do
    [ -e "$lib" ] || continue
    base="${lib%%.so.*}.so"
    [ -e "$base" ] || ln -s "$lib" "$base"
done
[ -e "$root/lib64" ] || ln -s lib "$root/lib64"

# libcuda.so is the driver: no wheel carries it. Linking needs only its symbol names, so build a stub from
# cuda.h (what the CUDA toolkit's lib64/stubs/libcuda.so is); at run time the real driver's libcuda.so.1 is used.
if [ $check_only = 0 ] && [ ! -e "$root/lib/stubs/libcuda.so" ]; then
    mkdir -p "$root/lib/stubs"
    cc -E -P -I"$root/include" -x c "$root/include/cuda.h" \
        | grep -oE '\bcu[A-Z][A-Za-z0-9_]*[[:space:]]*\(' | tr -d ' (' | sort -u \
        | sed 's/.*/void &(void) {}/' >"$root/lib/stubs/libcuda_stub.c"
    cc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$root/lib/stubs/libcuda.so" "$root/lib/stubs/libcuda_stub.c"
fi

cat >"$dir/env.sh" <<EOF
# Written by codec-rs scripts/cuda-toolkit.sh: source before \`cargo build --features cuda\`.
export CUDA_ROOT="$root" CUDA_PATH="$root" CUDA_HOME="$root"
export PATH="$root/bin:\$PATH"
export LIBRARY_PATH="$root/lib:$root/lib/stubs\${LIBRARY_PATH:+:\$LIBRARY_PATH}"
export LD_LIBRARY_PATH="$root/lib\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}"
export CUDA_COMPUTE_CAP="\${CUDA_COMPUTE_CAP:-90}"
EOF
echo "cuda-toolkit: done; now: source $dir/env.sh && cargo build --release --features cuda" >&2
"$root/bin/nvcc" --version | tail -2 >&2
