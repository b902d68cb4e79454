"""Shared benchmark machinery: interleaved timing, paired ratios, targets, RSS children, environment.

Every case is a list of variants (our operation and its baselines). `measure_interleaved` runs
them in the same process and the same repetition, rotating the starting variant each repetition
so that no variant always runs first (after a cold start) or last (under accumulated writeback).
A shared 2-core machine is noisy, so results are reported as the median over repetitions of the
per-repetition ratio between two variants: noise that hits one repetition hits both sides of it.

This module must import on the interpreter that runs the original package too (a separate venv),
so it imports nothing but the standard library and NumPy at module level.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import gc
import importlib
import json
import math
import os
import platform
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from types import ModuleType
from typing import Any, Literal

import numpy as np

__all__ = [
    "BENCH_DIR",
    "GIB",
    "KIB",
    "MIB",
    "CaseResult",
    "Impl",
    "Role",
    "Series",
    "Settings",
    "Target",
    "TargetOutcome",
    "Variant",
    "collect_garbage",
    "environment",
    "evaluate_target",
    "format_bytes",
    "format_seconds",
    "load_impl",
    "measure_interleaved",
    "now",
    "paired_ratio",
    "prewarm_memory",
    "read_status_kib",
    "reset_peak_rss",
    "run_json_child",
    "run_standalone",
    "settle",
    "unlink_quietly",
    "with_baselines",
]

KIB = 1024
MIB = 1024**2
GIB = 1024**3

BENCH_DIR = Path(__file__).resolve().parent

Role = Literal["ours", "limit", "numpy", "joblib", "original", "derived"]


@dataclass(frozen=True)
class Settings:
    """What one run measures: repetitions, sizes and the working directory (one file system)."""

    quick: bool
    workdir: Path
    reps: int
    large_reps: int
    store_reps: int
    warmup: int
    latency_calls: int

    @classmethod
    def for_run(cls, *, quick: bool, workdir: Path) -> Settings:
        """Full runs: 7 repetitions, 5 for 1 GiB conversions, 9 for fsync-bound store writes, plus a warm-up."""
        if quick:
            return cls(quick=True, workdir=workdir, reps=3, large_reps=3, store_reps=2, warmup=0, latency_calls=10)
        return cls(quick=False, workdir=workdir, reps=7, large_reps=5, store_reps=9, warmup=1, latency_calls=100)

    def for_original(self) -> Settings:
        """The original's run is context, not a target: fewer repetitions keep the suite short."""
        if self.quick:
            return self
        return replace(self, reps=3, large_reps=2, store_reps=2, warmup=0)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["workdir"] = str(self.workdir)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Settings:
        return cls(**{**data, "workdir": Path(data["workdir"])})


@dataclass
class Variant:
    """One contender of a case. `op` performs one measured operation and returns its seconds.

    `op` does its own setup and teardown outside the timed region, so a variant can prepare a
    fresh file name or drop the page-cache pages of the previous repetition without charging them.
    It may return a dict instead, holding its own time under its name plus the times of named
    phases of the same operation (reported as extra rows). `na` is the reason the variant
    cannot run here (for example, a feature not built yet).
    """

    name: str
    role: Role
    op: Callable[[], float | dict[str, float]] | None
    na: str | None = None


@dataclass
class Series:
    """The measurements of one variant: one value per repetition (NaN when a repetition failed)."""

    name: str
    role: Role
    values: list[float] = field(default_factory=list)
    note: str = ""

    @property
    def ok(self) -> bool:
        return bool(self.values) and not self.note and not all(math.isnan(v) for v in self.values)

    @property
    def median(self) -> float:
        finite = [v for v in self.values if not math.isnan(v)]
        return statistics.median(finite) if finite else math.nan


@dataclass
class CaseResult:
    """Everything measured for one case, ready for the report and for JSON exchange with children."""

    case_id: str
    title: str
    group: str
    unit: Literal["s", "MiB", "B"]
    nbytes: int | None
    series: list[Series]
    notes: list[str] = field(default_factory=list)
    size_label: str = ""

    def get(self, name: str) -> Series | None:
        return next((s for s in self.series if s.name == name), None)

    @property
    def ours(self) -> Series | None:
        return next((s for s in self.series if s.role == "ours"), None)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CaseResult:
        series = [Series(**s) for s in data["series"]]
        return cls(**{**data, "series": series})


def collect_garbage() -> None:
    """Run the collector so finalizers of entries caught in cycles (and their unlinks) have run."""
    gc.collect()


