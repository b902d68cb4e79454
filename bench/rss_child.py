"""Child process for the peak-memory cases: convert one array one way, report the extra peak RSS.

Usage: ``python bench/rss_child.py VARIANT NBYTES DIR``. The source array is built and touched
first, then the peak (VmHWM) is reset to the current RSS, the variant runs, and the child prints
one JSON line: the RSS before, the peak after and the difference in MiB. Every import happens
before the reset, so only the conversion itself is charged.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from baselines import memmap_assign, write_fresh
from common import MIB, collect_garbage, load_impl, read_status_kib, reset_peak_rss, unlink_quietly

__all__ = ["VARIANTS", "main"]

VARIANTS = ("ours", "original", "os.write", "np.memmap", "joblib.dump")


def _operation(variant: str, directory: Path) -> tuple[Callable[[np.ndarray[Any, Any]], None], list[Path]]:
    target = directory / f"rss-{variant}"
    if variant in ("ours", "original"):
        impl = load_impl("ours" if variant == "ours" else "original")
        if impl.array_na:
            raise SystemExit(f"{impl.label}: {impl.array_na}")

        def convert(source: np.ndarray[Any, Any]) -> None:
            entry = impl.array_cls(source, enable_caching=True, cache_path=target, purge_disk_on_gc=True)
            entry.offload()
            del entry
            collect_garbage()

        return convert, [target.with_suffix(".dat")]
    if variant == "os.write":
        return (lambda source: write_fresh(target, source, fsync=False)), [target]
    if variant == "np.memmap":
        return (lambda source: memmap_assign(target, source)), [target]
    if variant == "joblib.dump":
        import joblib

        return (lambda source: joblib.dump(source, target)), [target]
    raise SystemExit(f"unknown variant {variant!r}; choose from {VARIANTS}")


def main(argv: list[str]) -> int:
    variant, nbytes, directory = argv[0], int(argv[1]), Path(argv[2])
    operation, leftovers = _operation(variant, directory)
    source = np.ones((nbytes // 16, 4), dtype=np.float32)
    collect_garbage()
    rss_before = read_status_kib("VmRSS")
    reset = reset_peak_rss()
    peak_before = read_status_kib("VmHWM")
    start = time.perf_counter()
    operation(source)
    seconds = time.perf_counter() - start
    peak_after = read_status_kib("VmHWM")
    unlink_quietly(*leftovers)
    floor = rss_before if reset else max(rss_before, peak_before)
    result = {
        "variant": variant,
        "rss_before_kib": rss_before,
        "peak_after_kib": peak_after,
        "extra_mib": max(0, peak_after - floor) * 1024 / MIB,
        "seconds": seconds,
        "peak_reset": reset,
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
