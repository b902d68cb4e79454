"""Child: stage, group-commit and convert new values over old ones; report the first OSError as JSON.

Usage: strace_commit.py DIRECTORY

Run under ``strace -e inject=...``: the injected syscall failure ends the sequence, and the test
reads both this report and the trace. DIRECTORY already holds the old pairs of ``a``, ``b``, ``c``
and the old ``e.dat``.
"""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fault_values import new_value

from lazy_disk_cache.disk_backed_ndarray import DiskBackedNDArray
from lazy_disk_cache.disk_backed_store import DiskBackedStore
from lazy_disk_cache.lazy_disk_cache import LazyDiskCacheConfig

KEYS = ("a", "b", "c")


def main() -> None:
    directory = Path(sys.argv[1])
    config = LazyDiskCacheConfig(cache_path=directory, enable_caching=True, purge_disk_on_gc=True)
    store = DiskBackedStore[DiskBackedNDArray](config=config, factory=DiskBackedNDArray)
    step = "stage"
    try:
        for key in KEYS:
            del store[key]
            store.add_data_to_store(key, new_value(key))
        step = "commit"
        store.offload(list(KEYS), pickle_container=True)
        step = "convert"
        DiskBackedNDArray(new_value("e"), cache_path=directory / "e", enable_caching=True, purge_disk_on_gc=False)
    except OSError as exc:
        report = {"step": step, "errno": exc.errno, "filename": exc.filename, "filename2": exc.filename2}
    else:
        report = {"step": None}
    sys.stdout.write(json.dumps(report))


if __name__ == "__main__":
    main()