def unlink_quietly(*paths: Path) -> None:
    """Remove files left by a variant; a missing file is fine."""
    for path in paths:
        try:
            path.unlink()
        except FileNotFoundError:
            pass


def prewarm_memory(nbytes: int) -> None:
    """Touch and free `nbytes` of anonymous memory right before an operation that allocates.

    On a virtual machine that hands free memory back to its host (free page reporting, as on
    this one), memory freed a few seconds earlier costs about 2 s/GiB to fault in again. Without
    this step that cost lands on whichever variant happens to run after a slow one; with it,
    every variant allocates from memory the guest already holds.
    """
    if nbytes > 0:
        scratch = np.empty(nbytes, dtype=np.uint8)
        scratch.fill(1)
        del scratch


def measure_interleaved(variants: Sequence[Variant], *, reps: int, warmup: int, prewarm_bytes: int = 0) -> list[Series]:
    """Run every available variant once per repetition, rotating the start, and collect the times.

    `prewarm_bytes` is how much fresh memory (page cache or anonymous) a variant may allocate;
    that much is touched before each variant, outside its timing (see `prewarm_memory`).
    A variant that raises is reported as an error and not run again; its earlier values are kept
    out of every ratio (the whole series is marked), so a half-broken variant never looks fast.
    """
    series = {v.name: Series(v.name, v.role, note=f"n/a ({v.na})" if v.na else "") for v in variants}
    phases: dict[str, list[Series]] = {v.name: [] for v in variants}
    live = [v for v in variants if v.na is None and v.op is not None]
    for rep in range(warmup + reps):
        shift = rep % len(live) if live else 0
        for variant in live[shift:] + live[:shift]:
            result = series[variant.name]
            if result.note or variant.op is None:
                continue
            prewarm_memory(prewarm_bytes)
            try:
                outcome = variant.op()
            except Exception as exc:
                result.note = f"error ({type(exc).__name__}: {exc})"
                print(f"bench: {variant.name} failed:", file=sys.stderr)
                traceback.print_exc(file=sys.stderr)
                continue
            if rep < warmup:
                continue
            timings = outcome if isinstance(outcome, dict) else {variant.name: outcome}
            result.values.append(timings[variant.name])
            for name, seconds in timings.items():
                if name != variant.name:
                    _phase(phases[variant.name], name).values.append(seconds)
    return [s for v in variants for s in (series[v.name], *phases[v.name])]


def _phase(known: list[Series], name: str) -> Series:
    found = next((s for s in known if s.name == name), None)
    if found is None:
        found = Series(name, "derived")
        known.append(found)
    return found


def paired_ratio(numerator: Series, denominator: Series) -> float:
    """Median over repetitions of numerator/denominator, pairing values from the same repetition."""
    if not (numerator.ok and denominator.ok):
        return math.nan
    ratios = [
        a / b
        for a, b in zip(numerator.values, denominator.values, strict=False)
        if not (math.isnan(a) or math.isnan(b)) and b > 0
    ]
    return statistics.median(ratios) if ratios else math.nan


@dataclass(frozen=True)
class Target:
    """A promise about one case.

    `kind` says how the measured number is formed:
    * ``speed``: baseline time / our time per repetition (higher is better), must be >= threshold;
    * ``time``: our time / baseline time per repetition (lower is better), must be <= threshold;
    * ``absolute``: our median value itself (e.g. MiB), must be <= threshold.
    """

    case_id: str
    kind: Literal["speed", "time", "absolute"]
    threshold: float
    baseline: str | None
    text: str  # may name the case's size as "{size}"
    # When set, the target judges one timed part of a variant: the series "<variant>: <part>".
    part: str | None = None

    def measure(self, case: CaseResult, ours: Series | None = None) -> float:
        """The number this target judges, for our series or for another series of the case."""
        subject = ours if ours is not None else case.ours
        if subject is not None and self.part is not None:
            subject = case.get(f"{subject.name}: {self.part}")
        if subject is None or not subject.ok:
            return math.nan
        if self.kind == "absolute":
            return subject.median
        baseline = case.get(self.baseline or "")
        if baseline is None:
            return math.nan
        if self.kind == "speed":
            return paired_ratio(baseline, subject)
        return paired_ratio(subject, baseline)

    def passes(self, value: float) -> bool:
        if math.isnan(value):
            return False
        return value >= self.threshold if self.kind == "speed" else value <= self.threshold

    def headroom(self, value: float) -> float:
        """>= 1 when the target is met, on a scale where 2 means "twice as good as required"."""
        if math.isnan(value) or value <= 0:
            return math.nan
        return value / self.threshold if self.kind == "speed" else self.threshold / value

    def describe(self, value: float) -> str:
        if math.isnan(value):
            return "n/a"
        if self.kind == "absolute":
            return f"{value:.1f} MiB"
        return f"{value:.2f}x" if value >= 0.01 else f"{value:.4f}x"

    def rule(self) -> str:
        if self.kind == "absolute":
            return f"<= {self.threshold:g} MiB"
        sign = ">=" if self.kind == "speed" else "<="
        return f"{sign} {self.threshold:g}x"


