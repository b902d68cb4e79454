"""Progress callbacks of long operations: rate limited, called from the working thread, ending with
``(total, total)``, and able to stop the operation cleanly by raising."""

import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from lazy_disk_cache import DiskBackedNDArray, _progress
from lazy_disk_cache import lazy_disk_cache as ldc
from lazy_disk_cache._progress import MIN_INTERVAL_SECONDS, ProgressMeter
from listing import artefacts
from stored import open_store, write_store

# 1 MiB pieces: an array of a few MiB crosses several chunk boundaries.
SMALL_BUDGET = 1 << 20


class Ticking:
    """A monotonic clock that advances by ``step`` seconds every time it is read."""

    def __init__(self, step: float) -> None:
        self.now = 0.0
        self.step = step

    def monotonic(self) -> float:
        self.now += self.step
        return self.now


@pytest.fixture
def small_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ldc, "psutil", None)
    monkeypatch.setattr(ldc, "_MEMMAP_FALLBACK_CHUNK_BYTES", SMALL_BUDGET)


def tick_per_interval(monkeypatch: pytest.MonkeyPatch, reads_per_interval: int) -> None:
    """A clock that reaches the next interval every ``reads_per_interval`` reads (exact binary steps)."""
    monkeypatch.setattr(_progress, "MIN_INTERVAL_SECONDS", 1.0)
    monkeypatch.setattr(_progress, "time", Ticking(step=1.0 / reads_per_interval))


