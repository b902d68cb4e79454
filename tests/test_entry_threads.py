"""Concurrent use of one entry: every transition and access runs under the entry lock."""

import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from numpy.typing import NDArray

from lazy_disk_cache.disk_backed_ndarray import DiskBackedNDArray

THREADS = 8
ROUNDS = 150


def _expected() -> NDArray[np.int64]:
    return np.arange(64 * 32, dtype=np.int64).reshape(64, 32)


def _hammer(entry: DiskBackedNDArray, worker: Callable[[DiskBackedNDArray, int], None]) -> list[BaseException]:
    errors: list[BaseException] = []
    start = threading.Barrier(THREADS)

    def run(index: int) -> None:
        start.wait()
        try:
            for _ in range(ROUNDS):
                worker(entry, index)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(index,)) for index in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return errors


def _mixed_access(entry: DiskBackedNDArray, index: int) -> None:
    expected = _expected()
    action = index % 4
    if action == 0:
        entry.offload()
        entry.load()
    elif action == 1:
        row = index * 7 % 64
        assert np.array_equal(entry[row], expected[row])
    elif action == 2:
        assert np.array_equal(entry + 0, expected)
    else:
        entry.offload()
        assert np.array_equal(np.asarray(entry), expected)


@pytest.mark.parametrize("automatic_offloading", [False, True])
def test_load_offload_index_and_ufunc_from_eight_threads_never_fail(tmp_path: Path, automatic_offloading: bool) -> None:
    entry = DiskBackedNDArray(
        _expected(), cache_path=tmp_path / "e", enable_caching=True, automatic_offloading=automatic_offloading
    )

    errors = _hammer(entry, _mixed_access)

    assert errors == []
    assert np.array_equal(np.asarray(entry), _expected())


def _toggle_caching(entry: DiskBackedNDArray, index: int) -> None:
    expected = _expected()
    if index % 2:
        entry.enable_caching()
        entry.offload()
    else:
        entry.disable_caching()
    assert np.array_equal(entry.data, expected)


def test_enable_and_disable_caching_race_with_data_access(tmp_path: Path) -> None:
    entry = DiskBackedNDArray(_expected(), cache_path=tmp_path / "e", enable_caching=True)

    errors = _hammer(entry, _toggle_caching)

    assert errors == []


def _locked_increment(entry: DiskBackedNDArray, index: int) -> None:
    with entry._lock:
        entry.data[0, 0] += 1
        entry.offload()


def test_writes_under_the_entry_lock_are_never_lost_across_offloads(tmp_path: Path) -> None:
    entry = DiskBackedNDArray(np.zeros((2, 2), dtype=np.int64), cache_path=tmp_path / "e", enable_caching=True)

    errors = _hammer(entry, _locked_increment)

    assert errors == []
    assert entry[0, 0] == THREADS * ROUNDS


def test_ufuncs_over_two_entries_in_opposite_order_do_not_deadlock(tmp_path: Path) -> None:
    left = DiskBackedNDArray(np.ones(100), cache_path=tmp_path / "l", enable_caching=True)
    right = DiskBackedNDArray(np.full(100, 2.0), cache_path=tmp_path / "r", enable_caching=True)

    def combine(_: DiskBackedNDArray, index: int) -> None:
        first, second = (left, right) if index % 2 else (right, left)
        first.offload()
        assert np.array_equal(np.add(first, second), np.full(100, 3.0))

    errors = _hammer(left, combine)

    assert errors == []
