"""Child process for the durable-entry cases: one timed operation on a large array, reported as JSON.

Usage: ``python bench/durable_child.py CASE VARIANT NBYTES DIR``; every variant runs in a child of
its own, so ours and the original (which needs its own interpreter) are timed the same way.

* ``construct``: build the source, then time a durable entry's construction,
  ``DiskBackedNDArray(a, enable_caching=True, cache_path=DIR/construct, purge_disk_on_gc=False)``
  (variants ``ours``, ``original``), or ``os.write`` + fsync of the same bytes (``os.write+fsync``).
* ``reopen``: DIR holds a store with the key ``big``; open it and take ``store["big"]`` (timed as
  the reopen), then time its first ``offload()``. Variants ``ours``, ``original`` and, with one
  element written before the offload, ``ours-written`` and ``original-written``.

The child prints one JSON line: ``{"seconds": ..., "reopen": ...}``. It removes what it wrote.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from baselines import write_fresh
from common import collect_garbage, load_impl, prewarm_memory, unlink_quietly

__all__ = ["CASES", "main"]

CASES = ("construct", "reopen")
KEY = "big"


def _source(nbytes: int) -> np.ndarray[Any, Any]:
    return np.random.default_rng(13).random((nbytes // 16, 4), dtype=np.float32)


def _construct(variant: str, nbytes: int, directory: Path) -> dict[str, float]:
    source = _source(nbytes)
    target = directory / f"construct-{variant}"
    prewarm_memory(nbytes + (64 << 20))
    if variant == "os.write+fsync":
        start = time.perf_counter()
        write_fresh(target, source, fsync=True)
        seconds = time.perf_counter() - start
        unlink_quietly(target)
        return {"seconds": seconds}
    impl = load_impl("original" if variant == "original" else "ours")
    if impl.array_na:
        raise SystemExit(f"{impl.label}: {impl.array_na}")
    start = time.perf_counter()
    entry = impl.array_cls(source, enable_caching=True, cache_path=target, purge_disk_on_gc=False)
    seconds = time.perf_counter() - start
    del entry
    collect_garbage()
    unlink_quietly(target.with_suffix(".dat"))
    return {"seconds": seconds}


def _reopen(variant: str, nbytes: int, directory: Path) -> dict[str, float]:
    impl = load_impl("original" if variant.startswith("original") else "ours")
    if impl.store_na:
        raise SystemExit(f"{impl.label}: {impl.store_na}")
    prewarm_memory(2 * nbytes + (64 << 20))
    start = time.perf_counter()
    config = impl.config_cls(enable_caching=True, cache_path=directory, purge_disk_on_gc=False)
    store = impl.store_cls(config=config, factory=impl.array_cls)
    entry = store[KEY]
    reopen = time.perf_counter() - start
    if variant.endswith("-written"):
        entry.data[0, 0] = -1.0
    start = time.perf_counter()
    entry.offload()
    seconds = time.perf_counter() - start
    del entry, store
    collect_garbage()
    unlink_quietly(directory / f"{KEY}.dat")
    return {"seconds": seconds, "reopen": reopen}


def main(argv: list[str]) -> int:
    case, variant, nbytes, directory = argv[0], argv[1], int(argv[2]), Path(argv[3])
    if case == "construct":
        result = _construct(variant, nbytes, directory)
    elif case == "reopen":
        result = _reopen(variant, nbytes, directory)
    else:
        raise SystemExit(f"unknown case {case!r}; choose from {CASES}")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
