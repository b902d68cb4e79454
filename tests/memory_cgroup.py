"""Child memory cgroups, for tests that run a process under a real memory limit.

:func:`child_memory_cgroup` creates a fresh cgroup *under the test process's own memory cgroup*
(found through ``/proc/self/cgroup`` and ``/proc/self/mountinfo``, never a fixed path), limits it
(cgroup v1 ``memory.limit_in_bytes``, v2 ``memory.max``), runs child commands inside it and
removes it afterwards. :meth:`ChildCgroup.run` moves the child into the cgroup before it
executes anything (a tiny wrapper writes its own pid to ``cgroup.procs``, then ``exec``s the
command), and reports whether the kernel's OOM killer ended it (the cgroup's ``oom_kill``
counter in v1 ``memory.oom_control`` / v2 ``memory.events``, and the exit signal).

Swap would let a child outlive its limit, so it is capped too: v1 ``memory.memsw.limit_in_bytes``
(or ``memory.swappiness`` 0 without swap accounting), v2 ``memory.swap.max`` 0.
:attr:`ChildCgroup.swap_capped` says whether that worked or no swap is enabled.

:func:`memory_cgroup_refusal` probes the capability once (creating and removing an empty child)
and returns the precise reason it is missing, so a test skips with it.
"""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from lazy_disk_cache._memory_limits import MemoryCgroup, find_memory_cgroups

__all__ = ["CgroupRun", "ChildCgroup", "child_memory_cgroup", "memory_cgroup_refusal", "swap_enabled"]

NAME_PREFIX = "ldc-test-"
REMOVE_ATTEMPTS = 100
REMOVE_PAUSE_SECONDS = 0.05

# Runs as the child: joins the cgroup (argv[1] is its cgroup.procs), then becomes the command.
# Nothing is allocated before the move except the interpreter itself.
_JOIN_AND_EXEC = """
import os, sys
with open(sys.argv[1], "w") as procs:
    procs.write(str(os.getpid()))
os.execv(sys.argv[2], sys.argv[2:])
"""

_LIMIT_FILE = {1: "memory.limit_in_bytes", 2: "memory.max"}
_PEAK_FILE = {1: "memory.max_usage_in_bytes", 2: "memory.peak"}
_OOM_FILE = {1: "memory.oom_control", 2: "memory.events"}


@dataclass(frozen=True)
class CgroupRun:
    """How a child run inside the cgroup ended."""

    returncode: int
    stdout: str
    stderr: str
    oom_kills: int | None  # the cgroup's oom_kill counter after the run; None if the kernel has none
    peak_bytes: int | None  # the cgroup's peak memory use; None if the kernel does not report it

    @property
    def oom_killed(self) -> bool:
        """Killed by the OOM killer: SIGKILL, and (where the kernel counts it) an oom_kill event."""
        killed = self.returncode == -signal.SIGKILL
        return killed and (self.oom_kills is None or self.oom_kills > 0)


@dataclass(frozen=True)
class ChildCgroup:
    """A child memory cgroup made for one test."""

    version: int
    path: Path
    limit_bytes: int
    swap_capped: bool

    def run(self, command: list[str], *, timeout: float = 120, env: dict[str, str] | None = None) -> CgroupRun:
        """Run ``command`` (``command[0]`` an absolute path) inside the cgroup and wait for it."""
        procs = self.path / "cgroup.procs"
        completed = subprocess.run(
            [sys.executable, "-c", _JOIN_AND_EXEC, str(procs), *command],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            env=env,
        )
        return CgroupRun(
            returncode=completed.returncode,
            stdout=completed.stdout,
            stderr=completed.stderr,
            oom_kills=_oom_kills(self.path / _OOM_FILE[self.version]),
            peak_bytes=_read_int(self.path / _PEAK_FILE[self.version]),
        )


