#!/usr/bin/env bash
# The project's test command (README.md): the whole test suite in release mode.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --release
