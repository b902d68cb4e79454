"""Spilling: its throughput against page-cache writes, and a workload 3x its memory limit against no limit.

Run alone, as root for the second part: ``.venv/bin/python bench/bench_spill.py [--quick]``.

1. **Spill throughput.** Entries without caching (``--entries`` x ``--mib`` MiB) are spilled one by
   one (``entry.spill()``: the spill file written through the native core, the array freed);
   the baseline writes the same arrays to files in the same temp directory with ``open``/``write``
   (page cache, no fsync, nothing freed); a second one reserves the space first
   (``posix_fallocate``), as a spill does. Interleaved repetitions, each variant on fresh arrays and
   fresh files; the figure is the median of the per-repetition ratio baseline time / spill time.
   Target: >= 0.8.
2. **The workload in a memory cgroup.** ``tests/child/budget_workload.py``: 24 entries of 128 MiB
   created without caching, then every value checked (``ram``); and, on a store of the same size
   written once, every key modified in place and checked (``store-modify``). Each runs inside a
   child memory cgroup limited to 1 GiB and with no limit (default budget both times); the figure is
   the median over repetitions of limited time / unlimited time. Needs a writable memory cgroup
   (``tests/memory_cgroup.py`` says why not, and the part is skipped).
"""

from __future__ import annotations

import argparse
import functools
import importlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from common import MIB, Variant, measure_interleaved, paired_ratio
from lazy_disk_cache import DiskBackedNDArray, memory_budget

ROOT = Path(__file__).resolve().parent.parent
WORKLOAD = ROOT / "tests" / "child" / "budget_workload.py"
GIB = 1024**3
WORKLOAD_LIMIT = 1 * GIB
WORKLOAD_COUNT, WORKLOAD_MIB = 24, 128


def _arrays(count: int, nbytes: int) -> list[np.ndarray[Any, np.dtype[np.uint8]]]:
    arrays = []
    for index in range(count):
        array = np.empty(nbytes, dtype=np.uint8)
        array.fill(index + 1)  # touched: the pages exist before the timing starts
        arrays.append(array)
    return arrays


def _spill_seconds(count: int, nbytes: int) -> float:
    entries = [DiskBackedNDArray(array) for array in _arrays(count, nbytes)]
    started = time.perf_counter()
    for entry in entries:
        if entry.spill() != nbytes:
            raise RuntimeError("an entry was not spilled")
    seconds = time.perf_counter() - started
    del entries  # the spill files go with their entries
    return seconds


def _write_seconds(count: int, nbytes: int, directory: Path, *, reserve: bool) -> float:
    arrays = _arrays(count, nbytes)
    paths = [directory / f"baseline-{index}.bin" for index in range(count)]
    started = time.perf_counter()
    for array, path in zip(arrays, paths, strict=True):
        with open(path, "wb") as file:
            if reserve:
                os.posix_fallocate(file.fileno(), 0, nbytes)
            file.write(array.data)
    seconds = time.perf_counter() - started
    for path in paths:
        path.unlink()
    return seconds


def spill_throughput(*, count: int, mib: int, reps: int) -> None:
    nbytes = mib * MIB
    memory_budget(None)  # only the explicit spills run
    directory = Path(tempfile.mkdtemp(prefix="bench-spill-"))
    try:
        variants = [
            Variant("spill", "ours", lambda: _spill_seconds(count, nbytes)),
            Variant("page-cache write", "limit", lambda: _write_seconds(count, nbytes, directory, reserve=False)),
            Variant("fallocate + write", "limit", lambda: _write_seconds(count, nbytes, directory, reserve=True)),
        ]
        spill, write, reserved = measure_interleaved(variants, reps=reps, warmup=1)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
        memory_budget()
    total = count * nbytes
    print(f"spill throughput: {count} entries x {mib} MiB, {reps} reps, medians")
    for series in (spill, write, reserved):
        seconds = series.median
        print(f"  {series.name:<18} {seconds:7.3f} s  {total / seconds / GIB:6.2f} GiB/s")
    ratio = paired_ratio(write, spill)
    reserved_ratio = paired_ratio(reserved, spill)
    print(f"  spill against fallocate + write (space reserved first, as a spill does): {reserved_ratio:.2f}x")
    print(f"  target: spill >= 0.8x page-cache write bandwidth: {ratio:.2f}x, {'met' if ratio >= 0.8 else 'NOT met'}")


