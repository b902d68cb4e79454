"""Child: spill entries while RLIMIT_FSIZE makes every file write fail; report JSON.

Usage: budget_full_disk.py STORE_DIRECTORY (the spill directory goes to TMPDIR, set by the test)

Two kinds of entries are spilled under a limit of 64 KiB per file: entries without caching (their
spill file cannot be written) and entries reopened from a store with written copy-on-write pages
(their ``.dat`` cannot be materialised). CPython ignores SIGXFSZ, so the limit surfaces as EFBIG.
The child reports the warnings the budget raised, whether every entry kept its data in RAM,
what was left on disk, and whether spilling works once the limit is lifted.
"""

import json
import os
import resource
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from budget_fakes import FakeClock, InjectedLimit, injected_budget
from lazy_disk_cache import DiskBackedNDArray, DiskBackedStore, LazyDiskCacheConfig
from lazy_disk_cache._budget import BACKOFF_FIRST_SECONDS, MemoryBudgetWarning
from lazy_disk_cache._spill_dir import current_spill_dir

ELEMENTS = 128 * 1024  # 1 MiB of float64 per entry
ENTRY_BYTES = ELEMENTS * 8
COUNT = 8  # 8 MiB against a 10 MiB limit: over the 70 % threshold
FILE_LIMIT = 64 * 1024


def _values(index: int) -> NDArray[np.float64]:
    return np.arange(ELEMENTS, dtype=np.float64) * (index + 1)


def _reopened_entries(directory: Path) -> list[DiskBackedNDArray]:
    config = LazyDiskCacheConfig(cache_path=directory, enable_caching=True)
    writer: DiskBackedStore[DiskBackedNDArray] = DiskBackedStore(config=config, factory=DiskBackedNDArray)
    for index in range(COUNT):
        writer.add_data_to_store(f"k{index}", _values(index))
    writer.offload(pickle_container=True)
    for index in range(COUNT):
        (directory / f"k{index}.dat").unlink(missing_ok=True)
    store: DiskBackedStore[DiskBackedNDArray] = DiskBackedStore(config=config, factory=DiskBackedNDArray)
    entries = [store[f"k{index}"] for index in range(COUNT)]
    for entry in entries:
        entry.data[:] += 1.0  # private copy-on-write pages
    return entries


def _expected(kind: str, index: int) -> NDArray[np.float64]:
    return _values(index) + (1.0 if kind == "reopened" else 0.0)


def _spill_under_the_limit(kind: str, directory: Path) -> dict[str, Any]:
    limit, clock = InjectedLimit(100 * ENTRY_BYTES), FakeClock()
    with injected_budget(limit, clock=clock) as ledger:
        entries = [DiskBackedNDArray(_values(index)) for index in range(COUNT)] if kind == "ram" else []
        if kind == "reopened":
            entries = _reopened_entries(directory)
        limit.limit = 10 * ENTRY_BYTES  # now over the threshold
        ledger.configure(ledger.settings)
        soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
        resource.setrlimit(resource.RLIMIT_FSIZE, (FILE_LIMIT, hard))
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                ledger.check()
                clock.advance(BACKOFF_FIRST_SECONDS * 1.1)
                ledger.check()  # the backoff has expired: the same entries fail again
        finally:
            resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        failed = ledger.stats()
        spill_dir = current_spill_dir()
        report = {
            "warnings": [str(item.message) for item in caught if issubclass(item.category, MemoryBudgetWarning)],
            "spill_failures": failed.spill_failures,
            "spilled_while_full": failed.spilled_count,
            "all_in_memory": not any(entry.offloaded or entry.spilled for entry in entries),
            "managed_bytes": failed.managed_bytes,
            "left_in_spill_dir": sorted(os.listdir(spill_dir)) if spill_dir is not None else [],
            "dat_files": sorted(path.name for path in directory.glob("*.dat*")),
            "data_intact": all(np.array_equal(entry.data, _expected(kind, i)) for i, entry in enumerate(entries)),
        }
        clock.advance(BACKOFF_FIRST_SECONDS * 2.2)  # past the doubled backoff
        ledger.check()
        report["spilled_after"] = ledger.stats().spilled_count
        report["data_after"] = all(np.array_equal(np.asarray(e), _expected(kind, i)) for i, e in enumerate(entries))
        return report


def main() -> None:
    directory = Path(sys.argv[1])
    report = {kind: _spill_under_the_limit(kind, directory / kind) for kind in ("ram", "reopened")}
    sys.stdout.write(json.dumps(report))


if __name__ == "__main__":
    main()
