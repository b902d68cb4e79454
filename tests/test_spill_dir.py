"""The private spill directory: 0700, one per process (forked workers too), removed at exit, orphans swept."""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from lazy_disk_cache._spill_dir import ORPHAN_QUIET_SECONDS, SPILL_DIR_PREFIX, sweep_orphan_spill_dirs

CHILD = Path(__file__).parent / "child" / "spill_dir_lifecycle.py"


def _spill_dirs(parent: Path) -> list[str]:
    return sorted(path.name for path in parent.iterdir() if path.name.startswith(SPILL_DIR_PREFIX))


def _dead_pid() -> int:
    """The pid of a process that has exited and been reaped."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def _orphan(parent: Path, pid: int, tag: str) -> Path:
    directory = parent / f"{SPILL_DIR_PREFIX}{pid}-{tag}"
    directory.mkdir(mode=0o700)
    (directory / "0.dat").write_bytes(b"spilled")
    return directory


def _run_child(tmp_path: Path) -> dict[str, object]:
    child = subprocess.run(
        [sys.executable, str(CHILD)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "TMPDIR": str(tmp_path)},
    )
    assert child.returncode == 0, child.stderr
    report: dict[str, object] = json.loads(child.stdout)
    return report


def test_each_process_spills_into_its_own_private_directory_removed_when_it_exits(tmp_path: Path) -> None:
    report = _run_child(tmp_path)

    assert report["spilled_and_reloaded"] is True
    assert Path(str(report["parent_dir"])).parent == tmp_path
    assert report["parent_mode"] == 0o700
    assert report["worker_dir"] != report["parent_dir"], "a forked worker spills into a directory of its own"
    assert report["worker_exit"] == 0
    assert report["parent_dir_after_worker"] is True, "the worker's exit leaves the parent's directory alone"
    assert report["worker_dir_after_worker"] is False, "a multiprocessing worker removes its own at exit"
    assert report["worker_wrote_its_copy"] == -1.0
    assert report["parent_value_after_worker"] == 0.0, "the worker's write stayed in the worker"
    assert _spill_dirs(tmp_path) == [], "the process removed its directory at exit"


def test_orphans_of_dead_processes_are_swept_by_the_next_process_that_spills(tmp_path: Path) -> None:
    orphan = _orphan(tmp_path, _dead_pid(), "orphan")

    _run_child(tmp_path)

    assert not orphan.exists()


def test_a_sweep_removes_only_directories_no_live_process_holds(tmp_path: Path) -> None:
    dead = _orphan(tmp_path, _dead_pid(), "dead")
    reused_pid_quiet = _orphan(tmp_path, os.getpid(), "quiet")
    old = time.time() - 2 * ORPHAN_QUIET_SECONDS
    os.utime(reused_pid_quiet, (old, old))
    being_set_up = _orphan(tmp_path, os.getpid(), "fresh")
    locked = _orphan(tmp_path, _dead_pid(), "locked")
    other_name = tmp_path / "lazy_disk_cache-spillover-1"
    other_name.mkdir()
    target = tmp_path / "elsewhere"
    target.mkdir()
    link = tmp_path / f"{SPILL_DIR_PREFIX}1-link"
    link.symlink_to(target)
    file = tmp_path / f"{SPILL_DIR_PREFIX}1-file"
    file.write_bytes(b"")

    holder = os.open(locked, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(holder, fcntl.LOCK_EX)
        removed = sweep_orphan_spill_dirs(tmp_path)
    finally:
        os.close(holder)

    assert sorted(removed) == sorted([dead, reused_pid_quiet])
    assert not dead.exists() and not reused_pid_quiet.exists()
    assert (being_set_up / "0.dat").exists(), "a fresh unlocked directory of a live pid is being set up"
    assert (locked / "0.dat").exists(), "a locked directory belongs to a live process"
    assert other_name.is_dir() and link.is_symlink() and target.is_dir() and file.exists()
