"""Child: keep NumPy views of a mapping alive while its owner goes away; read and write them after.

Usage: lifetime_views.py SCENARIO DIRECTORY

Each scenario drops, offloads, purges, re-converts or collects the owner of a mapping (an entry,
a store, a store's private directory) while views of it are alive, runs ``gc.collect()``, then
reads (and where the mapping is writable, writes) every view. It prints a JSON report of the
checks. Run under ``-X faulthandler``: an unmap under a live view would be a SIGSEGV or SIGBUS
with a traceback on stderr, which the test reports.
"""

import gc
import json
import pickle
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from lazy_disk_cache.disk_backed_ndarray import DiskBackedNDArray
from lazy_disk_cache.disk_backed_store import DiskBackedStore
from lazy_disk_cache.lazy_disk_cache import LazyDiskCacheConfig
from lazy_disk_cache.paths import LOCK_FILE_NAME

Store = DiskBackedStore[DiskBackedNDArray]
ROWS, COLUMNS = 2048, 64


def value(offset: int = 0) -> NDArray[np.float64]:
    return np.arange(ROWS * COLUMNS, dtype=np.float64).reshape(ROWS, COLUMNS) + offset


def views_of(entry: DiskBackedNDArray) -> dict[str, NDArray[Any]]:
    """Every kind of view a user can hold: the live memmap, slices, copies=False, frombuffer."""
    data = entry.data
    return {
        "data": data,
        "slice": entry[1:3],
        "column": data[:, 5],
        "asarray-no-copy": np.asarray(entry, copy=False),
        "transposed": data.T,
        "frombuffer": np.frombuffer(data.data.cast("B"), dtype=np.float64),
    }


def collect() -> None:
    for _ in range(3):
        gc.collect()


def read_all(views: dict[str, NDArray[Any]], offset: int) -> dict[str, bool]:
    expected = value(offset)
    full = {
        "data": expected,
        "slice": expected[1:3],
        "column": expected[:, 5],
        "asarray-no-copy": expected,
        "transposed": expected.T,
        "frombuffer": expected.reshape(-1),
    }
    return {f"{name} reads": bool(np.array_equal(view, full[name])) for name, view in views.items()}


def write_through(views: dict[str, NDArray[Any]]) -> dict[str, bool]:
    view = views["data"]
    if not view.flags.writeable:
        return {}
    view[7, 7] = -1.0
    return {"write visible in other views": bool(views["frombuffer"][7 * COLUMNS + 7] == -1.0)}


def entry_collected(directory: Path) -> dict[str, bool]:
    entry = DiskBackedNDArray(value(), cache_path=directory / "e", enable_caching=True)
    views = views_of(entry)
    del entry
    collect()
    return {**read_all(views, 0), **write_through(views), "dat purged": not (directory / "e.dat").exists()}


def after_offload(directory: Path) -> dict[str, bool]:
    entry = DiskBackedNDArray(value(), cache_path=directory / "e", enable_caching=True, purge_disk_on_gc=False)
    views = views_of(entry)
    entry.offload()
    collect()
    checks = read_all(views, 0)
    views["data"][0, 0] = 42.0
    entry.load()
    checks["a write after offload reaches the next load"] = bool(entry.data[0, 0] == 42.0)
    return checks


def after_purge(directory: Path) -> dict[str, bool]:
    store = _store(directory)
    store.add_data_to_store("k", value())
    views = views_of(store["k"])
    store.purge("k")
    del store
    collect()
    return {
        **read_all(views, 0),
        **write_through(views),
        # The key lock file is the directory's, not the key's: it stays.
        "files gone": sorted(p.name for p in directory.iterdir() if p.name != LOCK_FILE_NAME) == [],
    }


def after_reconversion(directory: Path) -> dict[str, bool]:
    entry = DiskBackedNDArray(value(), cache_path=directory / "e", enable_caching=True)
    views = views_of(entry)
    entry.disable_caching()
    entry.data[...] = value(1)
    entry.enable_caching()
    collect()
    return {
        **read_all(views, 0),
        **write_through(views),
        "the entry holds the new value": bool(np.array_equal(entry.data, value(1))),
    }


