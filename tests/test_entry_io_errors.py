"""I/O failures during conversion and load: real errno and filename, nothing lost, retry works."""

import errno
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lazy_disk_cache import _rust
from lazy_disk_cache.disk_backed_ndarray import DiskBackedNDArray
from listing import artefacts

CHILD = Path(__file__).parent / "child" / "entry_full_disk.py"


pytestmark = pytest.mark.usefixtures("clean_faults")


def _old_value(tmp_path: Path) -> DiskBackedNDArray:
    old = DiskBackedNDArray(np.full(8, 3, dtype=np.int64), cache_path=tmp_path / "e", enable_caching=True)
    old.offload()
    return old


@pytest.mark.parametrize(("purge", "fsyncs"), [(True, 0), (False, 1)])
def test_conversion_fsyncs_only_a_durable_dat(tmp_path: Path, purge: bool, fsyncs: int) -> None:
    _rust._clear_faults()

    DiskBackedNDArray(np.arange(10), cache_path=tmp_path / "e", enable_caching=True, purge_disk_on_gc=purge)

    counts = _rust._op_counts()
    assert (counts["fsync"], counts["dir_fsync"]) == (fsyncs, fsyncs)


@pytest.mark.parametrize(
    ("op", "code"), [("create", errno.EACCES), ("reserve", errno.ENOSPC), ("write", errno.EIO), ("rename", errno.EIO)]
)
def test_failed_conversion_keeps_ram_state_and_the_old_dat(tmp_path: Path, op: str, code: int) -> None:
    old = _old_value(tmp_path)
    source = np.arange(8, dtype=np.int64)
    entry = DiskBackedNDArray(source, cache_path=tmp_path / "e", purge_disk_on_gc=False)
    _rust._inject_fault(op, 1, code)

    with pytest.raises(OSError) as caught:
        entry.enable_caching()

    assert caught.value.errno == code
    assert caught.value.filename is not None
    assert (entry.cache_enabled, entry.offloaded) == (False, False)
    assert entry.data is source
    assert np.array_equal(np.fromfile(tmp_path / "e.dat", dtype=np.int64), np.full(8, 3))
    assert not (tmp_path / "e.dat.tmp").exists()
    del old


def test_failed_fsync_is_raised_and_never_renamed(tmp_path: Path) -> None:
    old = _old_value(tmp_path)
    entry = DiskBackedNDArray(np.arange(8, dtype=np.int64), cache_path=tmp_path / "e", purge_disk_on_gc=False)
    _rust._inject_fault("fsync", 1, errno.EIO)

    with pytest.raises(OSError) as caught:
        entry.enable_caching()

    assert caught.value.errno == errno.EIO
    assert np.array_equal(np.fromfile(tmp_path / "e.dat", dtype=np.int64), np.full(8, 3))
    assert not (tmp_path / "e.dat.tmp").exists()
    del old


def test_a_retry_after_a_failed_conversion_succeeds(tmp_path: Path) -> None:
    entry = DiskBackedNDArray(np.arange(8, dtype=np.int64), cache_path=tmp_path / "e")
    _rust._inject_fault("reserve", 1, errno.ENOSPC)
    with pytest.raises(OSError):
        entry.enable_caching()

    entry.enable_caching()

    assert entry.cache_enabled
    assert np.array_equal(np.fromfile(tmp_path / "e.dat", dtype=np.int64), np.arange(8))


def test_failed_constructor_conversion_leaves_no_file(tmp_path: Path) -> None:
    _rust._inject_fault("write", 1, errno.EIO)

    with pytest.raises(OSError):
        DiskBackedNDArray(np.arange(8), cache_path=tmp_path / "e", enable_caching=True)

    assert artefacts(tmp_path) == []


def test_failed_zero_filling_load_keeps_the_entry_offloaded(tmp_path: Path) -> None:
    entry = _old_value(tmp_path)
    _rust._inject_fault("reserve", 1, errno.ENOSPC)

    with pytest.raises(OSError) as caught:
        entry.load("w+")

    assert caught.value.errno == errno.ENOSPC
    assert entry.offloaded
    entry.load()
    assert np.array_equal(entry.data, np.full(8, 3))


def test_full_disk_under_rlimit_fsize_raises_efbig_and_keeps_everything(tmp_path: Path) -> None:
    completed = subprocess.run(
        [sys.executable, str(CHILD), str(tmp_path / "e")], capture_output=True, text=True, timeout=120, check=False
    )

    assert completed.returncode == 0, completed.stderr
    report = json.loads(completed.stdout)
    assert report["errno"] == errno.EFBIG
    assert report["filename"].endswith("e.dat.tmp") or report["filename"].endswith("e.dat")
    assert report["state_after_failure"] == {"cache_enabled": False, "offloaded": False, "data_intact": True}
    assert report["old_dat_intact"] is True
    assert report["temp_left"] is False
    assert report["retry_ok"] is True
