"""Markdown rendering of a run: environment, the targets table, one table per case, method notes."""

from __future__ import annotations

import math
from collections.abc import Sequence

from common import GIB, MIB, CaseResult, Series, TargetOutcome, format_bytes, format_seconds, paired_ratio

__all__ = ["REFERENCE_BASELINE", "render_case", "render_report"]

# The baseline each group's cross-process comparison with the original goes through.
REFERENCE_BASELINE = {
    "convert": "os.write to a fresh file (page cache)",
    "load": "raw open + mmap + close",
    "read": "best page-cache read",
    "store-write": "hand-written group commit, fsyncs on 8 threads (same artefacts, same durability)",
    "store-disk": "hand-written group commit, fsyncs on 8 threads (same artefacts, same durability)",
    "store-reload": "np.load into RAM",
}

_GROUP_TITLES = {
    "convert": "Conversion: `DiskBackedNDArray(a, enable_caching=True)` + `offload()`",
    "load": "`load()` latency",
    "read": "First full read after `load()`",
    "store-write": "Store: durable write, end to end",
    "store-disk": "Store: disk use after a durable write",
    "store-reload": "Store: reopen + reload",
    "durable": "Durable entries against the original",
    "reopen": "First `offload()` of an entry reopened from a store",
    "rss": "Peak extra resident memory",
}


def _cell(series: Series, case: CaseResult) -> str:
    if not series.ok:
        return series.note or "n/a"
    if case.unit == "MiB":
        return f"{series.median:.1f} MiB"
    if case.unit == "B":
        return format_bytes(int(series.median))
    return format_seconds(series.median)


def _throughput(series: Series, case: CaseResult) -> str:
    if case.unit == "B" and case.nbytes and series.ok:
        return f"{series.median / case.nbytes:.2f}x payload"
    if case.unit != "s" or not case.nbytes or not series.ok:
        return ""
    rate = case.nbytes / series.median
    return f"{rate / GIB:.2f} GiB/s" if rate >= 0.1 * GIB else f"{rate / MIB:.1f} MiB/s"


def _ours_vs(series: Series, case: CaseResult, ours: Series | None) -> str:
    if ours is None or series is ours or case.unit not in ("s", "B"):
        return ""
    ratio = paired_ratio(series, ours)
    return "" if math.isnan(ratio) else f"{ratio:.2f}x"


def _original_row(case: CaseResult, original_case: CaseResult | None, reason: str) -> list[str] | None:
    if case.group not in REFERENCE_BASELINE:
        return None
    if original_case is None:
        return ["GSEGUtils 0.5.2", "original", reason or "not run for this case (no target)", "", ""]
    original = next((s for s in original_case.series if s.role == "original"), None)
    if original is None:
        return None
    reference = REFERENCE_BASELINE[case.group]
    speed = math.nan
    theirs_ref, ours_ref, ours = original_case.get(reference), case.get(reference), case.ours
    if theirs_ref is not None and ours_ref is not None and ours is not None:
        # Different processes cannot be paired, so both go through the baseline each measured.
        speed = paired_ratio(original, theirs_ref) / paired_ratio(ours, ours_ref)
    ratio = "" if math.isnan(speed) else f"~{speed:.2f}x (via baseline)"
    label = "GSEGUtils 0.5.2 (own process, Python 3.12)"
    return [label, "original", _cell(original, original_case), _throughput(original, original_case), ratio]


def render_case(case: CaseResult, originals: dict[str, CaseResult], original_reason: str = "") -> str:
    """One Markdown table: every variant's median, throughput and our speed relative to it."""
    ours = case.ours
    if case.unit == "s":
        header = "| variant | kind | median | throughput | ours vs this (speed, >1 = ours faster) |"
    elif case.unit == "B":
        header = "| variant | kind | bytes on disk | per payload byte | ours vs this (>1 = ours uses less) |"
    else:
        header = "| variant | kind | peak extra RSS | | |"
    lines = [f"#### {case.title}", "", f"`{case.case_id}`", "", header, "|---|---|---:|---:|---:|"]
    for series in case.series:
        name = f"**{series.name}**" if series is ours else series.name
        row = [name, series.role, _cell(series, case), _throughput(series, case), _ours_vs(series, case, ours)]
        lines.append("| " + " | ".join(row) + " |")
    original_row = _original_row(case, originals.get(case.case_id), original_reason)
    if original_row is not None:
        lines.append("| " + " | ".join(original_row) + " |")
    lines.append("")
    lines += [f"- {note}" for note in case.notes]
    return "\n".join(lines) + "\n"


