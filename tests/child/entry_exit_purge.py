"""Child: build a cached entry, keep it alive until interpreter exit, print its .dat path.

Usage: entry_exit_purge.py CACHE_PATH purge|keep
"""

import sys
from pathlib import Path

import numpy as np

from lazy_disk_cache.disk_backed_ndarray import DiskBackedNDArray

KEEP_ALIVE: list[DiskBackedNDArray] = []


def main() -> None:
    cache_path, policy = Path(sys.argv[1]), sys.argv[2]
    entry = DiskBackedNDArray(
        np.arange(5, dtype=np.int64), cache_path=cache_path, enable_caching=True, purge_disk_on_gc=policy == "purge"
    )
    entry.offload()
    KEEP_ALIVE.append(entry)
    sys.stdout.write(f"{entry.cache_path}\n")


if __name__ == "__main__":
    main()
