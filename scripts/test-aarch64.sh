#!/usr/bin/env bash
# The aarch64 build and its NEON kernels, on an x86-64 Debian/Ubuntu machine: cross-compiles the
# library (no CLI/service features) for aarch64-unknown-linux-gnu with Debian's cross gcc as the
# linker and runs, under qemu-user, the library's unit tests and the SIMD-level and parity tests
# (tests/simd_levels.rs asserts that NEON is available and detected there, so the NEON kernels
# are the ones checked against f64 and the fixtures).
#
# Installs what it lacks, idempotently: the rustup target; the apt packages gcc-aarch64-linux-gnu,
# libc6-dev-arm64-cross and qemu-user (as root, or through sudo). Build outputs go to
# target/aarch64 (kept apart from the host build). Extra arguments go to `cargo test`, e.g.
#   bash scripts/test-aarch64.sh                     # what scripts/test.sh runs
#   bash scripts/test-aarch64.sh -- some_test_name   # a filter
set -euo pipefail
cd "$(dirname "$0")/.."

TARGET=aarch64-unknown-linux-gnu
SYSROOT=/usr/aarch64-linux-gnu

echo "== aarch64: toolchain"
if ! rustup target list --installed | grep -qx "$TARGET"; then
    rustup target add "$TARGET"
fi

missing=()
command -v aarch64-linux-gnu-gcc >/dev/null || missing+=(gcc-aarch64-linux-gnu)
[ -e "$SYSROOT/lib/libc.so.6" ] && [ -e "$SYSROOT/include/stdio.h" ] || missing+=(libc6-dev-arm64-cross)
command -v qemu-aarch64 >/dev/null || missing+=(qemu-user)
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ]; then
        sudo=()
    elif command -v sudo >/dev/null; then
        sudo=(sudo)
    else
        echo "need the packages ${missing[*]} (not root, no sudo)" >&2
        exit 1
    fi
    export DEBIAN_FRONTEND=noninteractive
    # A fresh machine may have no package lists yet: update only when the install fails.
    if ! "${sudo[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}"; then
        "${sudo[@]}" apt-get update -q
        "${sudo[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}"
    fi
fi

export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="qemu-aarch64 -L $SYSROOT"
# No debug info for this build: faster to compile and link, and nobody profiles under qemu.
export CARGO_PROFILE_RELEASE_DEBUG=0

echo "== aarch64: cargo test --release --target $TARGET --no-default-features (under qemu-aarch64)"
start=$SECONDS
cargo test --release --target "$TARGET" --target-dir target/aarch64 --no-default-features \
    --lib --test simd_levels --test parity "$@"
echo "== aarch64: passed in $((SECONDS - start)) s"
