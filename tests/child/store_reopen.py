"""Child: reopen a store directory written by another process and dump every key's array.

Usage: store_reopen.py CACHE_DIR OUT_NPZ
Writes OUT_NPZ with one array per key (named by the key) and prints the keys as JSON.
"""

import json
import sys
from pathlib import Path

import numpy as np

from lazy_disk_cache.disk_backed_ndarray import DiskBackedNDArray
from lazy_disk_cache.disk_backed_store import DiskBackedStore
from lazy_disk_cache.lazy_disk_cache import LazyDiskCacheConfig


def main() -> None:
    cache_dir, out = Path(sys.argv[1]), Path(sys.argv[2])
    config = LazyDiskCacheConfig(cache_path=cache_dir, enable_caching=True)
    store = DiskBackedStore[DiskBackedNDArray](config=config, factory=DiskBackedNDArray)
    arrays = {key: np.asarray(store[key]) for key in store.keys()}
    with open(out, "wb") as handle:
        np.savez(handle, **arrays)  # type: ignore[arg-type]
    sys.stdout.write(json.dumps(store.keys()) + "\n")


if __name__ == "__main__":
    main()
