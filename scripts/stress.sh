#!/usr/bin/env bash
# The long configuration of the reliability suite (tests/reliability): 500 SIGKILLs, 100 power
# cuts per filesystem, every 4 KiB full-disk point of a 1 MiB value, strace faults in fsync,
# rename and pwrite64. Prints every campaign's counts at the end. Extra arguments go to pytest;
# any LDC_* variable already set wins over these defaults (LDC_RELIABILITY_SEED replays a run).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

./scripts/install.sh

report="$(mktemp)"
trap 'rm -f "$report"' EXIT
export LDC_CRASH_ITERATIONS="${LDC_CRASH_ITERATIONS:-500}"
export LDC_POWER_CUTS="${LDC_POWER_CUTS:-100}"
export LDC_FULL_DISK_BYTES="${LDC_FULL_DISK_BYTES:-1048576}"
export LDC_STRACE_SYSCALLS="${LDC_STRACE_SYSCALLS:-fsync,rename,pwrite64}"
export LDC_RELIABILITY_REPORT="$report"

status=0
.venv/bin/python -m pytest tests/reliability -p no:cacheprovider "$@" || status=$?
.venv/bin/python tests/reliability/report_summary.py "$report"
exit "$status"
