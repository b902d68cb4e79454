"""Child: commit a key, purge it, and exit; the test then cuts the power on the filesystem.

Usage: commit_then_purge.py DIRECTORY

Runs in its own process so that no descriptor or mapping keeps the filesystem busy afterwards.
"""

import sys
from pathlib import Path

import numpy as np

from lazy_disk_cache.disk_backed_ndarray import DiskBackedNDArray
from lazy_disk_cache.disk_backed_store import DiskBackedStore
from lazy_disk_cache.lazy_disk_cache import LazyDiskCacheConfig


def main() -> None:
    config = LazyDiskCacheConfig(cache_path=Path(sys.argv[1]), enable_caching=True, purge_disk_on_gc=False)
    store = DiskBackedStore[DiskBackedNDArray](config=config, factory=DiskBackedNDArray)
    store.add_data_to_store("k", np.arange(1000))
    store.offload("k", pickle_container=True)
    store.purge("k")


if __name__ == "__main__":
    main()
