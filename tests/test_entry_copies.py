"""Copies of entries in one process: pickle round trips and ``copy.copy`` alias the file, ``deepcopy`` does not.

Every live object on a ``.dat`` path holds it: a copy dropped while its source lives never deletes the
source's data, and the file goes only when the last of them is gone.
"""

import copy
import gc
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from lazy_disk_cache import _rust
from lazy_disk_cache.disk_backed_ndarray import DiskBackedNDArray
from lazy_disk_cache.disk_backed_store import DiskBackedStore
from lazy_disk_cache.lazy_disk_cache import LazyDiskCacheConfig
from listing import artefacts


def _entry(tmp_path: Path, **settings: Any) -> DiskBackedNDArray:
    return DiskBackedNDArray(np.arange(6.0), cache_path=tmp_path / "e", enable_caching=True, **settings)


def _files(directory: Path) -> list[str]:
    return artefacts(directory)


def test_a_pickle_round_trip_dropped_in_process_keeps_the_source_readable(private_tempdir: Path) -> None:
    entry = DiskBackedNDArray(np.arange(3.0), enable_caching=True)

    pickle.loads(pickle.dumps(entry))
    gc.collect()

    assert np.array_equal(np.asarray(entry), np.arange(3.0))


def test_the_file_goes_with_the_last_holder_whichever_dies_first(private_tempdir: Path) -> None:
    entry = DiskBackedNDArray(np.arange(3.0), enable_caching=True)
    revived = pickle.loads(pickle.dumps(entry))
    path = entry.cache_path
    assert path is not None

    del entry
    gc.collect()
    assert np.array_equal(np.asarray(revived), np.arange(3.0))

    del revived
    gc.collect()
    assert not path.exists()


def test_copy_copy_aliases_the_file_without_changing_the_source(tmp_path: Path) -> None:
    entry = _entry(tmp_path)

    twin = copy.copy(entry)
    twin.data[0] = 42.0

    assert entry.offloaded is False and entry.purge_disk_on_gc is True
    assert twin.cache_path == entry.cache_path
    assert entry[0] == 42.0


def test_a_dropped_shallow_copy_never_deletes_the_source_file(tmp_path: Path) -> None:
    entry = _entry(tmp_path)
    entry.offload()

    twin = copy.copy(entry)
    del twin
    gc.collect()

    assert np.array_equal(entry[...], np.arange(6.0))
    del entry
    gc.collect()
    assert _files(tmp_path) == []


def test_a_shallow_copy_outliving_its_source_keeps_the_file_until_it_goes(tmp_path: Path) -> None:
    entry = _entry(tmp_path)
    twin = copy.copy(entry)

    del entry
    gc.collect()
    assert np.array_equal(twin[...], np.arange(6.0))

    del twin
    gc.collect()
    assert _files(tmp_path) == []


def test_a_shallow_copy_of_a_purge_off_entry_arms_nothing(tmp_path: Path) -> None:
    entry = _entry(tmp_path, purge_disk_on_gc=False)

    twin = copy.copy(entry)
    del entry, twin
    gc.collect()

    assert _files(tmp_path) == ["e.dat"]


def test_deepcopy_gets_its_own_file_and_writes_stay_apart(tmp_path: Path, private_tempdir: Path) -> None:
    entry = _entry(tmp_path)

    twin = copy.deepcopy(entry)
    twin.data[0] = -1.0
    entry.data[1] = -2.0

    assert twin.cache_path is not None and twin.cache_path.parent == private_tempdir
    assert twin.ephemeral is True and twin.purge_disk_on_gc is True
    assert np.array_equal(twin[...], [-1.0, 1, 2, 3, 4, 5])
    assert np.array_equal(entry[...], [0.0, -2, 2, 3, 4, 5])


def test_deepcopy_keeps_the_state_of_the_source(tmp_path: Path, private_tempdir: Path) -> None:
    mapped = _entry(tmp_path)
    offloaded = DiskBackedNDArray(np.arange(4), cache_path=tmp_path / "o", enable_caching=True)
    offloaded.offload()

    mapped_twin, offloaded_twin = copy.deepcopy(mapped), copy.deepcopy(offloaded)

    assert mapped_twin.offloaded is False and isinstance(mapped_twin.data, np.memmap)
    assert offloaded_twin.offloaded is True and offloaded.offloaded is True
    assert np.array_equal(offloaded_twin[...], np.arange(4))


