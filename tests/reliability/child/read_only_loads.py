"""Child: build a cache directory, or load everything from it once it is read-only; report JSON.

Usage: read_only_loads.py build DIRECTORY ENTRY_PICKLE
       read_only_loads.py check DIRECTORY ENTRY_PICKLE

``build`` (run with write access) stores entries of several kinds, offloads a standalone entry to
``e.dat`` and pickles it to ENTRY_PICKLE, and leaves a stale temp behind. ``check`` (run without
write access to DIRECTORY: another user, root without CAP_DAC_OVERRIDE, or a read-only mount)
opens a store, loads every key and the pickled entry in every read mode, checks the writing modes
are refused, and checks that nothing in the directory was created, changed or removed.
"""

import errno
import hashlib
import json
import os
import pickle
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from lazy_disk_cache.disk_backed_ndarray import DiskBackedNDArray
from lazy_disk_cache.disk_backed_store import DiskBackedStore
from lazy_disk_cache.lazy_disk_cache import LazyDiskCacheConfig

Store = DiskBackedStore[DiskBackedNDArray]
REFUSED_WRITE_ERRNOS = frozenset({errno.EACCES, errno.EPERM, errno.EROFS})

VALUES: dict[str, Callable[[], NDArray[Any]]] = {
    "cached": lambda: np.arange(600, dtype="<f8").reshape(20, 30),
    "structured": lambda: np.array([(1.5, 2), (3.5, 4)], dtype=[("x", "<f4"), ("n", ">i8")]),
    "empty": lambda: np.zeros((0, 3), dtype="<i2"),
    "scalar": lambda: np.array(7.25),
    "caf\u00e9": lambda: np.arange(5, dtype="<u1"),
    "in-ram": lambda: np.arange(40, dtype="<i4").reshape(8, 5),
    "auto": lambda: np.arange(9, dtype="<c16"),
}
# Flags the entries were stored with (sidecar flags win on reload).
OVERRIDES: dict[str, dict[str, bool]] = {
    "in-ram": {"enable_caching_override": False},
    "auto": {"automatic_offloading_override": True},
}


def _store(directory: Path) -> Store:
    config = LazyDiskCacheConfig(cache_path=directory, enable_caching=True, purge_disk_on_gc=False)
    return DiskBackedStore[DiskBackedNDArray](config=config, factory=DiskBackedNDArray)


def build(directory: Path, entry_pickle: Path) -> dict[str, bool]:
    store = _store(directory)
    for key, make in VALUES.items():
        store.add_data_to_store(key, make(), **OVERRIDES.get(key, {}))
    store.__getstate__()  # Writes every cached entry as its pair; the in-RAM one gets a pair below.
    store._store_entry("in-ram", store["in-ram"])
    entry = DiskBackedNDArray(
        VALUES["cached"](), cache_path=directory / "e", enable_caching=True, purge_disk_on_gc=False
    )
    entry_pickle.write_bytes(pickle.dumps(entry))
    (directory / "cached.npy.tmp").write_bytes(b"a stale temp the sweep cannot remove here")
    return {"built": True}


def listing(directory: Path) -> dict[str, tuple[int, int, str]]:
    return {
        path.name: (path.stat().st_size, path.stat().st_mtime_ns, hashlib.sha256(path.read_bytes()).hexdigest())
        for path in sorted(directory.iterdir())
    }


def refused(call: Callable[[], object]) -> bool:
    """Whether ``call`` is refused with a permission-type OSError (and not something worse)."""
    try:
        call()
    except OSError as exc:
        return exc.errno in REFUSED_WRITE_ERRNOS
    return False


def check_keys(store: Store) -> dict[str, bool]:
    checks = {"every key is adopted": sorted(store.keys()) == sorted(VALUES)}
    for key, make in VALUES.items():
        loaded = np.asarray(store[key])
        expected = make()
        same = loaded.dtype == expected.dtype and loaded.shape == expected.shape and np.array_equal(loaded, expected)
        checks[f"{key} loads"] = bool(same)
    cached = store["cached"]
    checks["a cached key is mapped read-only"] = cached.cache_enabled and not cached.data.flags.writeable
    cached.offload()
    checks["offload only drops the buffer"] = cached.offloaded
    for mode in ("r", "c"):
        cached.load(mode)
        checks[f"load({mode!r}) reads the value"] = bool(np.array_equal(cached.data, VALUES["cached"]()))
        cached.offload()
    checks["load('r+') is refused"] = refused(lambda: cached.load("r+"))
    checks["load('w+') is refused"] = refused(lambda: cached.load("w+"))
    checks["a miss is still a miss"] = store.get("missing") is None
    return checks


def check_entry(entry_pickle: Path) -> dict[str, bool]:
    entry: DiskBackedNDArray = pickle.loads(entry_pickle.read_bytes())
    checks = {}
    for mode in ("r", "c"):
        entry.load(mode)
        checks[f"a pickled entry loads with {mode!r}"] = bool(np.array_equal(entry.data, VALUES["cached"]()))
        entry.offload()
    checks["a pickled entry refuses load('r+')"] = refused(lambda: entry.load("r+"))
    return checks


def check(directory: Path, entry_pickle: Path) -> dict[str, bool]:
    before = listing(directory)
    checks = {"the directory refuses writes": not os.access(directory, os.W_OK)}
    checks.update(check_keys(_store(directory)))
    checks.update(check_entry(entry_pickle))
    checks["nothing was created, changed or removed"] = listing(directory) == before
    return checks


def main() -> None:
    command, directory, entry_pickle = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
    report = build(directory, entry_pickle) if command == "build" else check(directory, entry_pickle)
    sys.stdout.write(json.dumps(report))


if __name__ == "__main__":
    main()
