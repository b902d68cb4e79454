"""Purge duty: finalizers, per-path leases and the owner pid."""

import gc
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lazy_disk_cache.disk_backed_ndarray import DiskBackedNDArray
from lazy_disk_cache.lazy_disk_cache import release_purge_duty
from listing import artefacts

CHILD = Path(__file__).parent / "child" / "entry_exit_purge.py"


def _collect() -> None:
    gc.collect()


def test_purge_off_arms_no_finalizer(tmp_path: Path) -> None:
    entry = DiskBackedNDArray(np.arange(3), cache_path=tmp_path / "e", enable_caching=True, purge_disk_on_gc=False)

    assert not hasattr(entry, "_finalizer")


def test_purge_off_keeps_the_dat_after_gc(tmp_path: Path) -> None:
    entry = DiskBackedNDArray(np.arange(3), cache_path=tmp_path / "e", enable_caching=True, purge_disk_on_gc=False)

    del entry
    _collect()

    assert (tmp_path / "e.dat").exists()


def test_gc_removes_the_dat_when_purge_is_on(tmp_path: Path) -> None:
    entry = DiskBackedNDArray(np.arange(3), cache_path=tmp_path / "e", enable_caching=True)
    assert entry._finalizer.alive

    del entry
    _collect()

    assert artefacts(tmp_path) == []


def test_gc_removes_a_stale_dat_temp_too(tmp_path: Path) -> None:
    entry = DiskBackedNDArray(np.arange(3), cache_path=tmp_path / "e", enable_caching=True)
    (tmp_path / "e.dat.tmp").write_bytes(b"stale")

    del entry
    _collect()

    assert artefacts(tmp_path) == []


def test_gc_never_touches_the_codec_pair(tmp_path: Path) -> None:
    (tmp_path / "k.npy").write_bytes(b"payload")
    (tmp_path / "k.meta.json").write_bytes(b"{}")
    entry = DiskBackedNDArray(np.arange(3), cache_path=tmp_path / "k.npy", enable_caching=True)

    del entry
    _collect()

    assert artefacts(tmp_path) == ["k.meta.json", "k.npy"]


def test_gc_of_an_ephemeral_entry_removes_its_temp_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    entry = DiskBackedNDArray(np.arange(3), enable_caching=True)
    assert entry.cache_path is not None and entry.cache_path.exists()

    del entry
    _collect()

    assert artefacts(tmp_path) == []


def test_disable_purge_detaches_without_deleting(tmp_path: Path) -> None:
    entry = DiskBackedNDArray(np.arange(3), cache_path=tmp_path / "e", enable_caching=True)

    entry.disable_purge()

    assert entry.purge_disk_on_gc is False
    assert not hasattr(entry, "_finalizer")
    assert (tmp_path / "e.dat").exists()
    del entry
    _collect()
    assert (tmp_path / "e.dat").exists()


def test_enable_purge_rearms_the_finalizer(tmp_path: Path) -> None:
    entry = DiskBackedNDArray(np.arange(3), cache_path=tmp_path / "e", enable_caching=True, purge_disk_on_gc=False)

    entry.enable_purge()

    assert entry.purge_disk_on_gc is True
    assert entry._finalizer.alive
    del entry
    _collect()
    assert not (tmp_path / "e.dat").exists()


def test_enable_purge_keeps_a_live_finalizer(tmp_path: Path) -> None:
    entry = DiskBackedNDArray(np.arange(3), cache_path=tmp_path / "e", enable_caching=True)
    finalizer = entry._finalizer

    entry.enable_purge()

    assert entry._finalizer is finalizer


def test_enable_purge_before_ephemeral_allocation_only_records_the_flag(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    entry = DiskBackedNDArray(np.arange(3), purge_disk_on_gc=False)

    entry.enable_purge()

    assert entry.purge_disk_on_gc is True
    assert not hasattr(entry, "_finalizer")
    entry.enable_caching()
    assert entry._finalizer.alive


def test_release_purge_duty_keeps_the_file_and_the_flag(tmp_path: Path) -> None:
    entry = DiskBackedNDArray(np.arange(3), cache_path=tmp_path / "e", enable_caching=True)

    release_purge_duty(entry)

    assert entry.purge_disk_on_gc is True
    assert not hasattr(entry, "_finalizer")
    del entry
    _collect()
    assert (tmp_path / "e.dat").exists()


def test_a_directly_detached_finalizer_drops_the_duty_but_still_holds_the_path(tmp_path: Path) -> None:
    blob = pickle.dumps(DiskBackedNDArray(np.arange(3), cache_path=tmp_path / "e", enable_caching=True))
    _collect()
    first, second = pickle.loads(blob), pickle.loads(blob)

    first._finalizer.detach()
    del second
    _collect()

    assert np.array_equal(first[...], np.arange(3))
    del first
    _collect()
    assert not (tmp_path / "e.dat").exists()


def test_a_new_entry_on_a_path_purged_before_is_removed_when_the_last_holder_goes(tmp_path: Path) -> None:
    old = DiskBackedNDArray(np.arange(3), cache_path=tmp_path / "e", enable_caching=True)
    release_purge_duty(old)
    (tmp_path / "e.dat").unlink()

    new = DiskBackedNDArray(np.arange(4), cache_path=tmp_path / "e", enable_caching=True)
    del new
    _collect()

    assert (tmp_path / "e.dat").exists()
    del old
    _collect()
    assert not (tmp_path / "e.dat").exists()


def test_a_ram_entry_with_a_configured_path_is_armed(tmp_path: Path) -> None:
    entry = DiskBackedNDArray(np.arange(3), cache_path=tmp_path / "e")

    assert entry._finalizer.alive


def test_finalizer_in_another_pid_never_deletes(tmp_path: Path) -> None:
    entry = DiskBackedNDArray(np.arange(3), cache_path=tmp_path / "e", enable_caching=True)
    entry._lease.owner_pid = os.getpid() + 1

    del entry
    _collect()

    assert (tmp_path / "e.dat").exists()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="os.fork is not available on this platform")
def test_a_forked_child_collecting_its_copy_never_deletes(tmp_path: Path) -> None:
    entry = DiskBackedNDArray(np.arange(3), cache_path=tmp_path / "e", enable_caching=True)

    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        status = 0
        try:
            del entry
            gc.collect()
        except BaseException:
            status = 1
        os._exit(status)
    _, status = os.waitpid(pid, 0)

    assert os.waitstatus_to_exitcode(status) == 0
    assert (tmp_path / "e.dat").exists()
    assert np.array_equal(entry[...], np.arange(3))


def _run_child(tmp_path: Path, *args: str) -> Path:
    completed = subprocess.run(
        [sys.executable, str(CHILD), str(tmp_path / "e"), *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    return Path(completed.stdout.strip())


def test_interpreter_exit_removes_the_dat_of_a_live_entry(tmp_path: Path) -> None:
    path = _run_child(tmp_path, "purge")

    assert path == tmp_path / "e.dat"
    assert not path.exists()


def test_interpreter_exit_keeps_the_dat_when_purge_is_off(tmp_path: Path) -> None:
    path = _run_child(tmp_path, "keep")

    assert path.exists()
    assert np.array_equal(np.fromfile(path, dtype=np.int64), np.arange(5))
