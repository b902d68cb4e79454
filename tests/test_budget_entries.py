"""Real entries under a memory budget with an injected limit: what is spilled, where, and what it reports.

The limit is ten entries' worth of tracked bytes, so the default thresholds spill once more
than seven entries hold RAM and stop at six (see ``budget_fakes.injected_budget``).
"""

from __future__ import annotations

import copy
import gc
import logging
import os
import pickle
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray

from budget_fakes import injected_budget
from lazy_disk_cache import DiskBackedNDArray, DiskBackedStore, LazyDiskCacheConfig, LazyDiskCacheWarning
from lazy_disk_cache._budget import MemoryLedger
from lazy_disk_cache._spill_dir import current_spill_dir

ELEMENTS = 12_800  # 100 KiB of float64
ENTRY_BYTES = ELEMENTS * 8
LIMIT = 10 * ENTRY_BYTES


def _values(index: int) -> NDArray[np.float64]:
    return np.arange(ELEMENTS, dtype=np.float64) + index * 1e6


def _entries(count: int, **settings: Any) -> list[DiskBackedNDArray]:
    return [DiskBackedNDArray(_values(index), **settings) for index in range(count)]


def _spill_file(entry: DiskBackedNDArray) -> Path:
    path = entry._spill_path
    assert path is not None
    return path


@pytest.fixture
def budget() -> Iterator[MemoryLedger]:
    with injected_budget(LIMIT) as ledger:
        yield ledger


def test_ram_entries_past_the_threshold_spill_least_recently_created_first(budget: MemoryLedger) -> None:
    entries = _entries(8)

    assert [entry.spilled for entry in entries] == [True, True] + [False] * 6
    assert [entry.offloaded for entry in entries] == [True, True] + [False] * 6
    assert budget.stats().managed_bytes == 6 * ENTRY_BYTES


def test_an_accessed_entry_is_spilled_after_the_ones_not_used_since(budget: MemoryLedger) -> None:
    entries = _entries(7)
    entries[0][0]  # __getitem__ marks it used
    np.asarray(entries[1])  # and so does __array__

    entries.append(DiskBackedNDArray(_values(7)))

    assert [entry.spilled for entry in entries] == [False, False, True, True] + [False] * 4


def test_every_value_of_a_spilled_entry_comes_back_on_its_next_access(budget: MemoryLedger) -> None:
    entries = _entries(12)

    assert sum(entry.spilled for entry in entries) == 6
    for index, entry in enumerate(entries):
        assert np.array_equal(np.asarray(entry), _values(index))
        assert np.array_equal(entry[10:20], _values(index)[10:20])
        assert np.array_equal(entry + 1, _values(index) + 1)


def test_a_spilled_entry_without_caching_reports_what_it_reported_before(budget: MemoryLedger, tmp_path: Path) -> None:
    configured = tmp_path / "wanted.dat"
    entries = [DiskBackedNDArray(_values(0), cache_path=configured), *_entries(7)[1:]]
    spilled = entries[0]

    assert spilled.spilled
    assert spilled.offloaded
    assert not spilled.cache_enabled
    assert spilled.cache_path == configured
    assert not configured.exists(), "a spill never writes the configured cache path"
    assert _spill_file(spilled).parent == current_spill_dir()


def test_a_spilled_entry_is_mapped_from_its_spill_file_on_access_and_keeps_writes(budget: MemoryLedger) -> None:
    entries = _entries(8)
    spilled = entries[0]

    spilled.data[5] = -1.0
    assert isinstance(spilled.data, np.memmap)
    assert (spilled.spilled, spilled.offloaded, spilled.cache_enabled) == (True, False, False)
    del entries[1:]
    gc.collect()

    expected = _values(0)
    expected[5] = -1.0
    assert np.array_equal(np.fromfile(_spill_file(spilled)), expected), "the write went to the spill file"
    assert budget.stats().tracked_entries == 0, "a mapped spill file holds no anonymous RAM"


def test_an_entry_whose_array_is_still_referenced_elsewhere_is_never_spilled(budget: MemoryLedger) -> None:
    kept_array = _values(0)
    by_array = DiskBackedNDArray(kept_array)
    by_view = DiskBackedNDArray(_values(1))
    view = by_view[:10]
    by_export = DiskBackedNDArray(_values(2))
    export = by_export.data.data  # a buffer export of the entry's array
    by_base = DiskBackedNDArray(np.concatenate([_values(3), _values(3)])[:ELEMENTS])
    others = [DiskBackedNDArray(_values(index)) for index in range(4, 8)]

    assert not any(entry.spilled for entry in (by_array, by_view, by_export))
    assert by_base.spilled, "a view whose base nothing else holds is spilled (and frees its base)"
    assert [entry.spilled for entry in others] == [True, False, False, False]
    del view, export
    assert by_view.spill() == ENTRY_BYTES
    assert by_export.spill() == ENTRY_BYTES
    assert by_array.spill() is None
    assert np.array_equal(np.asarray(by_view), _values(1))


