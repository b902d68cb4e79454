#!/usr/bin/env bash
# Static checks, the same ones CI runs: rustfmt, clippy, ruff, mypy --strict and stubtest.
# Expects ./scripts/install.sh to have run (scripts/test.sh does).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

export PYO3_BUILD_EXTENSION_MODULE=1
if cargo fmt --version >/dev/null 2>&1; then
    cargo fmt --all --check
else
    echo "lint.sh: WARNING: rustfmt is not installed; skipping cargo fmt --check" >&2
fi
if cargo clippy --version >/dev/null 2>&1; then
    cargo clippy --workspace --all-targets --all-features --locked -- -D warnings
else
    echo "lint.sh: WARNING: clippy is not installed; skipping cargo clippy" >&2
fi

.venv/bin/ruff check python tests bench
.venv/bin/ruff format --check python tests bench
.venv/bin/mypy --strict python tests bench
.venv/bin/python -m mypy.stubtest lazy_disk_cache._rust --allowlist scripts/stubtest-allowlist.txt
