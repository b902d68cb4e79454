"""Store cases: durable group writes and reopen + reload, interleaved with hand-written baselines.

* write: ``add_data_to_store`` for every key, then ``offload(pickle_container=True)`` (every key
  committed durably as ``<key>.npy`` + ``<key>.meta.json``), each part also timed on its own; the
  group-commit target judges the durable write, the offload. The fair baseline writes the same
  artefacts with the same durability by hand: each file to a temp and fsynced, then all renames,
  then one directory fsync. The per-key recipe and ``joblib.dump`` (no fsync) are context.
* reload: a fresh store over the directory plus ``store[key]`` for every key, against
  ``np.load`` into RAM, ``np.load(mmap_mode="r")`` and ``joblib.load(mmap_mode="r")``.

Run alone: ``.venv/bin/python bench/bench_store.py [--quick]``.
"""

from __future__ import annotations

import importlib
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from baselines import group_commit, per_key_durable
from common import (
    KIB,
    MIB,
    CaseResult,
    Impl,
    Settings,
    Variant,
    format_bytes,
    measure_interleaved,
    now,
    run_standalone,
    settle,
)

__all__ = [
    "ADD_PART",
    "GROUP_COMMIT",
    "NP_LOAD_RAM",
    "OFFLOAD_PART",
    "SETS",
    "StoreSet",
    "reload_cases",
    "store_sets",
    "write_cases",
]

GROUP_COMMIT = "hand-written group commit (same artefacts, same fsyncs)"
# The timed parts of our write variant: the in-memory inserts (each converts its entry into a
# working .dat, as caching on requires) and the durable write the group-commit target judges.
ADD_PART = "the add_data_to_store calls alone"
OFFLOAD_PART = "offload(pickle_container=True) alone"
PER_KEY = "per key: np.save temp + fsync + replace + dir fsync (both files)"
JOBLIB_DUMP = "joblib.dump per key (no fsync)"
NP_LOAD_RAM = "np.load into RAM"
NP_LOAD_MMAP = "np.load(mmap_mode='r')"
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


def _fresh_dir(path: Path) -> Path:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def _open_store(impl: Impl, directory: Path) -> Any:
    config = impl.config_cls(enable_caching=True, cache_path=directory)
    return impl.store_cls(config=config, factory=impl.array_cls)


def _ours_write(impl: Impl, items: Items, directory: Path) -> Variant:
    if impl.store_na:
        return Variant(impl.label, impl.role, None, impl.store_na)
    adding = f"{impl.label}: {ADD_PART}"
    offloading = f"{impl.label}: {OFFLOAD_PART}"

    def op() -> dict[str, float]:
        store = _open_store(impl, _fresh_dir(directory))
        start = now()
        for key, data in items:
            store.add_data_to_store(key, data)
        added = now()
        store.offload(pickle_container=True)
        end = now()
        del store
        settle(collect=True)
        shutil.rmtree(directory)
        return {impl.label: end - start, adding: added - start, offloading: end - added}

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
        Variant(GROUP_COMMIT, "numpy", _dir_op(work / "store-write-gc", lambda d: group_commit(d, items))),
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
    # Ours writes each entry's working .dat and its .npy: twice the payload in fresh page cache.
    prewarm = 2 * store_set.count * store_set.entry_bytes
    series = measure_interleaved(variants, reps=settings.store_reps, warmup=settings.warmup, prewarm_bytes=prewarm)
    notes = [
        "durable: every key's .npy and .meta.json are fsynced, then renamed, then one directory fsync",
        "ours also creates (and later unlinks) each entry's working .dat, which is under purge duty:"
        " caching on makes every added entry MAPPED over its own .dat before anything is committed",
        "the group-commit target judges the durable write, offload(pickle_container=True); the"
        " end-to-end row (adds included) is shown against the same baseline for context",
    ]
    title = f"store add_data_to_store + offload(pickle_container=True): {store_set.label}"
    nbytes = store_set.count * store_set.entry_bytes
    return CaseResult(
        f"store-write-{store_set.name}", title, "store-write", "s", nbytes, series, notes, store_set.label
    )


def _ours_reload(impl: Impl, directory: Path, keys: list[str]) -> Variant:
    if impl.store_na:
        return Variant(impl.label, impl.role, None, impl.store_na)

    def op() -> float:
        start = now()
        store = _open_store(impl, directory)
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


def _write_ours_store(impl: Impl, directory: Path, items: Items) -> None:
    store = _open_store(impl, _fresh_dir(directory))
    for key, data in items:
        store.add_data_to_store(key, data)
    store.offload(pickle_container=True)
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
            _write_ours_store(impl, ours_dir, items)
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
            Variant(
                JOBLIB_LOAD_MMAP,
                "joblib",
                _load_all(lambda p: _joblib().load(p, mmap_mode="r"), [joblib_dir / f"{k}.joblib" for k in keys]),
                joblib_na,
            ),
        ]
        variants = [v for v in variants if v.role == impl.role or baselines is None or v.name in baselines]
        prewarm = store_set.count * store_set.entry_bytes
        series = measure_interleaved(variants, reps=settings.reps, warmup=settings.warmup, prewarm_bytes=prewarm)
        for directory in (ours_dir, base_dir, joblib_dir):
            shutil.rmtree(directory, ignore_errors=True)
        notes = [
            "page cache warm: the files were written just before; np.load baselines read the same bytes",
            "the hand-written readers do not parse the sidecar; ours does (and validates it)",
        ]
        title = f"store reopen + reload: {store_set.label}"
        nbytes = store_set.count * store_set.entry_bytes
        case_id = f"store-reload-{store_set.name}"
        results.append(CaseResult(case_id, title, "store-reload", "s", nbytes, series, notes, store_set.label))
    return results


def main(argv: list[str] | None = None) -> int:
    """Run only the store cases and print their tables."""
    return run_standalone(__doc__, argv, write_cases, reload_cases)


if __name__ == "__main__":
    raise SystemExit(main())
