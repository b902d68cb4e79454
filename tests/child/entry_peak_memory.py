"""Child: convert a 2 GiB float32 array and report the peak extra resident memory as JSON.

Usage: entry_peak_memory.py CACHE_PATH contiguous|transposed

The peak is read from ``VmHWM`` in ``/proc/self/status``. Where the kernel allows it, the
high-water mark is reset (``/proc/self/clear_refs``) just before the conversion, so the figure
covers the conversion alone. The round trip is then checked bit-exactly, piece by piece, after
the measurement (reading the mapping back faults the file pages in).
"""

import json
import sys
from pathlib import Path

import numpy as np

from lazy_disk_cache.disk_backed_ndarray import DiskBackedNDArray

ROWS, COLUMNS = 1 << 15, 1 << 14  # 2**29 float32 values = 2 GiB
COMPARE_ROWS = 1024


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} missing from /proc/self/status")


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def main() -> None:
    cache_path, layout = Path(sys.argv[1]), sys.argv[2]
    if layout == "contiguous":
        source = np.arange(ROWS * COLUMNS, dtype=np.float32).reshape(ROWS, COLUMNS)
    else:
        source = np.arange(ROWS * COLUMNS, dtype=np.float32).reshape(COLUMNS, ROWS).T
    baseline_rss = _status_kib("VmRSS")
    reset = _reset_peak()
    baseline_peak = _status_kib("VmHWM")

    entry = DiskBackedNDArray(source, cache_path=cache_path, enable_caching=True)

    peak = _status_kib("VmHWM")
    extra_kib = peak - (baseline_rss if reset else baseline_peak)
    mapped = entry.data
    exact = all(
        np.array_equal(mapped[start : start + COMPARE_ROWS], source[start : start + COMPARE_ROWS])
        for start in range(0, ROWS, COMPARE_ROWS)
    )
    sys.stdout.write(
        json.dumps(
            {
                "extra_bytes": extra_kib * 1024,
                "peak_reset": reset,
                "c_contiguous_source": bool(source.flags.c_contiguous),
                "nbytes": int(source.nbytes),
                "file_bytes": Path(str(entry.cache_path)).stat().st_size,
                "bit_exact": exact,
            }
        )
    )


if __name__ == "__main__":
    main()
