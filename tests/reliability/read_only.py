"""Running a child that may not write a cache directory, three ways, each probed before use.

As an unprivileged user (``setpriv`` to uid 65534; the directory made ``0555``), as root without
``CAP_DAC_OVERRIDE`` (``capsh --drop``), and through a read-only bind mount in a private mount
namespace (EROFS). ``refusal`` says why a way cannot run here (a test then skips with that reason).
"""

import os
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["WAYS", "make_read_only", "refusal", "world_readable_dir", "wrapper"]

WAYS = ["unprivileged-user", "no-dac-override", "read-only-mount"]
NOBODY = 65534
DROPPED_CAPABILITIES = "cap_dac_override,cap_dac_read_search,cap_fowner"
READ_ONLY_BIND = 'mount --bind "$1" "$1" && mount -o remount,bind,ro "$1" && shift && exec "$@"'


def wrapper(way: str, directory: Path) -> list[str]:
    """The command prefix that runs a child without write access to ``directory``."""
    if way == "unprivileged-user":
        return ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
    if way == "no-dac-override":
        return ["capsh", f"--drop={DROPPED_CAPABILITIES}", "--", "-c", 'exec "$0" "$@"']
    return ["unshare", "-m", "sh", "-c", READ_ONLY_BIND, "sh", str(directory)]


def _tool(way: str) -> str:
    return {"unprivileged-user": "setpriv", "no-dac-override": "capsh", "read-only-mount": "unshare"}[way]


def refusal(way: str, directory: Path) -> str | None:
    """Why ``way`` cannot run here, or ``None``: the wrapped child must import the package."""
    if os.geteuid() != 0:
        return "dropping write access this way needs root"
    if shutil.which(_tool(way)) is None:
        return f"{_tool(way)} is not installed"
    probe = subprocess.run(
        [*wrapper(way, directory), sys.executable, "-c", "import lazy_disk_cache"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if probe.returncode != 0:
        return f"the {way} child cannot run here: {probe.stderr.strip()[-300:]}"
    return None


@contextmanager
def world_readable_dir() -> Iterator[Path]:
    """A scratch directory every user can traverse (pytest's own tmp_path is private to root)."""
    root = Path(tempfile.mkdtemp(prefix="ldc-read-only-"))
    root.chmod(0o755)
    try:
        yield root
    finally:
        for path in [root, *root.rglob("*")]:
            if path.is_dir() and not path.is_symlink():
                path.chmod(0o755)
        shutil.rmtree(root)


def make_read_only(directory: Path) -> None:
    """Take every write permission away from ``directory`` and the files in it."""
    for path in directory.iterdir():
        path.chmod(stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
    directory.chmod(0o555)
