"""EIO injected at the syscall level with ``strace -e inject``: the real syscalls, the same guarantees.

The core issues raw syscalls (invisible to LD_PRELOAD shims), so this is the only way to fail
them from outside. A child stages three keys, group-commits them and converts a ``.dat``, all over
old values; ``strace -e inject=<syscall>:error=EIO:when=N`` fails the N-th call of a syscall for
every N a clean run makes. strace counts per thread, and a group commit fsyncs on several threads,
so one N may fail an fsync on each of them at once: every failed call is judged. From the child's
report and the trace: the error is EIO naming a failed file; after a failed ``fsync`` that file is
neither fsynced again nor renamed; after a failed write or rename its temp is never renamed into
place; no temp remains; every value reads as old or new, and each file whose syscall failed keeps
its old value. Skipped where strace is missing or
ptrace is refused. ``LDC_STRACE_SYSCALLS`` (comma-separated; default ``fsync,rename``, the long
configuration adds ``pwrite64``) chooses the syscalls.
"""

import errno
import functools
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from crash_harness import report_counts
from fault_values import age_of, old_value

from lazy_disk_cache.disk_backed_ndarray import DiskBackedNDArray
from lazy_disk_cache.disk_backed_store import DiskBackedStore
from lazy_disk_cache.lazy_disk_cache import LazyDiskCacheConfig

CHILD = Path(__file__).parent / "child" / "strace_commit.py"
KEYS = ("a", "b", "c")
SYSCALLS = tuple(os.environ.get("LDC_STRACE_SYSCALLS", "fsync,rename").split(","))
# strace names the rename family member the C library or the core actually uses.
RENAMES = ("rename", "renameat", "renameat2")
TRACED = ("fsync", "fdatasync", *RENAMES, "pwrite64", "write")
_LINE = re.compile(r"^\d+\s+(?P<name>\w+)\((?P<args>.*)\)\s+=\s+(?P<result>.*)$")
_FD_PATH = re.compile(r"^\d+<(?P<path>[^>]*)>")
_STRING = re.compile(r'"((?:[^"\\]|\\.)*)"')

POINTS: dict[str, int] = {}


@dataclass(frozen=True)
class Call:
    name: str
    path: str
    source: str
    injected: bool


_UNFINISHED = re.compile(r"^(?P<pid>\d+)\s+(?P<head>.*) <unfinished \.\.\.>$")
_RESUMED = re.compile(r"^(?P<pid>\d+)\s+<\.\.\. \w+ resumed>(?P<tail>.*)$")


def _joined(trace: str) -> list[str]:
    """The trace's lines with every call that strace split (another thread's call came in between,
    printed as ``<unfinished ...>`` then ``<... name resumed>``) joined back into one line, in the
    order the calls returned."""
    pending: dict[str, str] = {}
    lines = []
    for line in trace.splitlines():
        if (unfinished := _UNFINISHED.match(line)) is not None:
            pending[unfinished["pid"]] = unfinished["head"]
        elif (resumed := _RESUMED.match(line)) is not None and resumed["pid"] in pending:
            lines.append(f"{resumed['pid']} {pending.pop(resumed['pid'])}{resumed['tail']}")
        else:
            lines.append(line)
    return lines


def _parse(trace: str) -> list[Call]:
    calls = []
    for line in _joined(trace):
        match = _LINE.match(line)
        if match is None:
            continue
        args = match["args"]
        fd = _FD_PATH.match(args)
        names = _STRING.findall(args)
        path = fd["path"] if fd else ""
        source = ""
        if match["name"] in RENAMES and names:
            directory = fd["path"] if fd else ""
            source = os.path.join(directory, names[0])
        calls.append(Call(match["name"], path, source, "(INJECTED)" in match["result"]))
    return calls


