#!/usr/bin/env bash
# install_cuda_toolchain.sh — install a CUDA 13.0 nvcc without root, from PyPI,
# into the project-local, git-ignored folder .cuda/ (next to Cargo.toml).
#
#   bash tools/install_cuda_toolchain.sh          # install (idempotent)
#   bash tools/install_cuda_toolchain.sh --force  # reinstall
#
# Layout after install:
#   .cuda/pkgs/nvidia/cu13/bin/nvcc          nvcc, ptxas, fatbinary, nvlink, cudafe++ ...
#   .cuda/pkgs/nvidia/cu13/nvvm/bin/cicc     front end (from nvidia-nvvm)
#   .cuda/pkgs/nvidia/cu13/include           cuda_runtime.h, crt/, cuda_fp16.h, cccl ...
#   .cuda/pkgs/nvidia/cu13/lib               libcudart (never linked: we only build fatbins)
#   .cuda/nvcc                               wrapper that build.rs finds first in .cuda/
#
# The PyPI wheels all unpack into one prefix (nvidia/cu13) so nvcc's default
# nvcc.profile (TOP = bin/.., INCLUDES = -I$(TOP)/include, cicc under
# $(TOP)/nvvm/bin) already resolves its own includes, cicc, ptxas and crt. The
# script verifies this by compiling a small kernel to a fatbin and fails loudly
# otherwise. No venv is needed: plain `python3 -m pip install --target`.
#
# build.rs looks for nvcc in: $NVCC, $CUDA_HOME/bin, $CUDA_PATH/bin, PATH, then
# .cuda/pkgs/nvidia/cu13/bin/nvcc (this install).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CUDA_DIR="$ROOT/.cuda"
PKGS="$CUDA_DIR/pkgs"
PREFIX="$PKGS/nvidia/cu13"
NVCC="$PREFIX/bin/nvcc"
PYTHON="${PYTHON:-python3}"
STAMP="$CUDA_DIR/.installed-13.0.88"

FORCE=0
if [[ "${1:-}" == "--force" ]]; then FORCE=1; fi

# nvcc preprocesses every .cu with the host compiler, even for device-only
# fatbins: without gcc/g++ it stops with "Failed to preprocess host compiler
# properties".  (Debian/Ubuntu: apt-get install g++; or point NVCC_CCBIN at one.)
if [[ -z "${NVCC_CCBIN:-}" ]] && ! command -v gcc > /dev/null 2>&1; then
    echo "warning: no gcc on PATH; nvcc needs a host C++ compiler (apt-get install g++, or set NVCC_CCBIN)" >&2
fi

check_toolchain() {
    # Compile a tiny kernel with fp16/bf16 headers to a fatbin (sm_80 SASS +
    # compute_90 PTX). Exercises nvcc → cudafe++ → cicc → ptxas → fatbinary.
    local tmp
    tmp="$(mktemp -d)"
    cat > "$tmp/probe.cu" <<'CU'
#include <cuda_fp16.h>
#include <cuda_bf16.h>
extern "C" __global__ void probe(float* y, const __half* a, const __nv_bfloat16* b, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] = __half2float(a[i]) + __bfloat162float(b[i]) + erff(y[i]);
}
CU
    if ! "$NVCC" -std=c++17 -O3 --fatbin \
        -gencode arch=compute_80,code=sm_80 -gencode arch=compute_90,code=compute_90 \
        -o "$tmp/probe.fatbin" "$tmp/probe.cu" > "$tmp/log" 2>&1; then
        cat "$tmp/log" >&2
        rm -rf "$tmp"
        return 1
    fi
    rm -rf "$tmp"
    return 0
}

if [[ $FORCE -eq 0 && -f "$STAMP" && -x "$NVCC" ]] && check_toolchain; then
    echo "CUDA toolchain already installed in $CUDA_DIR"
else
    echo "Installing CUDA 13.0 nvcc from PyPI into $PKGS ..."
    rm -rf "$PKGS" "$STAMP"
    mkdir -p "$PKGS"
    PIP_ROOT_USER_ACTION=ignore "$PYTHON" -m pip install --disable-pip-version-check --no-input --quiet \
        --no-deps --target "$PKGS" \
        'nvidia-cuda-nvcc==13.0.88' \
        'nvidia-cuda-runtime==13.0.*' \
        'nvidia-cuda-crt==13.0.*' \
        'nvidia-nvvm==13.0.*' \
        'nvidia-cuda-cccl==13.0.*'
    if [[ ! -x "$NVCC" ]]; then
        echo "error: nvcc not found at $NVCC after install; the wheel layout changed?" >&2
        find "$PKGS" -maxdepth 4 -name 'nvcc*' >&2 || true
        exit 1
    fi
    # pip --target may drop the executable bit on some pip versions.
    chmod +x "$PREFIX"/bin/* "$PREFIX"/nvvm/bin/* 2>/dev/null || true
    if ! check_toolchain; then
        echo "error: nvcc at $NVCC is installed but cannot compile a probe kernel" >&2
        exit 1
    fi
    touch "$STAMP"
fi

# Convenience wrapper so `.cuda/nvcc` is a stable path.
# Relative, so the checkout can move.
cat > "$CUDA_DIR/nvcc" <<'WRAP'
#!/usr/bin/env bash
exec "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/pkgs/nvidia/cu13/bin/nvcc" "$@"
WRAP
chmod +x "$CUDA_DIR/nvcc"

echo "nvcc: $NVCC"
"$NVCC" --version | tail -n 2
echo