def test_the_spill_file_goes_when_the_spilled_entry_is_collected(budget: MemoryLedger) -> None:
    entries = _entries(8)
    path = _spill_file(entries[0])
    assert path.exists()

    del entries[0]
    gc.collect()

    assert not path.exists()


def test_a_spilled_entry_pickles_its_array_inline_and_the_copy_lives_in_ram(budget: MemoryLedger) -> None:
    entries = _entries(8)
    spilled = entries[0]

    state = spilled.__getstate__()
    twin = pickle.loads(pickle.dumps(spilled))

    assert not {"_spill_path", "_spill_lease", "_budget_record"} & set(state)
    assert state["_mmap"] is None
    assert type(state["_data"]) is np.ndarray
    assert not twin.spilled
    assert type(twin.data) is np.ndarray
    assert np.array_equal(twin.data, _values(0))
    assert spilled.spilled, "the original keeps its spill file"
    assert np.array_equal(np.asarray(spilled), _values(0))


def test_a_shallow_copy_shares_the_spill_file_until_both_are_gone(budget: MemoryLedger) -> None:
    entries = _entries(8)
    path = _spill_file(entries[0])

    twin = copy.copy(entries[0])
    twin.data[0] = 42.0
    del entries[0]
    gc.collect()

    assert path.exists()
    assert np.fromfile(path)[0] == 42.0
    del twin
    gc.collect()
    assert not path.exists()


def test_a_deep_copy_of_a_spilled_entry_is_an_independent_ram_entry(budget: MemoryLedger) -> None:
    entries = _entries(8)

    twin = copy.deepcopy(entries[0])
    twin.data[0] = 42.0

    assert not twin.spilled
    assert type(twin.data) is np.ndarray
    assert np.array_equal(np.asarray(entries[0]), _values(0))


def test_enable_caching_moves_a_spilled_entry_to_its_dat_and_removes_the_spill_file(
    budget: MemoryLedger, tmp_path: Path
) -> None:
    entries = [DiskBackedNDArray(_values(0), cache_path=tmp_path / "first"), *_entries(8)[1:]]
    spilled = entries[0]
    path = _spill_file(spilled)

    spilled.enable_caching()

    assert (spilled.spilled, spilled.cache_enabled) == (False, True)
    assert not path.exists()
    assert np.array_equal(np.fromfile(tmp_path / "first.dat"), _values(0))
    spilled.offload()
    assert np.array_equal(np.asarray(spilled), _values(0))


def test_disable_caching_takes_ram_that_is_then_spilled_to_the_spill_directory(
    budget: MemoryLedger, tmp_path: Path
) -> None:
    cached = DiskBackedNDArray(_values(0), enable_caching=True, cache_path=tmp_path / "cached")
    assert budget.stats().tracked_entries == 0, "a mapped entry holds no anonymous RAM"
    cached.disable_caching()
    assert budget.stats().managed_bytes == ENTRY_BYTES

    others = _entries(8)[1:]

    assert cached.spilled
    assert _spill_file(cached).parent == current_spill_dir()
    assert np.array_equal(np.fromfile(tmp_path / "cached.dat"), _values(0)), "its old .dat is untouched"
    assert not any(entry.spilled for entry in others)
    assert np.array_equal(np.asarray(cached), _values(0))


def test_entries_that_hold_no_anonymous_ram_are_not_tracked(budget: MemoryLedger, tmp_path: Path) -> None:
    mapped = DiskBackedNDArray(_values(0), enable_caching=True, cache_path=tmp_path / "mapped")
    offloaded = DiskBackedNDArray(_values(1), enable_caching=True, automatic_offloading=True)
    objects = DiskBackedNDArray(np.array([object()] * ELEMENTS))
    over_bytes = DiskBackedNDArray(np.frombuffer(bytes(ENTRY_BYTES), dtype=np.float64))

    assert budget.stats().tracked_entries == 0
    assert [entry.spill() for entry in (mapped, offloaded, objects, over_bytes)] == [0, 0, 0, 0]
    assert not any(entry.spilled for entry in (mapped, offloaded, objects, over_bytes))


def test_offloading_or_caching_an_entry_untracks_its_ram(budget: MemoryLedger, tmp_path: Path) -> None:
    entry = DiskBackedNDArray(_values(0), cache_path=tmp_path / "entry")
    assert budget.stats().managed_bytes == ENTRY_BYTES

    entry.enable_caching()

    assert budget.stats().managed_bytes == 0


