"""The ``python -m lazy_disk_cache demo`` command runs end to end and cleans up after itself."""

import re
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from lazy_disk_cache.cli import main


def test_demo_walks_the_whole_cycle_and_removes_its_directory() -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "lazy_disk_cache", "demo", "--size-mib", "4"],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )

    assert completed.returncode == 0, completed.stderr
    report = completed.stdout
    for step in ("convert to a memory-mapped .dat", "offload", "load (map the file", "reopen the store"):
        assert step in report, report
    assert re.search(r"points\.dat\s+4,194,304 bytes", report), report
    assert "reopened keys: ['labels', 'origin', 'points']" in report
    workdir = Path(report.splitlines()[0].rsplit(" in ", 1)[1])
    assert workdir.parent == Path(tempfile.gettempdir())
    assert not workdir.exists()


def test_demo_refuses_a_size_below_one_mib(capsys: pytest.CaptureFixture[str]) -> None:
    status = main(["demo", "--size-mib", "0"])

    assert status == 2
    assert "--size-mib must be at least 1" in capsys.readouterr().err
