#!/usr/bin/env bash
# Build into ./.venv, then run every Rust and Python test. Any failure fails the script,
# including pytest's exit code 5 (nothing collected).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

./scripts/install.sh

# The cdylib is built by maturin; cargo test must not try to link libpython.
export PYO3_BUILD_EXTENSION_MODULE=1
cargo test --workspace --all-features --locked

.venv/bin/python -m pytest "$@"