def test_deepcopy_of_an_offloaded_ephemeral_entry_copies_inside_the_kernel(
    private_tempdir: Path, clean_faults: None
) -> None:
    entry = DiskBackedNDArray(np.arange(1024.0), enable_caching=True)
    entry.offload()
    _rust._clear_faults()

    twin = copy.deepcopy(entry)

    assert _rust._op_counts()["copy"] >= 1
    assert np.array_equal(twin[...], np.arange(1024.0))


def test_deepcopy_is_removed_with_its_last_holder_and_the_source_stays(tmp_path: Path, private_tempdir: Path) -> None:
    entry = _entry(tmp_path)
    twin = copy.deepcopy(entry)

    del twin
    gc.collect()

    assert _files(private_tempdir) == []
    assert np.array_equal(entry[...], np.arange(6.0))


def test_deepcopy_of_a_ram_entry_owns_a_new_array(tmp_path: Path) -> None:
    source = np.arange(3.0)
    entry = DiskBackedNDArray(source, cache_path=tmp_path / "e")

    twin = copy.deepcopy(entry)
    twin.data[0] = 9.0

    assert twin.cache_enabled is False and twin.cache_path is None
    assert source[0] == 0.0
    assert _files(tmp_path) == []


def test_deepcopy_of_a_reloaded_entry_keeps_its_private_writes(tmp_path: Path, private_tempdir: Path) -> None:
    config = LazyDiskCacheConfig(enable_caching=True, cache_path=tmp_path, purge_disk_on_gc=False)
    store = DiskBackedStore[DiskBackedNDArray](config=config, factory=DiskBackedNDArray)
    store.add_data_to_store("k", np.arange(5))
    store.offload(pickle_container=True)
    reloaded = DiskBackedStore[DiskBackedNDArray](config=config, factory=DiskBackedNDArray)["k"]
    reloaded.data[0] = 77

    twin = copy.deepcopy(reloaded)
    reloaded.data[1] = 88

    assert np.array_equal(twin[...], [77, 1, 2, 3, 4])
    assert np.array_equal(np.load(tmp_path / "k.npy"), np.arange(5))


def test_deepcopy_memo_keeps_shared_references_shared(tmp_path: Path, private_tempdir: Path) -> None:
    entry = _entry(tmp_path)

    pair = copy.deepcopy([entry, entry])

    assert pair[0] is pair[1]
    assert pair[0] is not entry


def test_copy_of_a_store_shares_no_mapping_with_the_original(tmp_path: Path) -> None:
    config = LazyDiskCacheConfig(enable_caching=True, cache_path=tmp_path, purge_disk_on_gc=False)
    store = DiskBackedStore[DiskBackedNDArray](config=config, factory=DiskBackedNDArray)
    store.add_data_to_store("a", np.arange(3))

    twin = copy.copy(store)
    twin.add_data_to_store("b", np.arange(2))
    gc.collect()

    assert "b" not in store
    assert np.array_equal(np.asarray(store["a"]), np.arange(3))
    assert np.array_equal(np.asarray(twin["a"]), np.arange(3))


@pytest.mark.parametrize("route", ["pickle", "copy"])
def test_entries_of_a_copied_store_stay_readable_after_the_copy_is_dropped(tmp_path: Path, route: str) -> None:
    config = LazyDiskCacheConfig(enable_caching=True, cache_path=tmp_path)
    store = DiskBackedStore[DiskBackedNDArray](config=config, factory=DiskBackedNDArray)
    store.add_data_to_store("a", np.arange(3))
    entry = store["a"]

    twin = pickle.loads(pickle.dumps(store)) if route == "pickle" else copy.copy(store)
    del twin
    gc.collect()

    assert np.array_equal(np.asarray(store["a"]), np.arange(3))
    assert np.array_equal(np.asarray(entry), np.arange(3))
