"""The child-memory-cgroup harness works: a child over its limit is OOM-killed, one under it is not.

These runs use plain NumPy, no entry: they prove the harness that the memory budget's
integration tests rely on, and that the package reads a real cgroup limit from inside it.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from memory_cgroup import child_memory_cgroup, swap_enabled

MIB = 1024**2
LIMIT = 256 * MIB
CHILD = Path(__file__).parent / "child"


def test_a_child_allocating_well_beyond_its_cgroup_limit_is_oom_killed() -> None:
    with child_memory_cgroup(LIMIT) as cgroup:
        if not cgroup.swap_capped and swap_enabled():
            pytest.skip("swap is enabled and this cgroup cannot cap it: the child would swap, not die")

        run = cgroup.run([sys.executable, str(CHILD / "allocate_anonymous.py"), str(3 * LIMIT)])

    assert run.oom_killed, (run.returncode, run.oom_kills, run.stderr[-2000:])
    assert "allocated" not in run.stdout


def test_a_child_staying_below_its_cgroup_limit_completes_inside_it() -> None:
    nbytes = 64 * MIB

    with child_memory_cgroup(LIMIT) as cgroup:
        run = cgroup.run([sys.executable, str(CHILD / "allocate_anonymous.py"), str(nbytes)])

    assert (run.returncode, run.stdout.strip()) == (0, f"allocated {nbytes}"), run.stderr[-2000:]
    assert not run.oom_killed
    if run.peak_bytes is not None:
        assert nbytes <= run.peak_bytes <= LIMIT, "the child's memory was charged to the cgroup"


def test_the_cgroup_is_removed_after_use() -> None:
    with child_memory_cgroup(LIMIT) as cgroup:
        cgroup.run([sys.executable, "-c", "pass"])
        path = cgroup.path
        existed = path.is_dir()

    assert existed
    assert not path.exists()


def test_a_child_inside_the_cgroup_detects_its_limit() -> None:
    with child_memory_cgroup(LIMIT) as cgroup:
        run = cgroup.run([sys.executable, str(CHILD / "print_memory_limit.py")])

    nbytes, _, source = run.stdout.strip().partition(" ")
    assert run.returncode == 0, run.stderr[-2000:]
    assert int(nbytes) == LIMIT, run.stdout
    limit_file = "memory.max" if cgroup.version == 2 else "memory.limit_in_bytes"
    assert source == f"cgroup v{cgroup.version} {cgroup.path / limit_file}"