@dataclass(frozen=True)
class TargetOutcome:
    target: Target
    label: str
    value: float
    verdict: str
    original_value: float


def evaluate_target(target: Target, cases: dict[str, CaseResult], originals: dict[str, CaseResult]) -> TargetOutcome:
    """Judge a target; the original package, measured in its own process, is judged the same way."""
    case = cases.get(target.case_id)
    value = target.measure(case) if case is not None else math.nan
    baseline = case.get(target.baseline) if case is not None and target.baseline else None
    if case is None or case.ours is None or not case.ours.ok:
        note = case.ours.note if case is not None and case.ours is not None else "not measured"
        verdict = note or "n/a"
    elif baseline is not None and not baseline.ok:
        verdict = f"n/a (baseline {baseline.note or 'not measured'})"
    else:
        verdict = "PASS" if target.passes(value) else "MISS"
    original_value = math.nan
    # The peak-RSS cases run the original in-case (a child either way); timed cases in its own run.
    for source in (case, originals.get(target.case_id)):
        original = next((s for s in source.series if s.role == "original" and s.ok), None) if source else None
        if source is not None and original is not None:
            original_value = target.measure(source, original)
            break
    label = target.text.format(size=case.size_label if case is not None else "?")
    return TargetOutcome(target, label, value, verdict, original_value)


@dataclass(frozen=True)
class Impl:
    """One implementation of the public API (ours, or the original package in its own venv)."""

    label: str
    role: Role
    array_cls: Any
    store_cls: Any
    config_cls: Any
    array_na: str | None
    store_na: str | None


def _import_attr(module: str, name: str) -> tuple[Any, str | None]:
    try:
        return getattr(importlib.import_module(module), name), None
    except (ImportError, AttributeError) as exc:
        print(f"bench: {module}.{name} unavailable: {exc}", file=sys.stderr)
        return None, "not built"


def load_impl(which: Literal["ours", "original"]) -> Impl:
    """Import the classes a case needs; a missing feature becomes an n/a reason, not a crash."""
    role: Role
    if which == "ours":
        package, label, role = "lazy_disk_cache", "lazy_disk_cache", "ours"
    else:
        package, label, role = "GSEGUtils.lazy_disk_cache", "GSEGUtils 0.5.2", "original"
    array_cls, array_na = _import_attr(f"{package}.disk_backed_ndarray", "DiskBackedNDArray")
    store_cls, store_na = _import_attr(f"{package}.disk_backed_store", "DiskBackedStore")
    config_cls, config_na = _import_attr(f"{package}.lazy_disk_cache", "LazyDiskCacheConfig")
    store_na = store_na or array_na or config_na
    return Impl(label, role, array_cls, store_cls, config_cls, array_na, store_na)


def with_baselines(variants: Sequence[Variant], impl: Impl, baselines: set[str] | None) -> list[Variant]:
    """The variants of `impl`'s own role, and of the others those `baselines` names (all when None)."""
    return [v for v in variants if v.role == impl.role or baselines is None or v.name in baselines]


def format_seconds(seconds: float) -> str:
    if math.isnan(seconds):
        return "n/a"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.1f} µs"
    if seconds < 1:
        return f"{seconds * 1e3:.1f} ms"
    return f"{seconds:.2f} s"


def format_bytes(nbytes: int) -> str:
    for unit, size in (("GiB", GIB), ("MiB", MIB), ("KiB", KIB)):
        if nbytes >= size:
            value = nbytes / size
            return f"{value:.0f} {unit}" if value == int(value) else f"{value:.1f} {unit}"
    return f"{nbytes} B"


def read_status_kib(field_name: str) -> int:
    """A ``/proc/self/status`` memory field (VmRSS, VmHWM, ...) in KiB."""
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    raise OSError(f"/proc/self/status has no {field_name} line")


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False when the kernel refuses."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as clear_refs:
            clear_refs.write("5")
    except OSError:
        return False
    return True


