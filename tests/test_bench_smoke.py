"""The benchmark suite runs end to end in its quick mode and reports every case and target.

Only the shape of the report is checked: numbers belong to the benchmark, never to a test.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
RUN = ROOT / "bench" / "run.py"

CONVERT_KINDS = ("f32", "rec20", "strided", "fortran", "colstrided", "fortran-wide")

CASE_IDS = [
    *(f"convert-{kind}-{size}" for kind in CONVERT_KINDS for size in ("small", "large")),
    *(f"{group}-f32-{size}" for group in ("load", "read") for size in ("small", "large")),
    *(f"store-{op}-{name}" for op in ("write", "disk", "reload") for name in ("many", "big")),
    "durable-construct",
    "reopen-offload",
    "rss-large",
    "rss-huge",
]

# One entry per target row (a case may carry two targets).
TARGET_CASES = [
    *(f"convert-{kind}-{size}" for kind in CONVERT_KINDS for size in ("small", "large")),
    "load-f32-small",
    "load-f32-large",
    "read-f32-small",
    "read-f32-large",
    "store-write-many",
    "store-write-big",
    "store-disk-many",
    "store-disk-big",
    "store-reload-many",
    "store-reload-many",
    "store-reload-big",
    "store-reload-big",
    "store-reload-big",
    "durable-construct",
    "reopen-offload",
    "reopen-offload",
    "rss-large",
    "rss-huge",
]


def _run_bench(script: Path, *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    """Run a benchmark script from the checkout's root, its output captured as text."""
    return subprocess.run(
        [sys.executable, str(script), *args], capture_output=True, text=True, timeout=timeout, check=False, cwd=ROOT
    )


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess[str], Path]:
    out_dir = tmp_path_factory.mktemp("bench")
    report = out_dir / "benchmarks.md"
    proc = _run_bench(RUN, "--quick", "--no-original", "--out", str(report), "--workdir", str(out_dir), timeout=240)
    return proc, report


def test_quick_run_exits_zero(quick_run: tuple[subprocess.CompletedProcess[str], Path]) -> None:
    proc, _ = quick_run

    assert proc.returncode == 0, proc.stderr[-3000:]


def test_quick_run_reports_every_case(quick_run: tuple[subprocess.CompletedProcess[str], Path]) -> None:
    _, report = quick_run

    text = report.read_text(encoding="utf-8")

    missing = [case_id for case_id in CASE_IDS if f"`{case_id}`" not in text]
    assert not missing, f"cases missing from the report: {missing}"


def test_quick_run_judges_every_target(quick_run: tuple[subprocess.CompletedProcess[str], Path]) -> None:
    _, report = quick_run

    text = report.read_text(encoding="utf-8")
    targets = text.split("## Targets", 1)[1].split("## Method", 1)[0]
    rows = [line for line in targets.splitlines() if line.startswith("| ") and "target |" not in line]

    assert len(rows) == len(TARGET_CASES), targets
    verdicts = [re.findall(r"\*\*(.+?)\*\*", row)[-1] for row in rows]
    assert all(v in {"PASS", "MISS"} or v.startswith("n/a") for v in verdicts), verdicts
    # Only the targets against the original package (not run here) may go unjudged.
    unjudged = [row for row, verdict in zip(rows, verdicts, strict=True) if verdict not in {"PASS", "MISS"}]
    assert all("original" in row for row in unjudged), unjudged
    assert targets.count("durable store write end to end") == 2, targets


def test_quick_run_writes_the_chart_next_to_the_report(
    quick_run: tuple[subprocess.CompletedProcess[str], Path],
) -> None:
    _, report = quick_run

    chart = report.with_suffix(".png")

    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_quick_run_leaves_no_work_files(quick_run: tuple[subprocess.CompletedProcess[str], Path]) -> None:
    _, report = quick_run

    leftovers = sorted(p.name for p in report.parent.iterdir() if p.name.startswith("work-"))

    assert not leftovers, leftovers


def test_the_budget_benchmark_runs_quick_and_reports_each_call() -> None:
    proc = _run_bench(ROOT / "bench" / "bench_budget.py", "--quick", "--entries", "100", timeout=120)

    assert proc.returncode == 0, proc.stderr[-3000:]
    for call in ("touch()", "check()", "touch() + check()", "with pinned(entry):"):
        assert re.search(rf"{re.escape(call)}\s+[\d.]+ ns/call\s+[\d.]+x no-op", proc.stdout), proc.stdout


def test_the_integrity_benchmark_runs_quick_and_judges_each_target() -> None:
    proc = _run_bench(ROOT / "bench" / "bench_integrity.py", "--quick", timeout=240)

    assert proc.returncode == 0, proc.stderr[-3000:]
    verdicts = re.findall(r"target [<>]= [\d.]+(?:x| MiB): (PASS|MISS)", proc.stdout)
    assert len(verdicts) == 5, proc.stdout
    assert "verify / best read throughput" in proc.stdout
    assert proc.stdout.count("durable store write") == 3, proc.stdout
    assert "peak extra RSS" in proc.stdout
    assert re.search(r"gc comparison / best read of both files, throughput: [\d.]+x", proc.stdout), proc.stdout
    assert len(re.findall(r"with +[\d,]+ keys held +[\d.]+ us", proc.stdout)) == 3, proc.stdout


def test_the_dask_benchmark_runs_small_and_reports_every_case() -> None:
    proc = _run_bench(ROOT / "bench" / "bench_dask.py", "--gib", "0.125", "--repeats", "1", timeout=240)

    assert proc.returncode == 0, proc.stderr[-3000:]
    for case in (
        "to_dask-sum",
        "store_dask, fresh key",
        "store_dask, replacing an existing key",
        "parallel-commit",
    ):
        assert f"\n{case} (" in proc.stdout, proc.stdout
    assert len(re.findall(r"ratio .+ / .+: median [\d.]+x", proc.stdout)) == 5, proc.stdout
