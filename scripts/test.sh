#!/usr/bin/env bash
# The project's test command (README.md), also what CI runs:
#   1. the whole suite on the CPU build (no CUDA anywhere);
#   2. the `cuda` feature: installs the pinned nvcc wheels (scripts/install-nvcc.sh) so build.rs
#      compiles every kernel for every listed arch, then runs the suite again, which executes every
#      kernel under the CPU emulation (and on a GPU when one is present).
# Set HCN_SKIP_CUDA=1 to run only step 1.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== cargo test --release"
cargo test --release

if [ "${HCN_SKIP_CUDA:-0}" != "1" ]; then
    echo "== cargo test --release --features cuda"
    bash scripts/install-nvcc.sh
    cargo test --release --features cuda
fi
