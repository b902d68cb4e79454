"""Store cases: durable group writes, the disk they use, and reopen + reload, against hand-written baselines.

* write: what a user does to write a store durably, end to end: a store with
  ``enable_caching=True, purge_disk_on_gc=False``, ``add_data_to_store`` for every key, then
  ``offload(pickle_container=True)`` (every key committed durably as ``<key>.npy`` +
  ``<key>.meta.json``); both parts are also shown on their own. The target baseline writes the
  same artefacts with the same durability by hand, as a careful user would: each file to a temp,
  the temps fsynced on 8 threads, then all renames, then one directory fsync. The same with the
  fsyncs one after another, the per-key recipe and ``joblib.dump`` (no fsync) are context.
* disk: the bytes on disk after that write (every file in the directory, by allocated blocks),
  against the hand-written group commit's.
* reload: a fresh store over the directory plus ``store[key]`` for every key, against
  ``np.load(mmap_mode="r")`` of every ``.npy`` (the target), ``np.load`` into RAM and
  ``joblib.load(mmap_mode="r")``.

Run alone: ``.venv/bin/python bench/bench_store.py [--quick]``.
"""

from __future__ import annotations

import functools
import importlib
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from baselines import disk_usage, group_commit, per_key_durable
from common import (
    KIB,
    MIB,
    CaseResult,
    Impl,
    Series,
    Settings,
    Variant,
    format_bytes,
    measure_interleaved,
    now,
    run_standalone,
    settle,
    with_baselines,
)

__all__ = [
    "ADD_PART",
    "GROUP_COMMIT",
    "NP_LOAD_MMAP",
    "NP_LOAD_MMAP_COPY",
    "NP_LOAD_RAM",
    "OFFLOAD_PART",
    "SETS",
    "StoreSet",
    "disk_cases",
    "reload_cases",
    "store_sets",
    "write_cases",
    "write_store_durably",
]

GROUP_COMMIT = "hand-written group commit, fsyncs on 8 threads (same artefacts, same durability)"
GROUP_COMMIT_SERIAL = "hand-written group commit, fsyncs one after another"
# The timed parts of our write variant: the inserts (each converts its entry into a working .dat,
# as caching on requires) and the durable write itself.
ADD_PART = "the store's construction and its add_data_to_store calls"
OFFLOAD_PART = "offload(pickle_container=True) alone"
PER_KEY = "per key: np.save temp + fsync + replace + dir fsync (both files)"
JOBLIB_DUMP = "joblib.dump per key (no fsync)"
NP_LOAD_RAM = "np.load into RAM"
NP_LOAD_MMAP = "np.load(mmap_mode='r')"
# The baseline: what a user writes by hand to get what store[key] returns, a writable array.
NP_LOAD_MMAP_COPY = "np.load(mmap_mode='r') + copy (writable, as store[key] is)"
JOBLIB_LOAD_MMAP = "joblib.load(mmap_mode='r')"

Items = Sequence[tuple[str, np.ndarray[Any, Any]]]
SETS = ("many", "big")


@dataclass(frozen=True)
class StoreSet:
    """A batch of equally sized float32 (N, 4) entries."""

    name: str
    count: int
    entry_bytes: int

    @property
    def label(self) -> str:
        return f"{self.count:,} x {format_bytes(self.entry_bytes)}"

    def make(self) -> list[tuple[str, np.ndarray[Any, Any]]]:
        rng = np.random.default_rng(7)
        rows = self.entry_bytes // 16
        return [(f"tile_{i:05d}", rng.random((rows, 4), dtype=np.float32)) for i in range(self.count)]


def store_sets(settings: Settings) -> list[StoreSet]:
    """Many small entries (per-file costs dominate) and a few big ones (bandwidth dominates)."""
    if settings.quick:
        return [StoreSet("many", 40, 4 * KIB), StoreSet("big", 2, MIB)]
    return [StoreSet("many", 1000, 4 * KIB), StoreSet("big", 8, 64 * MIB)]


def _set_case(
    store_set: StoreSet, group: str, unit: Literal["s", "B"], title: str, series: list[Series], notes: list[str]
) -> CaseResult:
    """The result of ``group``'s case for ``store_set``: its id, title and size are the set's."""
    nbytes = store_set.count * store_set.entry_bytes
    return CaseResult(
        f"{group}-{store_set.name}", f"{title}: {store_set.label}", group, unit, nbytes, series, notes, store_set.label
    )


def _fresh_dir(path: Path) -> Path:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def _open_store(impl: Impl, directory: Path, *, durable: bool = False) -> Any:
    """A caching store on ``directory``; ``durable`` turns purge off, as a store meant to persist has it."""
    config = impl.config_cls(enable_caching=True, cache_path=directory, purge_disk_on_gc=not durable)
    return impl.store_cls(config=config, factory=impl.array_cls)


