"""Views outlive their owners: no segfault, no SIGBUS, the data stays readable (and writable).

Each scenario runs in its own child under ``-X faulthandler`` (``child/lifetime_views.py``):
entries and stores are collected, offloaded, purged, re-converted, unpickled or raced by a
reader thread while NumPy views of their mappings are alive, and the views are read afterwards.
"""

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

CHILD = Path(__file__).parent / "child" / "lifetime_views.py"
SCENARIOS = (
    "entry-collected",
    "after-offload",
    "after-purge",
    "after-reconversion",
    "store-collected",
    "reloaded-copy-on-write",
    "unpickled-copy",
    "stray-close",
    "flush-after-owner",
    "threads-race",
    "views-alive-at-exit",
)


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_views_stay_valid_after_their_owner_goes(tmp_path: Path, scenario: str) -> None:
    command = [sys.executable, "-X", "faulthandler", str(CHILD), scenario, str(tmp_path)]

    child = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)

    if child.returncode < 0:
        pytest.fail(f"the child died of {signal.Signals(-child.returncode).name}:\n{child.stderr}")
    assert child.returncode == 0, child.stderr
    checks: dict[str, bool] = json.loads(child.stdout)
    assert checks, "the scenario checked nothing"
    assert [name for name, passed in checks.items() if not passed] == [], checks
