"""Child: load every key of a store whose directory this process may not write.

Usage: store_readonly_load.py CACHE_DIR [UID]
With UID the child first drops to that user (it must start as root). Logs go to stderr at
DEBUG. Prints one JSON object per key: its values, whether its buffer was writeable, and the
outcome of offload / load("r") / load("c") / load("r+").
"""

import json
import logging
import os
import sys
from pathlib import Path

import numpy as np

from lazy_disk_cache.disk_backed_ndarray import DiskBackedNDArray
from lazy_disk_cache.disk_backed_store import DiskBackedStore
from lazy_disk_cache.lazy_disk_cache import LazyDiskCacheConfig


def _outcome(entry: DiskBackedNDArray) -> dict[str, object]:
    report: dict[str, object] = {
        "values": np.asarray(entry).tolist(),
        "cache_enabled": entry.cache_enabled,
        "writeable": bool(entry.data.flags.writeable),
        "cache_path": str(entry.cache_path),
    }
    if not entry.cache_enabled:
        return report
    entry.offload()
    report["offloaded"] = entry.offloaded
    entry.load("r")
    report["load_r"] = np.asarray(entry).tolist()
    entry.offload()
    entry.load("c")
    entry.data[...] = 0
    report["load_c_writeable"] = bool(entry.data.flags.writeable)
    entry.offload()
    try:
        entry.load("r+")
    except PermissionError as exc:
        report["load_r_plus"] = type(exc).__name__
    else:
        report["load_r_plus"] = "loaded"
    return report


def main() -> None:
    cache_dir = Path(sys.argv[1])
    if len(sys.argv) > 2:
        os.setgid(int(sys.argv[2]))
        os.setuid(int(sys.argv[2]))
    logging.basicConfig(stream=sys.stderr, level=logging.DEBUG)
    config = LazyDiskCacheConfig(cache_path=cache_dir, enable_caching=True)
    store = DiskBackedStore[DiskBackedNDArray](config=config, factory=DiskBackedNDArray)
    result = {key: _outcome(store[key]) for key in store.keys()}
    sys.stdout.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