def _workload(mode: str, directory: Path, tmpdir: Path, cgroup: Any | None) -> float:
    env = {name: value for name, value in os.environ.items() if name != "LAZY_DISK_CACHE_MEMORY_BUDGET"}
    env["TMPDIR"] = str(tmpdir)
    command = [sys.executable, str(WORKLOAD), mode, str(directory), str(WORKLOAD_COUNT), str(WORKLOAD_MIB)]
    if cgroup is None:
        completed = subprocess.run(command, capture_output=True, text=True, timeout=900, check=False, env=env)
        returncode, stdout, stderr = completed.returncode, completed.stdout, completed.stderr
    else:
        run = cgroup.run(command, timeout=900, env=env)
        returncode, stdout, stderr = run.returncode, run.stdout, run.stderr
    if returncode != 0:
        raise RuntimeError(f"{mode} exited {returncode}: {stderr[-2000:]}")
    report = json.loads(stdout)
    if report["mismatched"]:
        raise RuntimeError(f"{mode}: entries {report['mismatched']} lost data")
    phases = ("create_seconds", "modify_seconds", "check_seconds")
    return float(sum(report.get(phase, 0.0) for phase in phases))


def workload_in_a_cgroup(*, reps: int) -> None:
    sys.path.insert(0, str(ROOT / "tests"))
    memory_cgroup = importlib.import_module("memory_cgroup")  # the test suite's harness

    refusal = memory_cgroup.memory_cgroup_refusal()
    if refusal is not None:
        print(f"workload in a memory cgroup: skipped ({refusal})")
        return
    scratch = Path(tempfile.mkdtemp(prefix="bench-budget-workload-"))
    store = scratch / "store"
    try:
        _workload("store-write", store, scratch, None)
        with memory_cgroup.child_memory_cgroup(WORKLOAD_LIMIT) as cgroup:
            for mode in ("ram", "store-modify"):
                limited_run = functools.partial(_workload, mode, store, scratch, cgroup)
                unlimited_run = functools.partial(_workload, mode, store, scratch, None)
                variants = [
                    Variant(f"{mode}, 1 GiB cgroup", "ours", limited_run),
                    Variant(f"{mode}, no limit", "limit", unlimited_run),
                ]
                limited, unlimited = measure_interleaved(variants, reps=reps, warmup=0)
                total = WORKLOAD_COUNT * WORKLOAD_MIB / 1024
                print(f"workload {mode}: {total:g} GiB of entries, {reps} reps, medians")
                for series in (limited, unlimited):
                    print(f"  {series.name:<26} {series.median:7.2f} s")
                print(f"  limited / unlimited: {paired_ratio(limited, unlimited):.2f}x")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="small sizes and few repetitions (a smoke run)")
    parser.add_argument("--entries", type=int, default=8, help="entries spilled per repetition")
    parser.add_argument("--mib", type=int, default=128, help="MiB per spilled entry")
    parser.add_argument("--no-workload", action="store_true", help="skip the memory-cgroup workload")
    args = parser.parse_args(argv)
    if args.quick:
        spill_throughput(count=4, mib=16, reps=3)
    else:
        spill_throughput(count=args.entries, mib=args.mib, reps=7)
    if not args.no_workload:
        workload_in_a_cgroup(reps=1 if args.quick else 3)
    return 0


if __name__ == "__main__":
    sys.exit(main())
