"""The ``demo`` command of the command line (``lazy-disk-cache demo``).

The demo walks one large array through the whole life cycle (convert, offload, load, compute) and
a small store through a group commit and a reopen, printing the time, the resident memory and the
files on disk after every step. It works in a private temporary directory that it removes.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from lazy_disk_cache import DiskBackedNDArray, DiskBackedStore, LazyDiskCacheConfig, __version__

__all__ = ["run_demo"]

_MIB = 1024**2


def _rss_mib() -> float:
    """Current resident set size of this process in MiB, read from ``/proc/self/status``."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


@contextmanager
def _step(label: str, out: Callable[[str], object]) -> Iterator[None]:
    start = time.perf_counter()
    yield
    elapsed_ms = (time.perf_counter() - start) * 1000
    out(f"  {label:<54} {elapsed_ms:>9.1f} ms   RSS {_rss_mib():>7.1f} MiB")


def _list_files(directory: Path, out: Callable[[str], object]) -> None:
    for path in sorted(directory.iterdir()):
        out(f"      {path.name:<38} {path.stat().st_size:>12,} bytes")


def run_demo(size_mib: int, out: Callable[[str], object] = print) -> None:
    """Run the demo with an array of ``size_mib`` MiB; ``out`` receives each line of the report."""
    workdir = Path(tempfile.mkdtemp(prefix="lazy_disk_cache-demo-"))
    try:
        out(f"lazy_disk_cache {__version__} demo in {workdir}")
        rows = size_mib * _MIB // (4 * 4)
        rng = np.random.default_rng(7)
        with _step(f"make a {size_mib} MiB float32 ({rows:,}, 4) array", out):
            source = rng.random((rows, 4), dtype=np.float32)
        checksum = float(source.sum(dtype=np.float64))

        out("Single array (DiskBackedNDArray):")
        with _step("convert to a memory-mapped .dat", out):
            entry = DiskBackedNDArray(source, enable_caching=True, cache_path=workdir / "points")
        del source
        with _step("offload (drop the buffer; the data stays in the file)", out):
            entry.offload()
        _list_files(workdir, out)
        with _step("load (map the file, reads no data)", out):
            entry.load()
        with _step("ufunc over the whole array (first touch)", out):
            scaled = np.multiply(entry, 2.0)
        if float(scaled.sum(dtype=np.float64)) != 2 * checksum:
            raise SystemExit("demo: the reloaded data does not match what was written")
        out(f"      sum after reload matches: {checksum:,.3f}")
        del scaled

        out("Store (DiskBackedStore, one group commit):")
        store_dir = workdir / "store"
        config = LazyDiskCacheConfig(enable_caching=True, cache_path=store_dir, purge_disk_on_gc=False)
        store: DiskBackedStore[DiskBackedNDArray] = DiskBackedStore(config=config, factory=DiskBackedNDArray)
        with _step("add three keys", out):
            store.add_data_to_store("points", np.asarray(entry.data))
            store.add_data_to_store("labels", np.arange(rows // 64, dtype=np.int32))
            store.add_data_to_store("origin", np.zeros(3))
        with _step("offload all three, durably, in one commit", out):
            store.offload(pickle_container=True)
        _list_files(store_dir, out)
        del store
        with _step("reopen the store and map every key", out):
            reopened: DiskBackedStore[DiskBackedNDArray] = DiskBackedStore(config=config, factory=DiskBackedNDArray)
            arrays = {key: reopened[key].data for key in reopened.keys()}
        out(f"      reopened keys: {sorted(arrays)}")
        if not np.array_equal(arrays["points"], np.asarray(entry.data)):
            raise SystemExit("demo: the reopened store does not match what was written")
        del arrays, reopened, entry
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    out("done; the demo directory was removed")
