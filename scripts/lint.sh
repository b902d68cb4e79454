#!/usr/bin/env bash
# Static checks, the same ones CI runs: rustfmt, clippy, ruff, mypy --strict and stubtest.
# Expects ./scripts/install.sh to have run (scripts/test.sh does).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

export PYO3_BUILD_EXTENSION_MODULE=1
# A green lint must mean rustfmt and clippy ran: a missing tool is a failure, never a skip.
for tool in fmt clippy; do
    if ! cargo "$tool" --version >/dev/null 2>&1; then
        echo "lint.sh: cargo $tool is not installed (rustup component add ${tool/fmt/rustfmt})" >&2
        exit 1
    fi
done
cargo fmt --all --check
cargo clippy --workspace --all-targets --all-features --locked -- -D warnings

.venv/bin/ruff check python tests bench
.venv/bin/ruff format --check python tests bench
.venv/bin/mypy --strict python tests bench
.venv/bin/python -m mypy.stubtest lazy_disk_cache._rust --allowlist scripts/stubtest-allowlist.txt
