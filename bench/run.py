"""Run the whole benchmark suite and print (and optionally write) the Markdown report.

Usage::

    .venv/bin/python bench/run.py [--quick] [--out docs/benchmarks.md]

``--out`` also writes the chart next to the report (same name, ``.png``); every run leaves its
raw per-repetition values in ``last-run.json`` under the work directory's parent. A full run takes a few
minutes on a 2-core machine and creates ``bench/.venv-gsegutils`` for the original package on
first use; ``--quick`` uses small sizes and few repetitions and never creates that venv. The
exit status is 1 when one of our variants raised (the report says which), 0 otherwise: missed
targets are findings, not failures.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bench_convert import BEST_READ, OS_WRITE, RAW_MMAP, convert_cases, load_and_read_cases
from bench_durable import ORIGINAL_CONSTRUCT, ORIGINAL_REOPEN, ORIGINAL_REOPEN_WRITTEN, WRITTEN_PART, durable_cases
from bench_store import (
    GROUP_COMMIT,
    NP_LOAD_MMAP,
    NP_LOAD_MMAP_COPY,
    NP_LOAD_RAM,
    disk_cases,
    reload_cases,
    write_cases,
)
from common import BENCH_DIR, CaseResult, Impl, Settings, Target, environment, evaluate_target, load_impl
from original import ensure_original, run_original
from report import render_report
from rss import rss_cases

__all__ = ["TARGETS", "main"]

TARGETS = [
    *(
        Target(
            f"convert-{kind}-{size}",
            "speed",
            0.8,
            OS_WRITE,
            f"convert + offload, {label}, {{size}}: >= 0.8x page-cache write bandwidth",
        )
        for kind, label in (
            ("f32", "float32"),
            ("rec20", "20-byte records"),
            ("strided", "row-strided float32"),
            ("fortran", "Fortran-ordered float32"),
            ("colstrided", "column-strided float32"),
            ("fortran-wide", "Fortran-ordered float64 (N, 4096)"),
        )
        for size in ("small", "large")
    ),
    *(
        Target(f"load-f32-{size}", "time", 2.0, RAW_MMAP, "load(), {size}: <= 2x raw mmap open latency")
        for size in ("small", "large")
    ),
    *(
        Target(f"read-f32-{size}", "speed", 0.9, BEST_READ, "first full read, {size}: >= 0.9x best read")
        for size in ("small", "large")
    ),
    *(
        Target(
            f"store-write-{name}",
            "time",
            1.3,
            GROUP_COMMIT,
            "durable store write end to end (adds + offload(pickle_container=True)), {size}:"
            " <= 1.3x hand-written group commit",
        )
        for name in ("many", "big")
    ),
    *(
        Target(
            f"store-disk-{name}",
            "time",
            1.1,
            GROUP_COMMIT,
            "disk use after a durable store write, {size}: <= 1.1x hand-written group commit's",
        )
        for name in ("many", "big")
    ),
    *(
        Target(
            f"store-reload-{name}",
            "time",
            1.0,
            baseline,
            "store reopen + reload, {size}: <= 1.0x " + wording,
        )
        for name in ("many", "big")
        for baseline, wording in (
            (NP_LOAD_MMAP_COPY, "np.load(mmap_mode='r') + copy (the issue's baseline)"),
            (NP_LOAD_MMAP, "np.load(mmap_mode='r') alone (stricter: read-only, nothing copied)"),
        )
    ),
    Target("store-reload-big", "speed", 10.0, NP_LOAD_RAM, "store reload, {size}: >= 10x faster than np.load"),
    Target(
        "durable-construct", "time", 1.0, ORIGINAL_CONSTRUCT, "durable entry construction, {size}: <= 1.0x original"
    ),
    Target(
        "reopen-offload",
        "time",
        1.0,
        ORIGINAL_REOPEN,
        "first offload() of a reopened entry, {size}: <= 1.0x original",
    ),
    Target(
        "reopen-offload",
        "time",
        1.0,
        ORIGINAL_REOPEN_WRITTEN,
        "first offload() of a reopened entry, one element written, {size}: <= 1.0x original (one written too)",
        part=WRITTEN_PART,
    ),
    Target("rss-large", "absolute", 80.0, None, "peak extra RSS converting {size}: <= 80 MiB"),
    Target("rss-huge", "absolute", 80.0, None, "peak extra RSS converting {size}: <= 80 MiB"),
]

GROUPS = ("convert", "load", "store-write", "store-disk", "store-reload", "durable", "rss")


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Run the lazy_disk_cache benchmark suite.")
    parser.add_argument("--quick", action="store_true", help="small sizes and few repetitions (smoke test)")
    parser.add_argument("--out", type=Path, help="write the Markdown report here and the chart next to it")
    parser.add_argument("--workdir", type=Path, help="directory for the files (default: under bench/out)")
    parser.add_argument("--no-original", action="store_true", help="do not run GSEGUtils 0.5.2")
    parser.add_argument("--groups", default=",".join(GROUPS), help=f"comma-separated subset of {','.join(GROUPS)}")
    return parser.parse_args(argv)


def _run_groups(
    settings: Settings, impl: Impl, groups: set[str], original: str | None, reason: str
) -> list[CaseResult]:
    runners: dict[str, Callable[[], list[CaseResult]]] = {
        "convert": lambda: convert_cases(settings, impl),
        "load": lambda: load_and_read_cases(settings, impl),
        "store-write": lambda: write_cases(settings, impl),
        "store-disk": lambda: disk_cases(settings, impl),
        "store-reload": lambda: reload_cases(settings, impl),
        "durable": lambda: durable_cases(settings, impl, original, reason),
        "rss": lambda: rss_cases(settings, impl, original, reason),
    }
    cases: list[CaseResult] = []
    for group in GROUPS:
        if group in groups:
            started = time.perf_counter()
            cases += runners[group]()
            print(f"bench: {group} done in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    return cases


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    groups = {g.strip() for g in args.groups.split(",") if g.strip()}
    unknown = groups - set(GROUPS)
    if unknown:
        print(f"bench: unknown groups {sorted(unknown)}; choose from {', '.join(GROUPS)}", file=sys.stderr)
        return 2
    started = time.perf_counter()
    parent = args.workdir or BENCH_DIR / "out"
    parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=parent, prefix="work-") as work:
        settings = Settings.for_run(quick=args.quick, workdir=Path(work))
        impl = load_impl("ours")
        if args.no_original:
            original, reason = None, "skipped: --no-original"
        else:
            original, reason = ensure_original(create=not args.quick)
        print(f"bench: GSEGUtils 0.5.2: {original or reason}", file=sys.stderr)
        cases = _run_groups(settings, impl, groups, original, reason)
        originals: dict[str, CaseResult] = {}
        original_env: list[tuple[str, str]] = []
        if original is not None and groups - {"rss", "durable"}:
            originals, original_env, problem = run_original(settings, original)
            reason = problem or reason
        env = environment(settings.workdir)
        shutil.rmtree(work, ignore_errors=True)
    raw = {"ours": [c.to_json() for c in cases], "original": [c.to_json() for c in originals.values()]}
    (parent / "last-run.json").write_text(json.dumps(raw), encoding="utf-8")
    by_id = {case.case_id: case for case in cases}
    outcomes = [evaluate_target(t, by_id, originals) for t in TARGETS if t.case_id in by_id]
    plot_name = None
    mode = "quick" if args.quick else "full"
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        plot_path = args.out.with_suffix(".png")
        try:
            from plot import plot_targets

            plot_targets(outcomes, plot_path, subtitle=f"{mode} run, {env[1][1]}")
            plot_name = plot_path.name
        except ImportError as exc:
            print(f"bench: no chart ({exc})", file=sys.stderr)
    command = "bench/run.py " + shlex.join(argv if argv is not None else sys.argv[1:])
    report = render_report(
        command=command.strip(),
        duration_s=time.perf_counter() - started,
        environment=env,
        original_environment=original_env,
        original_reason=reason,
        outcomes=outcomes,
        cases=cases,
        originals=originals,
        plot_name=plot_name,
    )
    print(report)
    if args.out is not None:
        args.out.write_text(report, encoding="utf-8")
    errors = [s.name for c in cases for s in c.series if s.role == "ours" and s.note.startswith("error")]
    if errors:
        print(f"bench: our variants raised: {errors}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
