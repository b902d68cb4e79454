"""A full disk at every 4 KiB step of a commit and of a ``.dat`` conversion: a clean OSError, never a signal.

Three ways to fill the disk, each in a child process (``child/full_disk_steps.py`` does the stepping
and the checks): ``RLIMIT_FSIZE`` lowered to each step (always available; EFBIG), a small tmpfs
with a filler leaving each step of free space (ENOSPC), and a tmpfs with few inodes (ENOSPC at
file creation). Both tmpfs modes mount privately in a user and mount namespace
(``unshare -r -m``) and are skipped, with the reason, where that is refused. ``LDC_FULL_DISK_BYTES``
sets the value size stepped through (default 64 KiB, i.e. 18 points per commit).
"""

import errno
import functools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest
from crash_harness import report_counts

CHILD = Path(__file__).parent / "child" / "full_disk_steps.py"
VALUE_BYTES = int(os.environ.get("LDC_FULL_DISK_BYTES", str(64 * 1024)))
PAGE = 4096
OPS = ("commit", "group", "convert", "materialise", "zero-fill")


@functools.cache
def _namespace_refusal() -> str | None:
    """Why a private tmpfs cannot be mounted here, or ``None`` (probed, not guessed)."""
    if shutil.which("unshare") is None:
        return "unshare (util-linux) is not installed"
    with tempfile.TemporaryDirectory() as scratch:
        probe = subprocess.run(
            ["unshare", "-r", "-m", "mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", scratch],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    if probe.returncode != 0:
        return f"mounting a tmpfs in a user and mount namespace is refused: {probe.stderr.strip()}"
    return None


def _run_child(directory: Path, mode: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-X", "faulthandler", str(CHILD), str(directory), mode, str(VALUE_BYTES)]
    if mode != "fsize":
        size_kib = (32 * VALUE_BYTES + 1024 * 1024) // 1024
        options = f"size={size_kib}k" + (",nr_inodes=64" if mode == "inodes" else "")
        mount = f'mount -t tmpfs -o {options} tmpfs "$1" && shift && exec "$@"'
        command = ["unshare", "-r", "-m", "sh", "-c", mount, "sh", str(directory), *command]
    return subprocess.run(command, capture_output=True, text=True, timeout=max(600, VALUE_BYTES // 256), check=False)


@pytest.mark.slow
@pytest.mark.timeout(max(900, VALUE_BYTES // 256))
@pytest.mark.parametrize("mode", ["fsize", "tmpfs", "inodes"])
def test_full_disk_at_every_step_is_a_clean_oserror_and_loses_nothing(tmp_path: Path, mode: str) -> None:
    if mode != "fsize" and (reason := _namespace_refusal()) is not None:
        pytest.skip(reason)
    directory = tmp_path / "store"
    directory.mkdir()

    child = _run_child(directory, mode)

    assert child.returncode >= 0, f"the child was killed by {signal.Signals(-child.returncode).name}:\n{child.stderr}"
    assert child.returncode == 0, child.stderr
    report: dict[str, Any] = json.loads(child.stdout)
    ops: dict[str, dict[str, Any]] = report["ops"]
    points = sum(op["failures"] for op in ops.values())
    report_counts(f"full-disk-{mode}", {"failure_points": points, "signals": 0, "ops": ops})
    assert report["violations"] == [], "\n".join(report["violations"])
    assert sorted(ops) == sorted(OPS)
    expected = {errno.errorcode[errno.EFBIG if mode == "fsize" else errno.ENOSPC]}
    for name, op in ops.items():
        assert op["failures"] > 0, f"{name} never hit the full disk: {op}"
        assert op["successes"] > 0, f"{name} never succeeded: {op}"
        assert set(op["errnos"]) == expected, f"{name}: {op}"
    if mode != "inodes":
        # Every 4 KiB step short of the payload is a failure point.
        assert ops["convert"]["failures"] >= VALUE_BYTES // PAGE
        assert ops["commit"]["failures"] >= VALUE_BYTES // PAGE + 1
