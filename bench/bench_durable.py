"""Durable entries of 1.2 GB against the original: construction, and the first offload after a reopen.

* construct: ``DiskBackedNDArray(a, enable_caching=True, cache_path=p, purge_disk_on_gc=False)``,
  a standalone entry whose ``.dat`` must survive a power cut (written, fsynced, renamed, the
  directory fsynced), against the original's construction of the same entry and ``os.write`` +
  fsync of the same bytes (the disk's limit);
* reopen: a store reopened on a directory holding one 1.2 GB key, ``store[key]``, then the timed
  first ``offload()``: unwritten, and with one element written first; against the original's.

Every variant runs in a child process of its own (``durable_child.py``), ours and the original
alike, interleaved repetition by repetition. Run alone: ``.venv/bin/python bench/bench_durable.py``.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np

from bench_store import write_store_durably
from common import (
    BENCH_DIR,
    MIB,
    CaseResult,
    Impl,
    Role,
    Settings,
    Variant,
    format_bytes,
    measure_interleaved,
    run_json_child,
    run_standalone,
)

__all__ = [
    "ORIGINAL_CONSTRUCT",
    "ORIGINAL_REOPEN",
    "ORIGINAL_REOPEN_WRITTEN",
    "WRITTEN_PART",
    "durable_cases",
    "durable_nbytes",
    "main",
]

_CHILD = BENCH_DIR / "durable_child.py"
ORIGINAL_CONSTRUCT = "GSEGUtils 0.5.2 construction (own process, Python 3.12)"
OS_WRITE_FSYNC = "os.write + fsync of the same bytes"
ORIGINAL_REOPEN = "GSEGUtils 0.5.2 first offload() (own process, Python 3.12)"
OURS_REOPEN = "lazy_disk_cache first offload()"
# The variant with a write is judged as a part of ours: "<ours>: <part>".
WRITTEN_PART = "one element written first"
OURS_REOPEN_WRITTEN = f"{OURS_REOPEN}: {WRITTEN_PART}"
ORIGINAL_REOPEN_WRITTEN = f"{ORIGINAL_REOPEN}: {WRITTEN_PART}"
REOPEN_PART = "reopen + store[key]"


def durable_nbytes(settings: Settings) -> int:
    """1.2 GB, the size the durability costs were first measured at (8 MiB in quick runs)."""
    return 8 * MIB if settings.quick else 1_200_000_000


def _size_label(nbytes: int) -> str:
    """``1.2 GB`` as the size was stated (decimal), else the usual binary label."""
    return f"{nbytes / 1e9:.1f} GB" if nbytes % 100_000_000 == 0 else format_bytes(nbytes)


def _child(name: str, role: Role, python: str | None, case: str, variant: str, nbytes: int, work: Path) -> Variant:
    if python is None:
        return Variant(name, role, None, "the original is not set up")

    def op() -> dict[str, float]:
        result = run_json_child([python, str(_CHILD), case, variant, str(nbytes), str(work)], timeout=900)
        timings = {name: float(result["seconds"])}
        if "reopen" in result:
            timings[f"{name}: {REOPEN_PART}"] = float(result["reopen"])
        return timings

    return Variant(name, role, op)


def durable_cases(settings: Settings, ours: Impl, original_python: str | None, original_na: str) -> list[CaseResult]:
    """Durable construction and the first offload of a reopened entry, ours and the original."""
    nbytes = durable_nbytes(settings)
    return [
        _construct_case(settings, ours, original_python, original_na, nbytes),
        _reopen_case(settings, ours, original_python, original_na, nbytes),
    ]


def _construct_case(
    settings: Settings, ours: Impl, original_python: str | None, original_na: str, nbytes: int
) -> CaseResult:
    work = settings.workdir
    original = _child(ORIGINAL_CONSTRUCT, "original", original_python, "construct", "original", nbytes, work)
    if original_python is None:
        original.na = original_na or original.na
    variants = [
        _child(ours.label, "ours", sys.executable, "construct", "ours", nbytes, work)
        if ours.array_na is None
        else Variant(ours.label, "ours", None, ours.array_na),
        original,
        _child(OS_WRITE_FSYNC, "limit", sys.executable, "construct", "os.write+fsync", nbytes, work),
    ]
    series = measure_interleaved(variants, reps=settings.large_reps, warmup=settings.warmup)
    notes = [
        "standalone entries with purge_disk_on_gc=False: ours writes the .dat to a temp (the writeback"
        " of every 16 MiB started as it is written), fsyncs it, renames it and fsyncs the directory;"
        " the original assigns the array into a fresh np.memmap and fsyncs nothing",
        "each variant builds its source array in a child process of its own and times only the"
        " construction (or the write), after touching as much memory as it may use",
    ]
    title = f"durable entry construction: float32 (N, 4), {_size_label(nbytes)}"
    return CaseResult("durable-construct", title, "durable", "s", nbytes, series, notes, _size_label(nbytes))


def _reopen_case(
    settings: Settings, ours: Impl, original_python: str | None, original_na: str, nbytes: int
) -> CaseResult:
    directory = settings.workdir / "reopen-store"
    if ours.store_na is None:
        _write_store(ours, directory, nbytes)
    original = _child(ORIGINAL_REOPEN, "original", original_python, "reopen", "original", nbytes, directory)
    written = _child(
        ORIGINAL_REOPEN_WRITTEN, "original", original_python, "reopen", "original-written", nbytes, directory
    )
    if original_python is None:
        original.na = original_na or original.na
        written.na = original_na or written.na
    na = ours.store_na
    variants = [
        Variant(OURS_REOPEN, "ours", None, na)
        if na
        else _child(OURS_REOPEN, "ours", sys.executable, "reopen", "ours", nbytes, directory),
        Variant(OURS_REOPEN_WRITTEN, "derived", None, na)
        if na
        else _child(OURS_REOPEN_WRITTEN, "derived", sys.executable, "reopen", "ours-written", nbytes, directory),
        original,
        written,
    ]
    series = measure_interleaved(variants, reps=settings.large_reps, warmup=settings.warmup)
    shutil.rmtree(directory, ignore_errors=True)
    notes = [
        "a store with purge_disk_on_gc=False holding one key is reopened in a fresh process and the"
        " key taken with store[key] (the reopen rows); then its first offload() is timed",
        "ours maps the .npy payload copy-on-write at the reopen; an offload finding no page of it"
        " written drops the mapping (no .dat); after one written element it writes the .dat, the"
        " written page from the mapping and the rest from the .npy inside the kernel (a working"
        " file, no fsync); the original reads the array into RAM and writes its .dat at the"
        " reopen, then flushes it (msync) at the offload",
        "page cache warm: the store was written just before",
    ]
    title = f"first offload() of an entry reopened from a store: float32 (N, 4), {_size_label(nbytes)}"
    return CaseResult("reopen-offload", title, "reopen", "s", nbytes, series, notes, _size_label(nbytes))


def _write_store(impl: Impl, directory: Path, nbytes: int) -> None:
    items = [("big", np.random.default_rng(13).random((nbytes // 16, 4), dtype=np.float32))]
    write_store_durably(impl, items, directory)


def main(argv: list[str] | None = None) -> int:
    """Run only these cases (with the original when its venv is set up) and print their tables."""
    from original import ensure_original

    python, reason = ensure_original(create=False)
    return run_standalone(__doc__, argv, lambda settings, impl: durable_cases(settings, impl, python, reason))


if __name__ == "__main__":
    raise SystemExit(main())
