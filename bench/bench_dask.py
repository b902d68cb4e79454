"""dask and many-process benchmarks: ratios against baselines measured in the same run.

Cases (each repeated, variants interleaved with a rotating start, medians of per-repetition ratios):

* ``to_dask-sum``: ``store.to_dask(key).sum()`` on a LocalCluster (2 worker processes) against
  ``da.from_zarr`` of the same data (zarr v3, uncompressed, same chunks) and against
  ``da.from_array(np.load(mmap_mode="r"))``.
* ``store_dask``: ``store.store_dask(key, x + 1)`` (durable: fsync + directory fsync) against
  ``da.to_zarr`` of the same array (uncompressed, not fsynced), twice: to a fresh key (both
  writers' previous output removed outside the timing) and replacing an existing key (ours
  committing over its previous pair, ``to_zarr(mode="w")`` removing its previous array, both
  inside the timing).
* ``parallel-commit``: two processes committing 1,000 small keys each against one process
  committing 2,000.

Every timed call starts with a synced page cache (``os.sync()`` outside the timing), so that no
variant pays for the writeback of data the one before it left dirty; in the fresh-key case both
writers' removal of their previous output (a purge, an ``rmtree``) runs outside their timing too.

Needs the ``dask`` extra and ``zarr`` (``scripts/bench.sh`` installs it). Usage:
``bench_dask.py [--gib 1.0] [--repeats 5] [--dir PATH]``. Ratios > 1 mean ours is faster.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import dask.array as da
import numpy as np
import zarr
from distributed import Client, LocalCluster

from lazy_disk_cache import DiskBackedNDArray, DiskBackedStore, LazyDiskCacheConfig

MIB = 1024**2
COLUMNS = 4096
CHUNK_ROWS = 4096  # 128 MiB chunks of float64


def _store(directory: Path) -> DiskBackedStore[DiskBackedNDArray]:
    return DiskBackedStore(
        config=LazyDiskCacheConfig(enable_caching=True, cache_path=directory), factory=DiskBackedNDArray
    )


def _interleave(
    variants: dict[str, Callable[[], object]],
    repeats: int,
    prepare: dict[str, Callable[[], object]] | None = None,
) -> dict[str, list[float]]:
    """Time each variant ``repeats`` times, rotating the order; medians are taken by the caller.

    Before every timed call (and outside its time) the variant's ``prepare`` step runs and the
    page cache is synced, so that no variant pays for the writeback of data another one left dirty.
    """
    names = list(variants)
    times: dict[str, list[float]] = {name: [] for name in names}
    for repetition in range(repeats):
        order = names[repetition % len(names) :] + names[: repetition % len(names)]
        for name in order:
            if prepare is not None and name in prepare:
                prepare[name]()
            os.sync()
            start = time.perf_counter()
            variants[name]()
            times[name].append(time.perf_counter() - start)
    return times


def _report(case: str, times: dict[str, list[float]], ours: str) -> None:
    print(f"\n{case}")
    for name, seconds in times.items():
        print(f"  {name:<28} median {statistics.median(seconds):8.3f} s  ({', '.join(f'{s:.3f}' for s in seconds)})")
    for name, seconds in times.items():
        if name == ours:
            continue
        ratios = [theirs / mine for mine, theirs in zip(times[ours], seconds, strict=True)]
        print(f"  ratio {name} / {ours}: median {statistics.median(ratios):.2f}x (>= 1.0 means ours is as fast)")


def _purge_output(store: DiskBackedStore[DiskBackedNDArray]) -> Callable[[], None]:
    def purge() -> None:
        if "y" in store:
            store.purge("y")

    return purge


def _remove_zarr_output(root: Path) -> Callable[[], None]:
    return lambda: shutil.rmtree(root / "y.zarr", ignore_errors=True)


def bench_cluster(root: Path, gib: float, repeats: int) -> None:
    rows = int(gib * 1024**3) // (COLUMNS * 8)
    rows -= rows % CHUNK_ROWS
    value = np.random.default_rng(0).random((rows, COLUMNS))
    store_dir, zarr_dir, npy_path = root / "store", root / "data.zarr", root / "plain.npy"
    store = _store(store_dir)
    store.add_data_to_store("x", value)
    store.offload("x", pickle_container=True)
    zarr.create_array(
        str(zarr_dir), shape=value.shape, chunks=(CHUNK_ROWS, COLUMNS), dtype=value.dtype, compressors=None
    )[...] = value
    np.save(npy_path, value)
    del value
    chunks = (CHUNK_ROWS, COLUMNS)
    size, chunk = rows * COLUMNS * 8 / MIB, CHUNK_ROWS * COLUMNS * 8 / MIB
    print(f"array: {rows} x {COLUMNS} float64 = {size:.0f} MiB, chunks of {chunk:.0f} MiB")
    with (
        LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster,
        Client(cluster),
    ):
        sums = _interleave(
            {
                "to_dask": lambda: store.to_dask("x", chunks=chunks).sum().compute(),
                "from_zarr": lambda: da.from_zarr(str(zarr_dir)).sum().compute(),
                "from_array(np.load mmap)": lambda: (
                    da.from_array(np.load(npy_path, mmap_mode="r"), chunks=chunks).sum().compute()
                ),
            },
            repeats,
        )
        _report("to_dask-sum (LocalCluster, 2 process workers)", sums, "to_dask")
        source = store.to_dask("x", chunks=chunks)

        def ours() -> None:
            store.store_dask("y", source + 1)

        def theirs() -> None:
            da.to_zarr(source + 1, str(root / "y.zarr"), compressors=None)

        writes = _interleave(
            {"store_dask (durable)": ours, "to_zarr (no fsync)": theirs},
            repeats,
            prepare={"store_dask (durable)": _purge_output(store), "to_zarr (no fsync)": _remove_zarr_output(root)},
        )
        _report("store_dask, fresh key (LocalCluster, 2 process workers)", writes, "store_dask (durable)")

        # A user who writes the same key again pays for replacing the previous output: ours
        # commits over the previous pair, to_zarr(mode="w") removes the previous array first.
        def theirs_replacing() -> None:
            da.to_zarr(source + 1, str(root / "y.zarr"), compressors=None, mode="w")

        def ensure_ours() -> None:
            if "y" not in store:
                ours()

        def ensure_theirs() -> None:
            if not (root / "y.zarr").exists():
                theirs()

        replacing = _interleave(
            {"store_dask (durable)": ours, "to_zarr (no fsync)": theirs_replacing},
            repeats,
            prepare={"store_dask (durable)": ensure_ours, "to_zarr (no fsync)": ensure_theirs},
        )
        _report(
            "store_dask, replacing an existing key (LocalCluster, 2 process workers)",
            replacing,
            "store_dask (durable)",
        )


_COMMITTER = textwrap.dedent(
    """
    import sys
    import numpy as np
    from lazy_disk_cache import DiskBackedNDArray, DiskBackedStore, LazyDiskCacheConfig

    directory, prefix, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
    store = DiskBackedStore(
        config=LazyDiskCacheConfig(enable_caching=True, cache_path=directory), factory=DiskBackedNDArray
    )
    value = np.arange(256, dtype=np.float32)
    for index in range(count):
        store.add_data_to_store(f"{prefix}{index}", value)
    sys.stdout.write("ready\\n"); sys.stdout.flush(); sys.stdin.readline()
    store.offload(pickle_container=True)
    sys.stdout.write("done\\n"); sys.stdout.flush()
    """
)


def _run_committers(directory: Path, plan: list[tuple[str, int]]) -> float:
    """One process per (prefix, count) adds its keys; once all are ready, time their group commits together.

    The seconds from the common start until the last process committed (process start-up and the
    adds are not timed).
    """
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir()
    children = [
        subprocess.Popen(
            [sys.executable, "-c", _COMMITTER, str(directory), prefix, str(count)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for prefix, count in plan
    ]
    for child in children:
        assert child.stdout is not None and child.stdout.readline().strip() == "ready"
    start = time.perf_counter()
    for child in children:
        assert child.stdin is not None
        child.stdin.write("go\n")
        child.stdin.flush()
    for child in children:
        assert child.stdout is not None and child.stdout.readline().strip() == "done"
    elapsed = time.perf_counter() - start
    for child in children:
        if child.wait(timeout=600) != 0:
            raise RuntimeError("a committer failed")
    return elapsed


def bench_parallel_commits(root: Path, repeats: int) -> None:
    directory = root / "commits"
    times: dict[str, list[float]] = {"two processes x 1000": [], "one process x 2000": []}
    variants = {
        "two processes x 1000": [("p", 1000), ("q", 1000)],
        "one process x 2000": [("p", 2000)],
    }
    names = list(variants)
    for repetition in range(repeats):
        order = names[repetition % 2 :] + names[: repetition % 2]
        for name in order:
            times[name].append(_run_committers(directory, variants[name]))
    _report("parallel-commit (1,000 small keys each, one group commit per process)", times, "two processes x 1000")
    print("  target: two processes take <= 1.2x one process (ratio above >= 0.83)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gib", type=float, default=1.0, help="array size of the cluster cases")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--dir", type=Path, default=None, help="where to put the data (default: a temp dir)")
    parser.add_argument("--skip-cluster", action="store_true")
    args = parser.parse_args()
    # da.from_array of a memmap puts the array itself in the graph, and distributed warns about
    # shipping it on every run; that cost is the baseline's, the warning is noise here.
    warnings.filterwarnings("ignore", message="Sending large graph", category=UserWarning)
    root = Path(tempfile.mkdtemp(prefix="bench-dask-", dir=args.dir))
    try:
        if not args.skip_cluster:
            bench_cluster(root, args.gib, args.repeats)
        bench_parallel_commits(root, args.repeats)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
