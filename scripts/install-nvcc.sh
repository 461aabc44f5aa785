#!/usr/bin/env bash
# Installs the pinned CUDA 13.0 nvcc toolchain from PyPI wheels into the project-local prefix
# `.tools/cuda` (git-ignored). build.rs finds nvcc there without any environment variable:
#   .tools/cuda/nvidia/cu13/bin/nvcc
#
# The versions are pinned EXACTLY and must move together: nvcc, cicc (nvidia-nvvm), the crt
# headers and the runtime headers of different 13.0.x patch releases emit PTX that a 13.0 driver
# rejects ("unsupported PTX version").  No GPU and no system CUDA are needed; the wheels are
# plain files (Linux x86_64, glibc >= 2.17).
#
# Usage: bash scripts/install-nvcc.sh [PREFIX]     (default PREFIX: <repo>/.tools/cuda)
# Re-running is cheap: an install whose stamp matches the pins is kept.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PREFIX="${1:-$ROOT/.tools/cuda}"
PYTHON="${PYTHON:-python3}"

PINS=(
  "nvidia-cuda-nvcc==13.0.88"
  "nvidia-nvvm==13.0.88"
  "nvidia-cuda-crt==13.0.88"
  "nvidia-cuda-runtime==13.0.96"
  "nvidia-cuda-cccl==13.0.85"
)
STAMP="$PREFIX/.hcn-nvcc-pins"
NVCC="$PREFIX/nvidia/cu13/bin/nvcc"

if [[ -x "$NVCC" && -f "$STAMP" && "$(cat "$STAMP")" == "${PINS[*]}" ]]; then
  echo "install-nvcc: already installed: $NVCC"
  "$NVCC" --version | tail -n 2
  exit 0
fi

if ! "$PYTHON" -m pip --version >/dev/null 2>&1; then
  echo "install-nvcc: '$PYTHON -m pip' is not available; install pip (or set PYTHON=...)" >&2
  exit 1
fi

# A fresh prefix: pip --target does not remove files of an older version.
rm -rf "$PREFIX"
mkdir -p "$PREFIX"
# --no-deps: the pins above are the whole closure; letting pip resolve dependencies could pull a
# different patch release of one component and produce the mixed toolchain described above.
"$PYTHON" -m pip install --disable-pip-version-check --no-deps --only-binary=:all: \
  --target "$PREFIX" "${PINS[@]}"

if [[ ! -x "$NVCC" ]]; then
  echo "install-nvcc: nvcc not found at $NVCC after install; wheel layout changed?" >&2
  exit 1
fi
echo "${PINS[*]}" > "$STAMP"
echo "install-nvcc: installed $NVCC"
"$NVCC" --version | tail -n 2