@pytest.fixture
def every_report_is_due(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Make the rate limit pass on every report, so each chunk calls the callback."""
    tick_per_interval(monkeypatch, 1)
    yield


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[int, int]] = []
        self.threads: set[int] = set()

    def __call__(self, done: int, total: int) -> None:
        self.calls.append((done, total))
        self.threads.add(threading.get_ident())


def assert_well_formed(calls: list[tuple[int, int]], total: int) -> None:
    assert calls, "at least the final call"
    assert calls[-1] == (total, total)
    assert all(seen_total == total for _, seen_total in calls)
    done = [seen for seen, _ in calls]
    assert done == sorted(done), "done never goes backwards"


def test_the_meter_calls_at_most_once_per_interval_plus_the_final_call(monkeypatch: pytest.MonkeyPatch) -> None:
    tick_per_interval(monkeypatch, 4)
    recorder = Recorder()
    meter = ProgressMeter(recorder, total=100)

    for _ in range(100):
        meter.advance(1)
    meter.finish()

    # 100 reports, a clock read each, a quarter interval apart: one call per four reports.
    assert len(recorder.calls) == 100 // 4 + 1
    assert MIN_INTERVAL_SECONDS == 0.1, "about ten calls a second"
    assert_well_formed(recorder.calls, 100)


def test_the_meter_never_counts_past_the_total(monkeypatch: pytest.MonkeyPatch) -> None:
    tick_per_interval(monkeypatch, 1)
    recorder = Recorder()
    meter = ProgressMeter(recorder, total=10)

    meter.advance(25)
    meter.reach(5)

    assert recorder.calls == [(10, 10), (10, 10)]


@pytest.mark.usefixtures("small_budget", "every_report_is_due")
def test_enable_caching_reports_each_chunk_from_the_calling_thread_and_ends_with_the_total(tmp_path: Path) -> None:
    array = np.arange(5 * SMALL_BUDGET // 8, dtype=np.float64)
    entry = DiskBackedNDArray(array, cache_path=tmp_path / "e")
    recorder = Recorder()

    entry.enable_caching(progress=recorder)

    assert len(recorder.calls) >= 5, recorder.calls
    assert_well_formed(recorder.calls, array.nbytes)
    assert recorder.threads == {threading.get_ident()}
    np.testing.assert_array_equal(np.asarray(entry), array)


@pytest.mark.usefixtures("small_budget", "every_report_is_due")
def test_an_exception_from_the_progress_callback_stops_the_conversion_and_leaves_no_temp(tmp_path: Path) -> None:
    array = np.arange(5 * SMALL_BUDGET // 8, dtype=np.float64)
    entry = DiskBackedNDArray(array, cache_path=tmp_path / "e")

    def stop(done: int, total: int) -> None:
        if done < total:
            raise InterruptedError("stopped by the callback")

    with pytest.raises(InterruptedError, match="stopped by the callback"):
        entry.enable_caching(progress=stop)

    assert not entry.cache_enabled
    assert artefacts(tmp_path) == []
    np.testing.assert_array_equal(np.asarray(entry), array)


def test_a_small_conversion_makes_only_the_final_call(tmp_path: Path) -> None:
    entry = DiskBackedNDArray(np.arange(10), cache_path=tmp_path / "e")
    recorder = Recorder()

    entry.enable_caching(progress=recorder)

    assert recorder.calls == [(80, 80)]


def test_enable_caching_on_an_entry_already_cached_makes_no_call(tmp_path: Path) -> None:
    entry = DiskBackedNDArray(np.arange(10), cache_path=tmp_path / "e", enable_caching=True)
    recorder = Recorder()

    entry.enable_caching(progress=recorder)

    assert recorder.calls == []


def arrays_of(count: int) -> dict[str, Any]:
    return {f"k{index}": np.full(SMALL_BUDGET // 4, index, dtype=np.float64) for index in range(count)}


@pytest.mark.usefixtures("small_budget", "every_report_is_due")
@pytest.mark.parametrize("offloaded_first", [False, True], ids=["from-memory", "from-offloaded-files"])
def test_store_offload_with_pickle_container_reports_every_payload_byte(tmp_path: Path, offloaded_first: bool) -> None:
    arrays = arrays_of(4)
    store = open_store(tmp_path)
    for key, array in arrays.items():
        store.add_data_to_store(key, array)
        if offloaded_first:
            store[key].offload()
    recorder = Recorder()

    store.offload(pickle_container=True, progress=recorder)

    total = sum(array.nbytes for array in arrays.values())
    assert len(recorder.calls) >= 4, recorder.calls
    assert_well_formed(recorder.calls, total)
    assert store.verify().ok


@pytest.mark.usefixtures("small_budget", "every_report_is_due")
def test_store_offload_without_pickle_container_reports_each_entry(tmp_path: Path) -> None:
    arrays = arrays_of(3)
    store = open_store(tmp_path)
    for key, array in arrays.items():
        store.add_data_to_store(key, array)
    recorder = Recorder()

    store.offload(progress=recorder)

    assert_well_formed(recorder.calls, sum(array.nbytes for array in arrays.values()))
    assert all(store[key].offloaded for key in arrays)


@pytest.mark.usefixtures("small_budget", "every_report_is_due")
def test_an_exception_from_the_progress_callback_stops_the_offload_keeping_earlier_keys(tmp_path: Path) -> None:
    arrays = arrays_of(4)
    store = open_store(tmp_path)
    for key, array in arrays.items():
        store.add_data_to_store(key, array)
    stop_after = arrays["k0"].nbytes + arrays["k1"].nbytes // 2

    def stop(done: int, total: int) -> None:
        if stop_after <= done < total:
            raise InterruptedError("stopped by the callback")

    with pytest.raises(InterruptedError):
        store.offload(pickle_container=True, progress=stop)

    assert sorted(name for name in os.listdir(tmp_path) if name.endswith(".tmp")) == []
    assert store.store["k0"] is None, "the key written before the stop was committed"
    assert store.store["k2"] is not None, "keys after the stop keep their state"
    assert store.verify().ok


def test_verify_reports_the_bytes_it_reads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    arrays = {f"k{index}": np.arange(3 << 20, dtype=np.uint8) for index in range(3)}
    store = write_store(tmp_path, arrays)
    tick_per_interval(monkeypatch, 1)
    recorder = Recorder()

    store.verify(progress=recorder)

    total = sum((tmp_path / f"{key}.npy").stat().st_size for key in arrays)
    assert_well_formed(recorder.calls, total)
    assert len(recorder.calls) >= 3


def test_an_exception_from_the_progress_callback_stops_verify(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = write_store(tmp_path, {"k": np.arange(3 << 20, dtype=np.uint8)})
    tick_per_interval(monkeypatch, 1)

    def stop(done: int, total: int) -> None:
        raise InterruptedError("stopped by the callback")

    with pytest.raises(InterruptedError):
        store.verify(progress=stop)
