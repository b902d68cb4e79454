"""Conversion never makes a full temporary copy: a 2 GiB array converts within 128 MiB extra RSS."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

CHILD = Path(__file__).parent / "child" / "entry_peak_memory.py"
ARRAY_BYTES = 2 * 1024**3
EXTRA_RSS_LIMIT = 128 * 1024**2
# The child holds the source array, and the kernel needs room to cache the file it writes.
NEEDED_MEMORY = 3 * ARRAY_BYTES


def _require_resources(directory: Path) -> None:
    if not Path("/proc/self/status").exists():
        pytest.skip("/proc/self/status is not available to measure VmHWM")
    if psutil.virtual_memory().available < NEEDED_MEMORY:
        pytest.skip(f"needs {NEEDED_MEMORY} bytes of available memory for a 2 GiB source")
    if shutil.disk_usage(directory).free < 2 * ARRAY_BYTES:
        pytest.skip(f"needs {2 * ARRAY_BYTES} free bytes on the filesystem of {directory}")


@pytest.mark.parametrize("layout", ["contiguous", "transposed"])
def test_two_gib_conversion_stays_within_128_mib_extra_rss_and_round_trips(tmp_path: Path, layout: str) -> None:
    _require_resources(tmp_path)

    completed = subprocess.run(
        [sys.executable, str(CHILD), str(tmp_path / "big"), layout],
        capture_output=True,
        text=True,
        timeout=280,
        check=False,
    )

    assert completed.returncode == 0, completed.stderr
    report = json.loads(completed.stdout)
    assert report["c_contiguous_source"] is (layout == "contiguous")
    assert report["nbytes"] == ARRAY_BYTES
    assert report["file_bytes"] == ARRAY_BYTES
    assert report["extra_bytes"] < EXTRA_RSS_LIMIT, report
    assert report["bit_exact"] is True