@functools.cache
def _strace_refusal() -> str | None:
    if shutil.which("strace") is None:
        return "strace is not installed"
    probe = subprocess.run(["strace", "-f", "-qq", "-o", os.devnull, "true"], capture_output=True, timeout=60)
    if probe.returncode != 0:
        return f"strace cannot trace here (ptrace refused?): {probe.stderr.decode(errors='replace').strip()}"
    return None


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory holding the old pairs of a, b, c and the old e.dat."""
    directory = tmp_path_factory.mktemp("syscall-faults") / "template"
    config = LazyDiskCacheConfig(cache_path=directory, enable_caching=True, purge_disk_on_gc=False)
    store = DiskBackedStore[DiskBackedNDArray](config=config, factory=DiskBackedNDArray)
    for key in KEYS:
        store.add_data_to_store(key, old_value(key))
    store.offload(list(KEYS), pickle_container=True)
    DiskBackedNDArray(old_value("e"), cache_path=directory / "e", enable_caching=True, purge_disk_on_gc=False)
    return directory


@pytest.fixture(scope="module", autouse=True)
def _report_points() -> Any:
    yield
    if POINTS:
        report_counts("syscall-faults", {"failure_points": sum(POINTS.values()), "per_syscall": dict(POINTS)})


def _run(directory: Path, trace_file: Path, inject: str | None) -> tuple[dict[str, Any], list[Call]]:
    command = ["strace", "-f", "-qq", "-y", "-s", "0", "-o", str(trace_file), "-e", f"trace={','.join(TRACED)}"]
    if inject is not None:
        command += ["-e", f"inject={inject}"]
    command += [sys.executable, str(CHILD), str(directory)]
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    child = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False, env=env)
    assert child.returncode == 0, child.stderr
    return json.loads(child.stdout), _parse(trace_file.read_text())


def _state(directory: Path) -> dict[str, str]:
    """What each name reads as: the pairs through np.load and a fresh store, e.dat byte for byte."""
    config = LazyDiskCacheConfig(cache_path=directory)
    store = DiskBackedStore[DiskBackedNDArray](config=config, factory=DiskBackedNDArray)
    state = {}
    for key in KEYS:
        try:
            ours = np.asarray(store[key]).tobytes()
            theirs = np.load(directory / f"{key}.npy", allow_pickle=False).tobytes()
        except Exception as exc:
            state[key] = f"{type(exc).__name__}: {exc}"
            continue
        state[key] = age_of(key, ours) if ours == theirs else "np.load disagrees with the store"
    state["e"] = age_of("e", (directory / "e.dat").read_bytes())
    return state


def _owner(path: str) -> str | None:
    """The value a temp belongs to: ``a.npy.tmp`` -> ``a``, ``e.dat.tmp`` -> ``e``."""
    name = os.path.basename(path)
    return name.split(".", 1)[0] if name.endswith(".tmp") else None


def _check_injection(report: dict[str, Any], calls: list[Call], directory: Path, nth: int) -> list[str]:
    problems = []
    injected = [index for index, call in enumerate(calls) if call.injected]
    if not injected and (nth == 1 or report["step"] is not None):
        problems.append(f"no call was injected, yet the child reports {report}")
    failed_files = [calls[index].source or calls[index].path for index in injected]
    if injected:
        if report["step"] is None or report["errno"] != errno.EIO:
            problems.append(f"{calls[injected[0]].name} on {failed_files} surfaced as {report}")
        elif report["filename"] not in failed_files:
            problems.append(f"the error names {report['filename']!r}, the failed calls were on {failed_files}")
    for index, failed_file in zip(injected, failed_files, strict=True):
        failed, later = calls[index], calls[index + 1 :]
        if any(call.name in ("fsync", "fdatasync") and call.path == failed_file for call in later):
            problems.append(f"{failed_file} was fsynced again after its {failed.name} failed")
        if any(call.name in RENAMES and call.source == failed_file for call in later):
            problems.append(f"{failed_file} was renamed after its {failed.name} failed")
    temps = sorted(name for name in os.listdir(directory) if name.endswith(".tmp"))
    if temps:
        problems.append(f"temps left: {temps}")
    state = _state(directory)
    torn = {name: seen for name, seen in state.items() if seen not in ("old", "new")}
    if torn:
        problems.append(f"not old or new: {torn}")
    for failed_file in failed_files:
        owner = _owner(failed_file)
        if owner is not None and not failed_file.endswith(".meta.json.tmp") and state.get(owner) != "old":
            problems.append(f"{owner} reads {state.get(owner)} although a syscall on {failed_file} failed")
    return problems


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.parametrize("syscall", SYSCALLS)
def test_eio_injected_into_each_syscall_keeps_the_guarantees(tmp_path: Path, template: Path, syscall: str) -> None:
    if (reason := _strace_refusal()) is not None:
        pytest.skip(reason)
    dry_run = tmp_path / "dry-run"
    shutil.copytree(template, dry_run)
    report, calls = _run(dry_run, tmp_path / "dry-run.trace", None)
    assert report["step"] is None, report
    names = {call.name for call in calls}
    targets = [name for name in (RENAMES if syscall == "rename" else (syscall,)) if name in names]
    assert targets, f"a clean run makes no {syscall} call: {sorted(names)}"
    problems = []
    points = 0

    for target in targets:
        for nth in range(1, sum(call.name == target for call in calls) + 1):
            directory = tmp_path / f"{target}-{nth}"
            shutil.copytree(template, directory)
            report, faulted = _run(directory, tmp_path / f"{target}-{nth}.trace", f"{target}:error=EIO:when={nth}")
            problems += [f"{target} #{nth}: {problem}" for problem in _check_injection(report, faulted, directory, nth)]
            points += 1

    POINTS[syscall] = points
    assert problems == [], "\n".join(problems)