def _write_durably(impl: Impl, items: Items, directory: Path) -> tuple[Any, float, float]:
    """The user's durable store write from the store's construction on; returns the store and its two parts' times."""
    start = now()
    store = _open_store(impl, directory, durable=True)
    for key, data in items:
        store.add_data_to_store(key, data)
    added = now()
    store.offload(pickle_container=True)
    return store, added - start, now() - added


def _ours_write(impl: Impl, items: Items, directory: Path) -> Variant:
    if impl.store_na:
        return Variant(impl.label, impl.role, None, impl.store_na)
    adding = f"{impl.label}: {ADD_PART}"
    offloading = f"{impl.label}: {OFFLOAD_PART}"

    def op() -> dict[str, float]:
        store, add_time, offload_time = _write_durably(impl, items, _fresh_dir(directory))
        del store
        settle(collect=True)
        shutil.rmtree(directory)
        return {impl.label: add_time + offload_time, adding: add_time, offloading: offload_time}

    return Variant(impl.label, impl.role, op)


def _dir_op(directory: Path, action: Callable[[Path], object]) -> Callable[[], float]:
    def op() -> float:
        target = _fresh_dir(directory)
        start = now()
        action(target)
        elapsed = now() - start
        shutil.rmtree(directory)
        return elapsed

    return op


def _joblib() -> Any:
    return importlib.import_module("joblib")


def _joblib_na() -> str | None:
    try:
        _joblib()
    except ImportError:
        return "joblib not installed"
    return None


def _joblib_dump_all(directory: Path, items: Items) -> None:
    for key, data in items:
        _joblib().dump(data, directory / f"{key}.joblib")


def write_cases(
    settings: Settings, impl: Impl, *, baselines: set[str] | None = None, sets: tuple[str, ...] = SETS
) -> list[CaseResult]:
    """Durable writes of each store set named in `sets`."""
    chosen = [s for s in store_sets(settings) if s.name in sets]
    return [_write_case(store_set, settings, impl, baselines) for store_set in chosen]


def _write_case(store_set: StoreSet, settings: Settings, impl: Impl, baselines: set[str] | None) -> CaseResult:
    work = settings.workdir
    items = store_set.make()
    variants = [
        _ours_write(impl, items, work / "store-write-ours"),
        Variant(
            GROUP_COMMIT, "numpy", _dir_op(work / "store-write-gc", lambda d: group_commit(d, items, fsync_threads=8))
        ),
        Variant(GROUP_COMMIT_SERIAL, "numpy", _dir_op(work / "store-write-gcs", lambda d: group_commit(d, items))),
        Variant(
            PER_KEY,
            "numpy",
            _dir_op(work / "store-write-pk", lambda d: per_key_durable(d, items)),
            "skipped for many keys to keep the run short" if store_set.count > 100 else None,
        ),
        Variant(
            JOBLIB_DUMP,
            "joblib",
            _dir_op(work / "store-write-jl", lambda d: _joblib_dump_all(d, items)),
            "shown for the big entries" if store_set.count > 100 else _joblib_na(),
        ),
    ]
    keep = {impl.label} if baselines is None else {impl.label, *baselines}
    variants = [v for v in variants if baselines is None or v.name in keep]
    # Ours holds each added entry in RAM, then writes its .npy: twice the payload in fresh memory.
    prewarm = 2 * store_set.count * store_set.entry_bytes
    series = measure_interleaved(variants, reps=settings.store_reps, warmup=settings.warmup, prewarm_bytes=prewarm)
    notes = [
        "durable: every key's .npy and .meta.json are fsynced, then renamed, then one directory fsync;"
        " the store has purge_disk_on_gc=False, so its data is meant to outlive the process",
        "ours, end to end: the store's construction, the add_data_to_store calls (an added entry keeps"
        " its working copy in RAM and writes no file until one is needed) and the commit, which writes"
        " each .npy from that copy, fsyncs on 8 threads, renames, and lets each entry map its committed"
        " payload instead of its RAM",
        "each variant writes into a fresh directory",
    ]
    return _set_case(
        store_set,
        "store-write",
        "s",
        "durable store write, add_data_to_store + offload(pickle_container=True)",
        series,
        notes,
    )


def _ours_reload(impl: Impl, directory: Path, keys: list[str]) -> Variant:
    if impl.store_na:
        return Variant(impl.label, impl.role, None, impl.store_na)

    def op() -> float:
        start = now()
        store = _open_store(impl, directory, durable=True)
        entries = [store[key] for key in keys]
        elapsed = now() - start
        del entries, store
        settle(collect=True)
        return elapsed

    return Variant(f"{impl.label} reopen + store[key] for every key", impl.role, op)


def _load_all(loader: Callable[[Path], object], paths: list[Path]) -> Callable[[], float]:
    def op() -> float:
        start = now()
        loaded = [loader(path) for path in paths]
        elapsed = now() - start
        del loaded
        return elapsed

    return op


