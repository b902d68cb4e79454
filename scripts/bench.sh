#!/usr/bin/env bash
# Build an optimised lazy_disk_cache into ./.venv and run the full benchmark suite, writing
# docs/benchmarks.md and docs/benchmarks.png, then the dask cases (bench/bench_dask.py, printed).
# Extra arguments go to bench/run.py.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

./scripts/install.sh --release
.venv/bin/python bench/run.py --out docs/benchmarks.md "$@"

.venv/bin/python bench/bench_dask.py
