"""Child: more entry data than the memory limit allows, under the default memory budget; report JSON.

Usage: budget_workload.py MODE DIRECTORY COUNT MIB

MODE ``ram`` creates COUNT entries of MIB MiB each without caching, one after another, then
checks every value. ``store-write`` writes COUNT keys of MIB MiB into a store in DIRECTORY (one
commit per key). ``store-modify`` reopens that store, adds 1 in place to every key's array (each
entry's copy-on-write pages become private), counts the ``.dat`` files spilling materialised,
then checks every value. Values are a function of the key's index and the element's position,
regenerated in small chunks to check them bit for bit without holding a second copy. The report
has the phases' seconds, whether every value matched, and the budget's statistics. Nothing here
configures the budget.
"""

import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from lazy_disk_cache import DiskBackedNDArray, DiskBackedStore, LazyDiskCacheConfig, memory_stats

CHECK_ELEMENTS = 1 << 20  # regenerate 8 MiB at a time to compare


def _values(index: int, start: int, stop: int) -> NDArray[np.uint64]:
    values = np.arange(start, stop, dtype=np.uint64)
    values *= np.uint64(2 * index + 1)
    values ^= np.uint64(index)
    return values


def _matches(array: NDArray[Any], index: int, added: int) -> bool:
    flat = array.reshape(-1)
    for start in range(0, flat.size, CHECK_ELEMENTS):
        stop = min(start + CHECK_ELEMENTS, flat.size)
        expected = _values(index, start, stop)
        expected += np.uint64(added)
        if not np.array_equal(flat[start:stop], expected):
            return False
    return True


def _ram(count: int, elements: int) -> dict[str, Any]:
    started = time.perf_counter()
    entries = [DiskBackedNDArray(_values(index, 0, elements)) for index in range(count)]
    created = time.perf_counter()
    mismatched = [index for index, entry in enumerate(entries) if not _matches(entry.data, index, 0)]
    checked = time.perf_counter()
    return {"create_seconds": created - started, "check_seconds": checked - created, "mismatched": mismatched}


def _store(directory: Path) -> DiskBackedStore[DiskBackedNDArray]:
    config = LazyDiskCacheConfig(cache_path=directory, enable_caching=True)
    return DiskBackedStore(config=config, factory=DiskBackedNDArray)


def _store_write(directory: Path, count: int, elements: int) -> dict[str, Any]:
    started = time.perf_counter()
    store = _store(directory)
    for index in range(count):
        store.add_data_to_store(f"k{index}", _values(index, 0, elements))
        store.offload(f"k{index}", pickle_container=True)
    return {"write_seconds": time.perf_counter() - started, "mismatched": []}


def _store_modify(directory: Path, count: int) -> dict[str, Any]:
    started = time.perf_counter()
    store = _store(directory)
    for index in range(count):
        data = store[f"k{index}"].data
        np.add(data, np.uint64(1), out=data)
        del data
    modified = time.perf_counter()
    materialised = len(list(directory.glob("*.dat")))
    spilled = memory_stats().spilled_count  # a batch counts at its end; the check below may spill more
    mismatched = [index for index in range(count) if not _matches(store[f"k{index}"].data, index, 1)]
    return {
        "modify_seconds": modified - started,
        "check_seconds": time.perf_counter() - modified,
        "mismatched": mismatched,
        "materialised": materialised,
        "spilled_before_check": spilled,
    }


def main() -> None:
    mode, directory, count, mib = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    elements = mib * 2**20 // 8
    if mode == "ram":
        report = _ram(count, elements)
    elif mode == "store-write":
        report = _store_write(directory, count, elements)
    elif mode == "store-modify":
        report = _store_modify(directory, count)
    else:
        raise SystemExit(f"unknown mode {mode!r}")
    stats = memory_stats()
    report.update(
        enabled=stats.enabled,
        limit=stats.limit,
        limit_source=stats.limit_source,
        spilled_count=stats.spilled_count,
        spilled_bytes=stats.spilled_bytes,
        spill_failures=stats.spill_failures,
    )
    sys.stdout.write(json.dumps(report))


if __name__ == "__main__":
    main()