def _read_int(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _oom_kills(path: Path) -> int | None:
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        name, _, value = line.partition(" ")
        if name == "oom_kill":
            return int(value)
    return None


def swap_enabled() -> bool:
    """Whether any swap area is active (``/proc/swaps`` lists one)."""
    try:
        return len(Path("/proc/swaps").read_text().splitlines()) > 1
    except OSError:
        return False


def _usable_parent() -> tuple[MemoryCgroup | None, str]:
    """The process's own cgroup that has the memory controller, or why there is none."""
    cgroups = find_memory_cgroups()
    if not cgroups:
        return None, "no cgroup filesystem is mounted (or /proc/self/cgroup is unreadable)"
    for cgroup in cgroups:  # v1 first: on a hybrid system the memory controller lives there
        if cgroup.version == 1 and (cgroup.path / "memory.limit_in_bytes").exists():
            return cgroup, ""
        controllers = cgroup.path / "cgroup.controllers"
        if cgroup.version == 2 and controllers.exists() and "memory" in controllers.read_text().split():
            return cgroup, ""
    found = ", ".join(f"v{cgroup.version} {cgroup.path}" for cgroup in cgroups)
    return None, f"the memory controller is not enabled for this process's cgroups ({found})"


def _enable_memory_for_children(parent: MemoryCgroup) -> str | None:
    """cgroup v2 only hands ``memory.*`` files to children that the parent delegates it to."""
    subtree = parent.path / "cgroup.subtree_control"
    if "memory" in subtree.read_text().split():
        return None
    try:
        subtree.write_text("+memory")
    except OSError as err:
        # EBUSY: the "no internal processes" rule; this process lives in the parent itself.
        return f"cannot enable the memory controller for children of {parent.path}: {err}"
    return None


def _sweep_stale(parent: Path) -> None:
    """Remove empty test cgroups left by test processes that died before their cleanup."""
    for stale in parent.glob(NAME_PREFIX + "*"):
        pid = stale.name[len(NAME_PREFIX) :].split("-", 1)[0]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            with contextlib.suppress(OSError):
                stale.rmdir()


def _remove(path: Path) -> None:
    """Remove the cgroup, killing anything the child left inside; raises if it cannot."""
    for _ in range(REMOVE_ATTEMPTS):
        try:
            path.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError:
            for pid in (path / "cgroup.procs").read_text().split():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), signal.SIGKILL)
            time.sleep(REMOVE_PAUSE_SECONDS)
    path.rmdir()


def _cap_swap(cgroup: Path, version: int, limit_bytes: int) -> bool:
    """Keep the child from swapping past its limit; ``False`` when that failed and swap is on."""
    attempts = (
        [("memory.memsw.limit_in_bytes", str(limit_bytes)), ("memory.swappiness", "0")]
        if version == 1
        else [("memory.swap.max", "0")]
    )
    for name, value in attempts:
        try:
            (cgroup / name).write_text(value)
            return True
        except OSError:
            continue
    return not swap_enabled()


def _make(limit_bytes: int) -> tuple[ChildCgroup | None, str]:
    parent, reason = _usable_parent()
    if parent is None:
        return None, reason
    if parent.version == 2:
        refusal = _enable_memory_for_children(parent)
        if refusal is not None:
            return None, refusal
    _sweep_stale(parent.path)
    path = parent.path / f"{NAME_PREFIX}{os.getpid()}-{time.monotonic_ns()}"
    try:
        path.mkdir()
    except OSError as err:
        return None, f"cannot create a child memory cgroup in {parent.path}: {err}"
    try:
        (path / _LIMIT_FILE[parent.version]).write_text(str(limit_bytes))
    except OSError as err:
        _remove(path)
        return None, f"cannot set {_LIMIT_FILE[parent.version]} in {path}: {err}"
    swap_capped = _cap_swap(path, parent.version, limit_bytes)
    return ChildCgroup(parent.version, path, limit_bytes, swap_capped), ""


@functools.cache
def memory_cgroup_refusal() -> str | None:
    """Why no child memory cgroup can be made here, or ``None`` (probed once, by making one)."""
    cgroup, reason = _make(64 * 1024**2)
    if cgroup is None:
        return reason
    _remove(cgroup.path)
    return None


@contextlib.contextmanager
def child_memory_cgroup(limit_bytes: int) -> Iterator[ChildCgroup]:
    """A fresh child memory cgroup limited to ``limit_bytes``, removed on exit; skips if impossible."""
    refusal = memory_cgroup_refusal()
    if refusal is not None:
        pytest.skip(refusal)
    cgroup, reason = _make(limit_bytes)
    if cgroup is None:
        pytest.skip(reason)
    try:
        yield cgroup
    finally:
        _remove(cgroup.path)
