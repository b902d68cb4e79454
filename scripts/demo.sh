#!/usr/bin/env bash
# Build an optimised lazy_disk_cache into ./.venv and run the demo.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

./scripts/install.sh --release
.venv/bin/python -m lazy_disk_cache demo
