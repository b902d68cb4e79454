"""Peak extra resident memory while converting a large array, each variant in its own child.

A child builds and touches the source array, resets its peak RSS, converts, and reports
``VmHWM - VmRSS(before)``. File pages mapped into the process count as resident (that is what
``np.memmap`` assignment costs); page-cache pages written with ``pwrite``/``os.write`` do not.
"""

from __future__ import annotations

import sys
from pathlib import Path

from common import (
    BENCH_DIR,
    GIB,
    MIB,
    CaseResult,
    Impl,
    Role,
    Settings,
    Variant,
    format_bytes,
    measure_interleaved,
    run_json_child,
)

__all__ = ["rss_cases", "rss_sizes"]

_CHILD = BENCH_DIR / "rss_child.py"
_LABELS = {
    "os.write": "os.write to a fresh file (page cache)",
    "np.memmap": "np.memmap(mode='w+') assign + flush",
    "joblib.dump": "joblib.dump (no fsync)",
}


def rss_sizes(settings: Settings) -> dict[str, int]:
    if settings.quick:
        return {"large": 16 * MIB, "huge": 32 * MIB}
    return {"large": GIB, "huge": 4 * GIB}


def _child_variant(name: str, role: Role, python: str, variant: str, nbytes: int, workdir: Path) -> Variant:
    def op() -> float:
        result = run_json_child([python, str(_CHILD), variant, str(nbytes), str(workdir)], timeout=900)
        return float(result["extra_mib"])

    return Variant(name, role, op)


def rss_cases(settings: Settings, ours: Impl, original_python: str | None, original_na: str) -> list[CaseResult]:
    """One case per size; the original package runs under its own interpreter when available."""
    results = []
    for size, nbytes in rss_sizes(settings).items():
        work = settings.workdir
        variants = [
            _child_variant(ours.label, "ours", sys.executable, "ours", nbytes, work)
            if ours.array_na is None
            else Variant(ours.label, "ours", None, ours.array_na),
            _child_variant(_LABELS["os.write"], "limit", sys.executable, "os.write", nbytes, work),
        ]
        if size == "large":
            variants.append(_child_variant(_LABELS["np.memmap"], "numpy", sys.executable, "np.memmap", nbytes, work))
            variants.append(
                _child_variant(_LABELS["joblib.dump"], "joblib", sys.executable, "joblib.dump", nbytes, work)
            )
        if original_python is not None:
            variants.append(_child_variant("GSEGUtils 0.5.2", "original", original_python, "original", nbytes, work))
        else:
            variants.append(Variant("GSEGUtils 0.5.2", "original", None, original_na))
        series = measure_interleaved(variants, reps=1, warmup=0)
        notes = [
            "one child process per variant; value = peak RSS during the conversion minus RSS before it",
            "the source array itself is resident before the measurement starts and is not counted",
        ]
        title = f"peak extra RSS while converting float32 (N, 4), {format_bytes(nbytes)}"
        results.append(CaseResult(f"rss-{size}", title, "rss", "MiB", nbytes, series, notes, format_bytes(nbytes)))
    return results