def disk_cases(
    settings: Settings, impl: Impl, *, baselines: set[str] | None = None, sets: tuple[str, ...] = SETS
) -> list[CaseResult]:
    """The bytes on disk right after a durable store write, ours against the hand-written commit's."""
    work = settings.workdir
    results = []
    for store_set in (s for s in store_sets(settings) if s.name in sets):
        items = store_set.make()
        variants = [
            _ours_disk(impl, items, work / "store-disk-ours"),
            Variant(
                GROUP_COMMIT, "numpy", _disk_after(work / "store-disk-gc", functools.partial(_commit_by_hand, items))
            ),
        ]
        variants = with_baselines(variants, impl, baselines)
        series = measure_interleaved(variants, reps=1, warmup=0)
        notes = [
            "bytes on disk: the blocks allocated to every file in the store's directory (st_blocks),"
            " measured right after offload(pickle_container=True) returns, the store and the user's"
            " arrays still alive",
            f"the payload itself is {format_bytes(store_set.count * store_set.entry_bytes)}; each .npy"
            " adds its header and each key a sidecar, so small entries cost several blocks each"
            " whoever writes them",
        ]
        results.append(_set_case(store_set, "store-disk", "B", "disk use after a durable store write", series, notes))
    return results


def _commit_by_hand(items: Items, directory: Path) -> None:
    group_commit(directory, items, fsync_threads=8)


def _ours_disk(impl: Impl, items: Items, directory: Path) -> Variant:
    if impl.store_na:
        return Variant(impl.label, impl.role, None, impl.store_na)

    def op() -> float:
        store, _, _ = _write_durably(impl, items, _fresh_dir(directory))
        used = disk_usage(directory)
        del store
        settle(collect=True)
        shutil.rmtree(directory)
        return float(used)

    return Variant(impl.label, impl.role, op)


def _disk_after(directory: Path, action: Callable[[Path], object]) -> Callable[[], float]:
    def op() -> float:
        target = _fresh_dir(directory)
        action(target)
        used = disk_usage(target)
        shutil.rmtree(directory)
        return float(used)

    return op


def write_store_durably(impl: Impl, items: Items, directory: Path) -> None:
    """Write ``items`` as a durable store in a fresh ``directory`` (untimed, for the cases that reopen it)."""
    store, _, _ = _write_durably(impl, items, _fresh_dir(directory))
    del store
    settle(collect=True)


def reload_cases(
    settings: Settings, impl: Impl, *, baselines: set[str] | None = None, sets: tuple[str, ...] = SETS
) -> list[CaseResult]:
    """Reopen + reload of each store set, written once before timing."""
    results = []
    work = settings.workdir
    for store_set in (s for s in store_sets(settings) if s.name in sets):
        items = store_set.make()
        keys = [key for key, _ in items]
        ours_dir, base_dir, joblib_dir = work / "reload-ours", work / "reload-base", work / "reload-joblib"
        if impl.store_na is None:
            write_store_durably(impl, items, ours_dir)
        # The readers only need the same bytes on disk; fsyncing them would only lengthen the run.
        group_commit(_fresh_dir(base_dir), items, durable=False)
        joblib_na = _joblib_na()
        if joblib_na is None:
            _joblib_dump_all(_fresh_dir(joblib_dir), items)
        del items
        npys = [base_dir / f"{key}.npy" for key in keys]
        variants = [
            _ours_reload(impl, ours_dir, keys),
            Variant(NP_LOAD_RAM, "numpy", _load_all(np.load, npys)),
            Variant(NP_LOAD_MMAP, "numpy", _load_all(lambda p: np.load(p, mmap_mode="r"), npys)),
            Variant(NP_LOAD_MMAP_COPY, "numpy", _load_all(lambda p: np.array(np.load(p, mmap_mode="r")), npys)),
            Variant(
                JOBLIB_LOAD_MMAP,
                "joblib",
                _load_all(lambda p: _joblib().load(p, mmap_mode="r"), [joblib_dir / f"{k}.joblib" for k in keys]),
                joblib_na,
            ),
        ]
        variants = with_baselines(variants, impl, baselines)
        prewarm = store_set.count * store_set.entry_bytes
        # Every reload case runs three times the repetitions: a reload of the big entries takes about
        # a millisecond, which one repetition can double, and each repetition is cheap.
        reps = 3 * settings.reps
        series = measure_interleaved(variants, reps=reps, warmup=settings.warmup, prewarm_bytes=prewarm)
        for directory in (ours_dir, base_dir, joblib_dir):
            shutil.rmtree(directory, ignore_errors=True)
        notes = [
            "page cache warm: the files were written just before; np.load baselines read the same bytes",
            "ours opens the store (a directory listing and a temp sweep) and, per key, reads and validates"
            " the sidecar, reads the .npy header and maps the payload copy-on-write; the hand-written"
            " readers map the .npy (and copy it, for the writable baseline) or read it",
        ]
        results.append(_set_case(store_set, "store-reload", "s", "store reopen + reload", series, notes))
    return results


def main(argv: list[str] | None = None) -> int:
    """Run only the store cases and print their tables."""
    return run_standalone(__doc__, argv, write_cases, disk_cases, reload_cases)


if __name__ == "__main__":
    raise SystemExit(main())
