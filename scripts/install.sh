#!/usr/bin/env bash
# Build lazy_disk_cache into ./.venv: create the venv, install maturin and the dev extras,
# compile the Rust extension in place. Idempotent; pass --release for an optimised build.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

profile=()
if [[ "${1:-}" == "--release" ]]; then
    profile=(--release)
fi

python="${PYTHON:-python3}"
if ! command -v "$python" >/dev/null; then
    echo "install.sh: $python not found; set PYTHON to a CPython >= 3.11" >&2
    exit 1
fi
if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    echo "install.sh: $python is $("$python" -V 2>&1); lazy_disk_cache needs CPython >= 3.11" >&2
    exit 1
fi
if ! command -v cargo >/dev/null; then
    echo "install.sh: cargo not found; install a Rust toolchain (rustup) first" >&2
    exit 1
fi

if [[ ! -x .venv/bin/python ]]; then
    "$python" -m venv .venv
    .venv/bin/python -m pip install --quiet --upgrade pip
fi
.venv/bin/python -m pip install --quiet "maturin>=1.9.4,<2"

# A stale in-place build would shadow the freshly installed abi3 module.
rm -f python/lazy_disk_cache/_rust*.so

VIRTUAL_ENV="$PWD/.venv" .venv/bin/maturin develop --locked --extras dev "${profile[@]}" --quiet