def render_targets(outcomes: Sequence[TargetOutcome], cases: dict[str, CaseResult]) -> str:
    lines = [
        "| target | case | baseline | ours | GSEGUtils 0.5.2 | result |",
        "|---|---|---|---:|---:|:---:|",
    ]
    for outcome in outcomes:
        target = outcome.target
        case = cases.get(target.case_id)
        title = case.title if case is not None else target.case_id
        original = target.describe(outcome.original_value)
        ours = f"{target.describe(outcome.value)} (target {target.rule()})"
        row = [outcome.label, title, target.baseline or "absolute", ours, original, f"**{outcome.verdict}**"]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


_METHOD = """\
- Every case runs its variants in the same process and in the same repetition, one after the
  other, rotating which variant goes first in each repetition; a warm-up repetition is dropped
  in full runs. Ratios are the median over repetitions of the per-repetition ratio, so a noisy
  moment on this shared 2-core machine hits both sides of a ratio. Medians are absolute.
- "ours vs this" is the speed of ours relative to the row (the row's time / our time, paired
  per repetition): above 1 means ours is faster.
- Durability is compared like with like: our `.dat` under purge duty (the default) is not
  fsynced, so conversion is judged against `os.write` without fsync. Store writes are durable
  (fsync of each file, then renames, then one directory fsync), and so is their baseline; a
  durable standalone entry is judged against the original and against `os.write` + fsync.
- The page cache is warm for every read and load: files are read right after being written,
  and dropping caches is not possible here. Cold-cache reads are bounded by the disk instead.
- This virtual machine returns free memory to its host within seconds, and faulting it back
  costs about 2 s/GiB. So before each variant, as much memory as it may allocate is touched and
  freed, outside its timing; otherwise that cost would land on whichever variant follows a slow
  one. 1 GiB writes still vary between about 0.3 s and 0.8 s from one repetition to the next.
- The original package needs Python 3.12; it runs in `bench/.venv-gsegutils` in a separate
  process with its own baselines, so its ratios are against those and the "ours vs this" cell
  for it goes through the shared baseline (marked "via baseline").
"""


def render_report(
    *,
    command: str,
    duration_s: float,
    environment: Sequence[tuple[str, str]],
    original_environment: Sequence[tuple[str, str]],
    original_reason: str,
    outcomes: Sequence[TargetOutcome],
    cases: Sequence[CaseResult],
    originals: dict[str, CaseResult],
    plot_name: str | None,
) -> str:
    """The whole document written to ``--out``."""
    by_id = {case.case_id: case for case in cases}
    parts = [
        "# Benchmarks",
        "",
        f"Generated by `{command}` in {duration_s / 60:.1f} minutes.",
        "Regenerate with `./scripts/bench.sh` (release build, full run).",
        "",
        "## Environment",
        "",
        "| | |",
        "|---|---|",
    ]
    parts += [f"| {key} | {value} |" for key, value in environment]
    original = ", ".join(f"{k} {v}" for k, v in original_environment) or original_reason
    parts += [f"| GSEGUtils 0.5.2 | {original} |", "", "## Targets", "", render_targets(outcomes, by_id)]
    if plot_name:
        parts += [f"![ratios against targets]({plot_name})", ""]
    parts += ["## Method", "", _METHOD, "## Cases", ""]
    for group, title in _GROUP_TITLES.items():
        group_cases = [case for case in cases if case.group == group]
        if group_cases:
            parts += [f"### {title}", ""]
            parts += [render_case(case, originals, original_reason) for case in group_cases]
    return "\n".join(parts)
