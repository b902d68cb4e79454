"""A cache directory the process may not write still serves every load, and nothing is created.

The directory is built with write access (``child/read_only_loads.py build``), then loaded by a
child that cannot write it, three ways: as an unprivileged user (``setpriv`` to uid 65534; the
directory is ``0555``), as root without ``CAP_DAC_OVERRIDE`` (``capsh --drop``), and through a
read-only bind mount in a private mount namespace (EROFS). Each way is probed first and skipped,
with the reason, where the machine does not allow it.
"""

import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

CHILD = Path(__file__).parent / "child" / "read_only_loads.py"
NOBODY = 65534
DROPPED_CAPABILITIES = "cap_dac_override,cap_dac_read_search,cap_fowner"
READ_ONLY_BIND = 'mount --bind "$1" "$1" && mount -o remount,bind,ro "$1" && shift && exec "$@"'


def _wrapper(way: str, directory: Path) -> list[str]:
    if way == "unprivileged-user":
        return ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
    if way == "no-dac-override":
        return ["capsh", f"--drop={DROPPED_CAPABILITIES}", "--", "-c", 'exec "$0" "$@"']
    return ["unshare", "-m", "sh", "-c", READ_ONLY_BIND, "sh", str(directory)]


def _tool(way: str) -> str:
    return {"unprivileged-user": "setpriv", "no-dac-override": "capsh", "read-only-mount": "unshare"}[way]


def _refusal(way: str, directory: Path) -> str | None:
    """Why ``way`` cannot run here, or ``None``: the wrapped child must import the package."""
    if os.geteuid() != 0:
        return "dropping write access this way needs root"
    if shutil.which(_tool(way)) is None:
        return f"{_tool(way)} is not installed"
    probe = subprocess.run(
        [*_wrapper(way, directory), sys.executable, "-c", "import lazy_disk_cache"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if probe.returncode != 0:
        return f"the {way} child cannot run here: {probe.stderr.strip()[-300:]}"
    return None


@pytest.fixture
def world_readable_dir() -> Iterator[Path]:
    """A scratch directory every user can traverse (pytest's own tmp_path is private to root)."""
    root = Path(tempfile.mkdtemp(prefix="ldc-read-only-"))
    root.chmod(0o755)
    yield root
    for path in [root, *root.rglob("*")]:
        if path.is_dir() and not path.is_symlink():
            path.chmod(0o755)
    shutil.rmtree(root)


def _make_read_only(directory: Path) -> None:
    for path in directory.iterdir():
        path.chmod(stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
    directory.chmod(0o555)


@pytest.mark.parametrize("way", ["unprivileged-user", "no-dac-override", "read-only-mount"])
def test_a_read_only_cache_directory_serves_every_load(world_readable_dir: Path, way: str) -> None:
    directory, entry_pickle = world_readable_dir / "store", world_readable_dir / "entry.pkl"
    if (reason := _refusal(way, world_readable_dir)) is not None:
        pytest.skip(reason)
    build = [sys.executable, str(CHILD), "build", str(directory), str(entry_pickle)]
    subprocess.run(build, capture_output=True, timeout=120, check=True)
    entry_pickle.chmod(0o644)
    if way != "read-only-mount":
        _make_read_only(directory)
    command = [*_wrapper(way, directory), sys.executable, "-X", "faulthandler", str(CHILD), "check"]

    child = subprocess.run(
        [*command, str(directory), str(entry_pickle)], capture_output=True, text=True, timeout=120, check=False
    )

    assert child.returncode == 0, child.stderr
    checks: dict[str, bool] = json.loads(child.stdout)
    assert [name for name, passed in checks.items() if not passed] == [], checks