def test_a_spill_batch_counts_its_entries_and_bytes_and_logs_them(
    budget: MemoryLedger, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="lazy_disk_cache._budget"):
        entries = _entries(8)

    stats = budget.stats()
    assert (stats.spilled_count, stats.spilled_bytes) == (2, 2 * ENTRY_BYTES)
    assert stats.last_spill_seconds is not None
    assert [record.getMessage().split(":")[0] for record in caplog.records if "Spilled" in record.getMessage()] == [
        f"Spilled 2 entries ({2 * ENTRY_BYTES} bytes) in {stats.last_spill_seconds:.3f} s"
    ]
    assert len(entries) == 8


def test_store_entries_without_caching_spill_and_the_store_pickles_them_inline(
    budget: MemoryLedger, tmp_path: Path
) -> None:
    store: DiskBackedStore[DiskBackedNDArray] = DiskBackedStore(
        config=LazyDiskCacheConfig(cache_path=tmp_path / "store"), factory=DiskBackedNDArray
    )
    for index in range(8):
        store.add_data_to_store(f"k{index}", _values(index))
    first = store["k0"]
    assert first.spilled

    with pytest.warns(LazyDiskCacheWarning, match="caching disabled"):
        store.offload(pickle_container=True)
    pickled = pickle.dumps(store)
    twin = pickle.loads(pickled)

    assert first.spilled, "a store offload leaves entries without caching alone"
    assert not (tmp_path / "store" / "k0.npy").exists()
    assert os.fsencode(str(current_spill_dir())) not in pickled
    for index in range(8):
        assert np.array_equal(np.asarray(twin[f"k{index}"]), _values(index))


def test_a_spilled_entry_can_be_tokenized_by_dask(budget: MemoryLedger) -> None:
    tokenize = pytest.importorskip("dask.base").tokenize
    entries = _entries(8)
    before = tokenize(entries[7])

    assert tokenize(entries[0]) != before
    assert tokenize(entries[0]) == tokenize(entries[0])


def _reopened_store(tmp_path: Path, count: int) -> DiskBackedStore[DiskBackedNDArray]:
    directory = tmp_path / "store"
    config = LazyDiskCacheConfig(cache_path=directory, enable_caching=True)
    writer: DiskBackedStore[DiskBackedNDArray] = DiskBackedStore(config=config, factory=DiskBackedNDArray)
    for index in range(count):
        writer.add_data_to_store(f"k{index}", _values(index))
    writer.offload(pickle_container=True)
    for index in range(count):
        (directory / f"k{index}.dat").unlink(missing_ok=True)  # a reopened store maps the committed .npy
    return DiskBackedStore(config=config, factory=DiskBackedNDArray)


def test_a_reopened_entry_with_written_pages_spills_to_its_own_dat(budget: MemoryLedger, tmp_path: Path) -> None:
    store = _reopened_store(tmp_path, 8)
    entries = [store[f"k{index}"] for index in range(8)]
    for entry in entries:
        entry.data[:] += 1.0
    dat = tmp_path / "store" / "k0.dat"
    assert budget.stats().managed_bytes == 8 * ENTRY_BYTES, "the copy-on-write mappings count in full"

    budget.check()

    assert [entry.offloaded for entry in entries] == [True, True] + [False] * 6
    assert np.array_equal(np.fromfile(dat), _values(0) + 1.0)
    for index, entry in enumerate(entries):
        assert np.array_equal(np.asarray(entry), _values(index) + 1.0)
    assert np.array_equal(np.load(tmp_path / "store" / "k0.npy"), _values(0)), "the committed value is unchanged"


def test_a_reopened_entry_with_no_written_page_is_left_mapped(budget: MemoryLedger, tmp_path: Path) -> None:
    store = _reopened_store(tmp_path, 8)
    entries = [store[f"k{index}"] for index in range(8)]
    for entry in entries[1:]:
        entry.data[:] += 1.0

    assert entries[0].spill() == 0
    budget.check()

    assert not entries[0].offloaded
    assert not (tmp_path / "store" / "k0.dat").exists()
    assert [entry.offloaded for entry in entries[1:]] == [True, True] + [False] * 5


def test_the_repr_of_a_spilled_entry_names_its_spill_file(budget: MemoryLedger) -> None:
    entries = _entries(8)
    path = _spill_file(entries[0])

    assert repr(entries[0]) == f"<DiskBackedNDArray shape=({ELEMENTS},) dtype=float64 spilled to {str(path)!r}>"
    entries[0].load()
    assert repr(entries[0]).endswith(f" mapped on {str(path)!r}>")
    assert repr(entries[2]).endswith(" in RAM>")
