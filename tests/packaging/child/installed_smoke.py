"""Child: exercise an installed lazy_disk_cache once through an entry and once through a store; report JSON.

Usage: installed_smoke.py WORKDIR
Run with ``python -I`` from outside the source tree, so only the installed package can be imported.
Prints where the package and its native module were imported from, the version, and what the
entry and the store gave back.
"""

import json
import sys
from pathlib import Path

import numpy as np

import lazy_disk_cache
from lazy_disk_cache import DiskBackedNDArray, DiskBackedStore, LazyDiskCacheConfig, _rust


def main() -> None:
    workdir = Path(sys.argv[1])
    source = np.arange(64 * 1024, dtype=np.float64).reshape(256, 256)

    entry = DiskBackedNDArray(source.copy(), enable_caching=True, cache_path=workdir / "entry")
    entry.offload()
    dat = entry.cache_path
    assert dat is not None, "an entry given a cache_path keeps it"
    offloaded_file = {"name": dat.name, "size": dat.stat().st_size}
    entry.load()
    entry_matches = bool(np.array_equal(np.multiply(entry, 2.0), source * 2.0))

    config = LazyDiskCacheConfig(enable_caching=True, cache_path=workdir / "store", purge_disk_on_gc=False)
    store = DiskBackedStore[DiskBackedNDArray](config=config, factory=DiskBackedNDArray)
    store.add_data_to_store("grid", source)
    store.add_data_to_store("labels", np.arange(10, dtype=np.int32))
    store.offload(pickle_container=True)
    del store
    reopened = DiskBackedStore[DiskBackedNDArray](config=config, factory=DiskBackedNDArray)
    store_matches = bool(
        np.array_equal(reopened["grid"].data, source)
        and np.array_equal(reopened["labels"].data, np.arange(10, dtype=np.int32))
    )

    report = {
        "package_file": lazy_disk_cache.__file__,
        "native_file": _rust.__file__,
        "version": lazy_disk_cache.__version__,
        "offloaded_file": offloaded_file,
        "entry_matches": entry_matches,
        "store_keys": sorted(reopened.keys()),
        "store_files": sorted(path.name for path in (workdir / "store").iterdir()),
        "store_matches": store_matches,
    }
    sys.stdout.write(json.dumps(report) + "\n")


if __name__ == "__main__":
    main()