def run_json_child(argv: Sequence[str], *, timeout: float) -> dict[str, Any]:
    """Run a child that prints one JSON object on its last stdout line; raise with its stderr otherwise."""
    proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, check=False)
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-5:]
        raise RuntimeError(f"child exited with {proc.returncode}: {' | '.join(tail)}")
    lines = proc.stdout.strip().splitlines()
    if not lines:
        raise RuntimeError("child printed no result")
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _ram_total() -> str:
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemTotal:"):
                    return format_bytes(int(line.split()[1]) * KIB)
    except OSError:
        pass
    return "unknown"


def _command_output(argv: Sequence[str]) -> str:
    if shutil.which(argv[0]) is None:
        return f"({argv[0]} not available)"
    proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=30, check=False)
    return " ".join(proc.stdout.split()) if proc.returncode == 0 else f"({argv[0]} failed)"


def _version_of(module: str) -> str:
    try:
        imported: ModuleType = importlib.import_module(module)
    except ImportError:
        return "not installed"
    return str(getattr(imported, "__version__", "unknown"))


def _elf_section_names(data: bytes) -> set[str]:
    """Section names of a 64-bit little-endian ELF image (empty for anything else)."""
    if data[:6] != b"\x7fELF\x02\x01":
        return set()
    (shoff,) = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)
    (names_offset,) = struct.unpack_from("<Q", data, shoff + shstrndx * shentsize + 0x18)
    names = set()
    for index in range(shnum):
        (name_at,) = struct.unpack_from("<I", data, shoff + index * shentsize)
        start = names_offset + name_at
        names.add(data[start : data.index(b"\0", start)].decode("ascii", "replace"))
    return names


def _build_profile() -> str:
    """Whether the native module was built optimised: dev builds carry a .debug_info section."""
    try:
        native = importlib.import_module("lazy_disk_cache._rust")
        data = Path(native.__file__ or "").read_bytes()
        sections = _elf_section_names(data)
    except (ImportError, OSError, struct.error, ValueError):
        return "unknown build"
    if not sections:
        return "unknown build"
    return "debug build" if ".debug_info" in sections else "release build"


def _relative(path: Path) -> str:
    """The path relative to the repository when inside it: the report names no machine paths."""
    try:
        return str(path.resolve().relative_to(BENCH_DIR.parent))
    except ValueError:
        return str(path)


def environment(workdir: Path) -> list[tuple[str, str]]:
    """The facts a reader needs to judge the numbers: machine, file system, versions, date."""
    dirty = []
    for name in ("dirty_background_ratio", "dirty_ratio"):
        try:
            dirty.append(f"{name}={Path('/proc/sys/vm', name).read_text().strip()}")
        except OSError:
            dirty.append(f"{name}=?")
    return [
        ("date", _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC")),
        ("CPU", f"{_cpu_model()}, {os.cpu_count()} logical cores"),
        ("RAM", _ram_total()),
        ("kernel", f"{platform.system()} {platform.release()}"),
        ("bench dir", _relative(workdir)),
        ("file system (findmnt -T)", _command_output(["findmnt", "-n", "-T", str(workdir)])),
        ("file system (stat -f)", _command_output(["stat", "-f", "-c", "type=%T block=%S", str(workdir)])),
        ("writeback", ", ".join(dirty)),
        ("Python", f"{platform.python_implementation()} {platform.python_version()}"),
        ("numpy", np.__version__),
        ("lazy_disk_cache", f"{_version_of('lazy_disk_cache')} ({_build_profile()})"),
        ("joblib", _version_of("joblib")),
    ]


def settle(paths: Iterable[Path] = (), *, collect: bool = False) -> None:
    """Between variants: remove the files a variant left (and, for our entries, run the collector)."""
    if collect:
        collect_garbage()
    unlink_quietly(*paths)


def now() -> float:
    """The clock every variant uses."""
    return time.perf_counter()


def run_standalone(
    doc: str | None, argv: list[str] | None, *case_groups: Callable[[Settings, Impl], list[CaseResult]]
) -> int:
    """Run one benchmark module alone: parse ``--quick``, run its case groups on ours, print each table."""
    from report import render_case  # report imports this module

    parser = argparse.ArgumentParser(description=doc.splitlines()[0] if doc else None)
    parser.add_argument("--quick", action="store_true", help="small sizes, few repetitions")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(dir=BENCH_DIR, prefix="work-") as work:
        settings = Settings.for_run(quick=args.quick, workdir=Path(work))
        impl = load_impl("ours")
        results = [case for cases in case_groups for case in cases(settings, impl)]
    for case in results:
        print(render_case(case, {}))
    return 0
