"""The memory budget's acceptance: 3 GiB of entries in a 1 GiB memory cgroup, default settings, no OOM kill.

Each run is a child process inside a fresh child memory cgroup of this process's own cgroup
(``memory_cgroup``), limited to 1 GiB with swap capped. With the budget turned off the first
workload is OOM-killed (24 entries of 128 MiB held in RAM); with it, every value must come back
bit for bit.
The child's environment leaves the budget at its defaults and puts its spill directory under the
test's temporary directory. Where no cgroup can be made the tests skip with the reason.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest

from lazy_disk_cache._budget import ENV_VAR
from memory_cgroup import CgroupRun, ChildCgroup, child_memory_cgroup, swap_enabled

CHILD = Path(__file__).parent / "child" / "budget_workload.py"
GIB = 1024**3
LIMIT = 1 * GIB
COUNT, MIB = 24, 128  # 3 GiB
RUN_SECONDS = 240
# After the last check at most 70 % of the limit (the spill threshold) is left in RAM.
AT_LEAST_SPILLED = COUNT - int(0.7 * LIMIT) // (MIB * 2**20)


def _start(cgroup: ChildCgroup, tmp_path: Path, mode: str, budget: str | None = None) -> CgroupRun:
    env = {name: value for name, value in os.environ.items() if name != ENV_VAR}
    if budget is not None:
        env[ENV_VAR] = budget
    env["TMPDIR"] = str(tmp_path)
    command = [sys.executable, str(CHILD), mode, str(tmp_path / "store"), str(COUNT), str(MIB)]
    return cgroup.run(command, timeout=RUN_SECONDS, env=env)


def _run(cgroup: ChildCgroup, tmp_path: Path, mode: str) -> dict[str, Any]:
    run = _start(cgroup, tmp_path, mode)
    assert not run.oom_killed, f"{mode}: OOM-killed at {run.peak_bytes} bytes\n{run.stderr[-3000:]}"
    assert run.returncode == 0, f"{mode}: exit {run.returncode}\n{run.stderr[-3000:]}"
    report: dict[str, Any] = json.loads(run.stdout)
    assert report["mismatched"] == [], f"{mode}: these entries lost data"
    assert report["enabled"] and report["limit"] == LIMIT, report
    assert report["limit_source"].startswith(f"cgroup v{cgroup.version} {cgroup.path}"), report
    assert report["spill_failures"] == 0, report
    return report


def _cgroup_or_skip(cgroup: ChildCgroup) -> None:
    if not cgroup.swap_capped and swap_enabled():
        pytest.skip("swap is enabled and this cgroup cannot cap it: the child would swap, not be OOM-killed")


@pytest.mark.timeout(2 * RUN_SECONDS)
def test_three_gib_of_ram_entries_fit_a_one_gib_cgroup_with_default_settings(tmp_path: Path) -> None:
    with child_memory_cgroup(LIMIT) as cgroup:
        _cgroup_or_skip(cgroup)
        report = _run(cgroup, tmp_path, "ram")

    assert report["spilled_count"] >= AT_LEAST_SPILLED, report
    assert [path.name for path in tmp_path.iterdir()] == [], "the spill directory went with the child"


@pytest.mark.timeout(2 * RUN_SECONDS)
def test_the_same_ram_entries_with_the_budget_off_are_oom_killed(tmp_path: Path) -> None:
    with child_memory_cgroup(LIMIT) as cgroup:
        _cgroup_or_skip(cgroup)
        run = _start(cgroup, tmp_path, "ram", budget="off")

    assert run.oom_killed, (run.returncode, run.oom_kills, run.stderr[-3000:])


@pytest.mark.timeout(3 * RUN_SECONDS)
def test_in_place_writes_to_three_gib_reopened_from_a_store_fit_a_one_gib_cgroup(tmp_path: Path) -> None:
    with child_memory_cgroup(LIMIT) as cgroup:
        _cgroup_or_skip(cgroup)
        _run(cgroup, tmp_path, "store-write")
        report = _run(cgroup, tmp_path, "store-modify")

    assert report["spilled_count"] >= AT_LEAST_SPILLED, report
    # Each spill wrote one .dat; a batch counts its spills when it ends, so one may be in flight.
    assert report["spilled_before_check"] <= report["materialised"] <= report["spilled_count"], report
