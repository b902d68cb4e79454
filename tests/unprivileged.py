"""Children that may not write a directory, also when the tests run as root (who passes any permission check).

A child started as root imports what it needs first (the interpreter and the package may be readable
by root alone), then switches to ``NOBODY``; run as any other user, a child simply keeps its user.
"""

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

__all__ = ["read_only_directory", "unprivileged_uid"]

NOBODY = 65534


def _can_drop_privileges() -> bool:
    probe = subprocess.run(
        [sys.executable, "-c", f"import os; os.setgid({NOBODY}); os.setuid({NOBODY})"], capture_output=True, timeout=60
    )
    return probe.returncode == 0


def unprivileged_uid() -> int | None:
    """The user a child must switch to before it acts (``None``: stay), or a skip saying why there is none."""
    if os.geteuid() != 0:
        return None
    if not _can_drop_privileges():
        pytest.skip("running as root without the ability to switch to an unprivileged user")
    return NOBODY


@contextmanager
def read_only_directory() -> Iterator[Path]:
    """A world-traversable directory (outside pytest's private root-only tree), removed afterwards.

    The caller fills it, then makes it read-only (``chmod 0o555``); it is made writable again to be removed.
    """
    directory = Path(tempfile.mkdtemp(prefix="store-readonly-"))
    directory.chmod(0o755)
    try:
        yield directory
    finally:
        directory.chmod(0o755)
        shutil.rmtree(directory)
