"""Child: build a store in a private temporary directory, keep it alive until exit, print the directory.

Usage: store_exit_tempdir.py purge|keep
"""

import sys

import numpy as np

from lazy_disk_cache.disk_backed_ndarray import DiskBackedNDArray
from lazy_disk_cache.disk_backed_store import DiskBackedStore
from lazy_disk_cache.lazy_disk_cache import LazyDiskCacheConfig

KEEP_ALIVE: list[DiskBackedStore[DiskBackedNDArray]] = []


def main() -> None:
    config = LazyDiskCacheConfig(enable_caching=True, purge_disk_on_gc=sys.argv[1] == "purge")
    store = DiskBackedStore[DiskBackedNDArray](config=config, factory=DiskBackedNDArray)
    store.add_data_to_store("k", np.arange(3))
    store.offload(pickle_container=True)
    KEEP_ALIVE.append(store)
    sys.stdout.write(f"{store.cache_dir}\n")


if __name__ == "__main__":
    main()
