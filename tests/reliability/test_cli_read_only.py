"""The read-only commands (``ls``, ``info``, ``verify``) work on a cache directory the process may not
write, and leave it exactly as it was. Each way of taking write access away is probed first and
skipped, with the reason, where the machine does not allow it (see ``read_only``)."""

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from read_only import WAYS, make_read_only, refusal, world_readable_dir, wrapper

BUILD = """
import sys
from pathlib import Path
import numpy as np
from lazy_disk_cache import DiskBackedNDArray, DiskBackedStore, LazyDiskCacheConfig
config = LazyDiskCacheConfig(enable_caching=True, cache_path=Path(sys.argv[1]), purge_disk_on_gc=False)
store = DiskBackedStore(config=config, factory=DiskBackedNDArray)
store.add_data_to_store("good", np.arange(100_000, dtype=np.float64))
store.add_data_to_store("bad", np.arange(10, dtype=np.int64))
store.offload(pickle_container=True)
"""


@pytest.fixture
def scratch_dir() -> Iterator[Path]:
    with world_readable_dir() as root:
        yield root


def snapshot(directory: Path) -> dict[str, tuple[int, int]]:
    return {path.name: (path.stat().st_size, path.stat().st_mtime_ns) for path in directory.iterdir()}


@pytest.mark.parametrize("way", WAYS)
def test_ls_info_and_verify_work_on_a_read_only_directory_and_change_nothing(scratch_dir: Path, way: str) -> None:
    directory = scratch_dir / "store"
    if (reason := refusal(way, scratch_dir)) is not None:
        pytest.skip(reason)
    subprocess.run([sys.executable, "-c", BUILD, str(directory)], capture_output=True, timeout=120, check=True)
    with open(directory / "bad.npy", "r+b") as handle:
        handle.seek(4096)
        handle.write(b"\xff")
    if way != "read-only-mount":
        make_read_only(directory)
    before = snapshot(directory)

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        command = [*wrapper(way, directory), sys.executable, "-m", "lazy_disk_cache", *args, str(directory)]
        return subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)

    listed, summary, verified = run("ls", "--json"), run("info", "--json"), run("verify", "--json")

    assert listed.returncode == 0, listed.stderr
    assert [item["key"] for item in json.loads(listed.stdout)] == ["bad", "good"]
    assert summary.returncode == 0, summary.stderr
    assert json.loads(summary.stdout)["keys"] == 2
    assert verified.returncode == 1, verified.stderr
    report = json.loads(verified.stdout)
    assert report["checked"] == 2 and list(report["damaged"]) == ["bad"], report
    assert snapshot(directory) == before
    np.testing.assert_array_equal(np.load(directory / "good.npy"), np.arange(100_000, dtype=np.float64))
