#!/usr/bin/env bash
# The project's test command (README.md), also what CI runs:
#   1. the whole suite on the CPU build (no CUDA anywhere), and the library's dependency tree
#      without the CLI feature (no clap), and deploy/k8s validated (scripts/validate-deploy.sh);
#   2. the `cuda` feature: installs the pinned nvcc wheels (scripts/install-nvcc.sh) so build.rs
#      compiles every kernel for every listed arch, then runs the suite again, which executes every
#      kernel under the CPU emulation (and on a GPU when one is present); then the one-shot GPU
#      check's folder (scripts/gpu-check.sh --prepare: stripped binaries, fixtures, reusing those
#      builds) and its run mode here, which finds no GPU, says so and still writes its report;
#   3. aarch64: the library cross-compiled for aarch64-unknown-linux-gnu, its unit, SIMD-level and
#      parity tests run under qemu-user on the NEON kernels (scripts/test-aarch64.sh, which
#      installs the cross toolchain and qemu when missing).
# Set HCN_SKIP_CUDA=1 to skip step 2, HCN_SKIP_GPU_CHECK=1 to skip only its GPU-check part,
# HCN_SKIP_AARCH64=1 to skip step 3.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== cargo test --release"
cargo test --release

echo "== the library without the CLI feature pulls no clap (embedders' dependency tree)"
cargo build --release --lib --no-default-features
if cargo tree --no-default-features -e normal | grep -q ' clap'; then
    echo "clap is in the library's tree without the cli feature" >&2
    exit 1
fi

echo "== deploy/k8s manifests against the Kubernetes schemas"
bash scripts/validate-deploy.sh

if [ "${HCN_SKIP_CUDA:-0}" != "1" ]; then
    echo "== cargo test --release --features cuda,cuda-emulation"
    bash scripts/install-nvcc.sh
    cargo test --release --features cuda,cuda-emulation
    echo "== cargo build --release --features cuda (what ships: no emulation inside)"
    cargo build --release --features cuda
    if [ "${HCN_SKIP_GPU_CHECK:-0}" != "1" ]; then
        echo "== scripts/gpu-check.sh --prepare (the GPU check's folder, target/gpu-check)"
        bash scripts/gpu-check.sh --prepare
        echo "== scripts/gpu-check.sh without a GPU: the report says why"
        bash scripts/gpu-check.sh --out target/gpu-check-out
        grep -q '"gpu_present": false' target/gpu-check-out/gpu-report.json ||
            grep -q '"gpu_present": true' target/gpu-check-out/gpu-report.json
    fi
fi

if [ "${HCN_SKIP_AARCH64:-0}" != "1" ]; then
    bash scripts/test-aarch64.sh
fi
