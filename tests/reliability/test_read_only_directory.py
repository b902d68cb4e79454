"""A cache directory the process may not write still serves every load, and nothing is created.

The directory is built with write access (``child/read_only_loads.py build``), then loaded by a
child that cannot write it, three ways: as an unprivileged user (``setpriv`` to uid 65534; the
directory is ``0555``), as root without ``CAP_DAC_OVERRIDE`` (``capsh --drop``), and through a
read-only bind mount in a private mount namespace (EROFS). Each way is probed first and skipped,
with the reason, where the machine does not allow it.
"""

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from read_only import WAYS, make_read_only, refusal, world_readable_dir, wrapper

CHILD = Path(__file__).parent / "child" / "read_only_loads.py"


@pytest.fixture
def scratch_dir() -> Iterator[Path]:
    with world_readable_dir() as root:
        yield root


@pytest.mark.parametrize("way", WAYS)
def test_a_read_only_cache_directory_serves_every_load(scratch_dir: Path, way: str) -> None:
    directory, entry_pickle = scratch_dir / "store", scratch_dir / "entry.pkl"
    if (reason := refusal(way, scratch_dir)) is not None:
        pytest.skip(reason)
    build = [sys.executable, str(CHILD), "build", str(directory), str(entry_pickle)]
    subprocess.run(build, capture_output=True, timeout=120, check=True)
    entry_pickle.chmod(0o644)
    if way != "read-only-mount":
        make_read_only(directory)
    command = [*wrapper(way, directory), sys.executable, "-X", "faulthandler", str(CHILD), "check"]

    child = subprocess.run(
        [*command, str(directory), str(entry_pickle)], capture_output=True, text=True, timeout=120, check=False
    )

    assert child.returncode == 0, child.stderr
    checks: dict[str, bool] = json.loads(child.stdout)
    assert [name for name, passed in checks.items() if not passed] == [], checks