def store_collected(directory: Path) -> dict[str, bool]:
    del directory  # The store makes its own private directory and removes it when collected.
    store = _store(None)
    private = store.cache_dir
    store.add_data_to_store("k", value())
    views = views_of(store["k"])
    del store
    collect()
    return {**read_all(views, 0), **write_through(views), "private directory removed": not private.exists()}


def reloaded_copy_on_write(directory: Path) -> dict[str, bool]:
    store = _store(directory)
    store.add_data_to_store("k", value())
    store.offload("k", pickle_container=True)
    reloaded = _store(directory)["k"]
    views = views_of(reloaded)
    del reloaded, store
    collect()
    checks = {**read_all(views, 0), **write_through(views)}
    checks["the stored pair is unchanged"] = bool(np.array_equal(np.load(directory / "k.npy"), value()))
    return checks


def unpickled_copy(directory: Path) -> dict[str, bool]:
    entry = DiskBackedNDArray(value(), cache_path=directory / "e", enable_caching=True)
    copy: DiskBackedNDArray = pickle.loads(pickle.dumps(entry))
    views = views_of(copy)
    del copy, entry
    collect()
    return {**read_all(views, 0), **write_through(views)}


def stray_close(directory: Path) -> dict[str, bool]:
    entry = DiskBackedNDArray(value(), cache_path=directory / "e", enable_caching=True)
    views = views_of(entry)
    refused = False
    try:
        views["slice"]._mmap.close()  # type: ignore[attr-defined]
    except AttributeError:
        refused = True
    del entry
    collect()
    return {**read_all(views, 0), "close() on the view's mapping is refused": refused}


def flush_after_owner(directory: Path) -> dict[str, bool]:
    entry = DiskBackedNDArray(value(), cache_path=directory / "e", enable_caching=True, purge_disk_on_gc=False)
    view = entry.data
    assert isinstance(view, np.memmap)
    del entry
    collect()
    view[3, 3] = -3.0
    view.flush()
    written = np.fromfile(directory / "e.dat", dtype=np.float64).reshape(ROWS, COLUMNS)
    return {"flush after the owner died persists": bool(written[3, 3] == -3.0)}


def threads_race(directory: Path) -> dict[str, bool]:
    """A reader thread hammers old views while the owner offloads, reloads, re-converts and dies."""
    entry = DiskBackedNDArray(value(), cache_path=directory / "e", enable_caching=True)
    views = views_of(entry)
    stop = threading.Event()
    sums: list[float] = []

    def reader() -> None:
        while not stop.is_set():
            sums.append(float(views["column"].sum() + views["slice"].sum()))

    thread = threading.Thread(target=reader)
    thread.start()
    for round_ in range(20):
        entry.offload()
        entry.load("r" if round_ % 2 else "c")
        entry.disable_caching()
        entry.enable_caching()
    del entry
    collect()
    stop.set()
    thread.join()
    expected = float(value()[:, 5].sum() + value()[1:3].sum())
    return {"the reader ran": len(sums) > 0, "every read saw the old value": all(total == expected for total in sums)}


def views_alive_at_exit(directory: Path) -> dict[str, bool]:
    entry = DiskBackedNDArray(value(), cache_path=directory / "e", enable_caching=True)
    _KEEP_UNTIL_EXIT.extend(views_of(entry).values())
    _KEEP_UNTIL_EXIT.append(entry)
    return read_all(views_of(entry), 0)


_KEEP_UNTIL_EXIT: list[object] = []


def _store(directory: Path | None) -> Store:
    config = LazyDiskCacheConfig(cache_path=directory, enable_caching=True)
    return DiskBackedStore[DiskBackedNDArray](config=config, factory=DiskBackedNDArray)


SCENARIOS: dict[str, Callable[[Path], dict[str, bool]]] = {
    "entry-collected": entry_collected,
    "after-offload": after_offload,
    "after-purge": after_purge,
    "after-reconversion": after_reconversion,
    "store-collected": store_collected,
    "reloaded-copy-on-write": reloaded_copy_on_write,
    "unpickled-copy": unpickled_copy,
    "stray-close": stray_close,
    "flush-after-owner": flush_after_owner,
    "threads-race": threads_race,
    "views-alive-at-exit": views_alive_at_exit,
}


def main() -> None:
    scenario, directory = sys.argv[1], Path(sys.argv[2])
    checks = SCENARIOS[scenario](directory)
    sys.stdout.write(json.dumps(checks))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
