"""Entry pickling: the hand-off of purge duty, leases, and copies revived in other processes."""

import gc
import multiprocessing
import os
import pickle
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from lazy_disk_cache.disk_backed_ndarray import DiskBackedNDArray


def _entry(tmp_path: Path, **settings: Any) -> DiskBackedNDArray:
    return DiskBackedNDArray(np.arange(6, dtype=np.int64), cache_path=tmp_path / "e", enable_caching=True, **settings)


def test_getstate_calls_disable_purge_exactly_once_with_the_flag_still_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    entry = _entry(tmp_path)
    seen: list[bool] = []
    original = DiskBackedNDArray.disable_purge

    def spy(self: DiskBackedNDArray) -> None:
        seen.append(self.purge_disk_on_gc)
        original(self)

    monkeypatch.setattr(DiskBackedNDArray, "disable_purge", spy)

    pickle.dumps(entry)

    assert seen == [True]


def test_pickling_offloads_the_source_and_moves_purge_duty(tmp_path: Path) -> None:
    entry = _entry(tmp_path)

    pickle.dumps(entry)

    assert entry.offloaded is True
    assert entry.purge_disk_on_gc is False
    assert not hasattr(entry, "_finalizer")


def test_state_holds_no_lock_finalizer_lease_or_data(tmp_path: Path) -> None:
    entry = _entry(tmp_path)

    state = entry.__getstate__()

    assert not {"_lock", "_finalizer", "_lease", "_data"} & set(state)
    assert state["_mmap"] is None
    assert state["_purge_disk_on_gc"] is True
    assert state["_owner_pid"] == os.getpid()


def test_revived_copy_has_purge_duty_and_the_same_path(tmp_path: Path) -> None:
    entry = _entry(tmp_path)

    copy = pickle.loads(pickle.dumps(entry))

    assert copy.cache_path == entry.cache_path
    assert copy.purge_disk_on_gc is True
    assert copy._finalizer.alive
    assert copy.offloaded is True
    assert np.array_equal(copy[...], np.arange(6))


def test_revived_copy_shares_the_file_with_the_source(tmp_path: Path) -> None:
    entry = _entry(tmp_path)
    copy = pickle.loads(pickle.dumps(entry))

    copy.data[0] = 100
    copy.offload()

    assert entry[0] == 100


def test_source_gc_keeps_the_file_and_copy_gc_removes_it(tmp_path: Path) -> None:
    entry = _entry(tmp_path)
    copy = pickle.loads(pickle.dumps(entry))

    del entry
    gc.collect()
    assert (tmp_path / "e.dat").exists()

    del copy
    gc.collect()
    assert not (tmp_path / "e.dat").exists()


def test_two_copies_of_one_blob_remove_the_file_only_when_both_are_gone(tmp_path: Path) -> None:
    blob = pickle.dumps(_entry(tmp_path))
    gc.collect()
    first, second = pickle.loads(blob), pickle.loads(blob)

    del first
    gc.collect()
    assert (tmp_path / "e.dat").exists()
    assert np.array_equal(second[...], np.arange(6))

    del second
    gc.collect()
    assert not (tmp_path / "e.dat").exists()


def test_disable_purge_on_one_copy_drops_only_its_duty(tmp_path: Path) -> None:
    blob = pickle.dumps(_entry(tmp_path))
    gc.collect()
    first, second = pickle.loads(blob), pickle.loads(blob)

    first.disable_purge()
    del second
    gc.collect()

    assert np.array_equal(first[...], np.arange(6))
    del first
    gc.collect()
    assert not (tmp_path / "e.dat").exists()


def test_purge_off_copy_arms_nothing(tmp_path: Path) -> None:
    entry = _entry(tmp_path, purge_disk_on_gc=False)

    copy = pickle.loads(pickle.dumps(entry))

    assert copy.purge_disk_on_gc is False
    assert not hasattr(copy, "_finalizer")


def test_caching_disabled_entry_pickles_its_array_inline(tmp_path: Path) -> None:
    entry = DiskBackedNDArray(np.arange(4.0), cache_path=tmp_path / "e")

    copy = pickle.loads(pickle.dumps(entry))

    assert entry.offloaded is False
    assert np.array_equal(copy.data, np.arange(4.0))
    assert list(tmp_path.iterdir()) == []


def test_owner_pid_travels_through_pickle(tmp_path: Path) -> None:
    entry = _entry(tmp_path)
    entry._owner_pid = 12345

    copy = pickle.loads(pickle.dumps(entry))

    assert copy._owner_pid == 12345
    assert copy._lease.owner_pid == 12345


def test_pickled_ephemeral_entry_keeps_its_temp_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    entry = DiskBackedNDArray(np.arange(3), enable_caching=True)

    copy = pickle.loads(pickle.dumps(entry))

    assert copy.ephemeral is True
    assert copy.cache_path == entry.cache_path
    assert np.array_equal(copy[...], np.arange(3))


def _read_in_worker(entry: DiskBackedNDArray) -> list[int]:
    values = np.asarray(entry).tolist()
    assert isinstance(values, list)
    return values


def test_spawned_worker_reads_the_data_and_never_deletes_the_file(tmp_path: Path) -> None:
    entry = _entry(tmp_path)
    context = multiprocessing.get_context("spawn")

    with context.Pool(1) as pool:
        values = pool.apply(_read_in_worker, (entry,))

    assert values == list(range(6))
    assert (tmp_path / "e.dat").exists()
    entry.load()
    assert np.array_equal(entry.data, np.arange(6))


HANDOFF_CHILD = Path(__file__).parent / "child" / "entry_handoff_exit.py"


@pytest.mark.parametrize(
    ("situation", "survives"), [("unrevived", False), ("revived_then_kept", True), ("replaced", True)]
)
def test_a_duty_handed_to_a_pickle_ends_at_the_owner_exit_unless_taken_back(
    tmp_path: Path, situation: str, survives: bool
) -> None:
    completed = subprocess.run(
        [sys.executable, str(HANDOFF_CHILD), str(tmp_path / "e"), situation],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    assert completed.returncode == 0, completed.stderr
    assert Path(completed.stdout.strip()).exists() is survives
