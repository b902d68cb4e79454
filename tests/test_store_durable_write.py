"""A durable store write: what it creates and fsyncs, and the working files it leaves (none).

A store's entries (built by ``add_data_to_store`` or reloaded) keep their data in a working copy
that no restart ever reads: the committed ``<key>.npy`` + ``<key>.meta.json`` pair is the value. A
new entry holds it in RAM and writes its working ``<key>.dat`` only when something needs that
file; a working file is written without fsyncs, and once the pair is committed and the store
drops the entry, the file goes and a still-alive entry reads the committed payload instead.
"""

import copy
import gc
import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from lazy_disk_cache import _rust
from lazy_disk_cache._memmap import mapping_of
from lazy_disk_cache.disk_backed_ndarray import DiskBackedNDArray
from lazy_disk_cache.disk_backed_store import DiskBackedStore
from lazy_disk_cache.lazy_disk_cache import LazyDiskCacheConfig, settle_committed_entries
from listing import artefacts
from stored import make_store

Store = DiskBackedStore[DiskBackedNDArray]


pytestmark = pytest.mark.usefixtures("clean_faults")


def durable_store(cache_dir: Path, **settings: Any) -> Store:
    return make_store(cache_dir, enable_caching=True, purge_disk_on_gc=False, **settings)


def syncs() -> tuple[int, int]:
    counts = _rust._op_counts()
    return counts["fsync"], counts["dir_fsync"]


def arrays(count: int) -> dict[str, np.ndarray[Any, Any]]:
    return {f"k{index:03d}": np.full((16, 4), index, dtype=np.float32) for index in range(count)}


# -- fsyncs ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "values",
    [arrays(50), {"big0": np.ones((1 << 18, 4), np.float32), "big1": np.zeros((1 << 18, 4), np.float32)}],
    ids=["50 small", "2 x 4 MiB"],
)
def test_a_durable_store_write_fsyncs_two_files_per_key_and_the_directory_once(
    tmp_path: Path, values: dict[str, np.ndarray[Any, Any]]
) -> None:
    store = durable_store(tmp_path)
    _rust._clear_faults()

    for key, value in values.items():
        store.add_data_to_store(key, value)
    after_adds = syncs()
    store.offload(pickle_container=True)

    assert after_adds == (0, 0), "the working .dat files are written without fsyncs"
    assert syncs() == (2 * len(values), 1)


def test_a_durable_store_write_creates_only_the_two_files_of_each_pair(tmp_path: Path) -> None:
    values = arrays(20)
    store = durable_store(tmp_path)
    store.offload(pickle_container=True)  # the lock file, made once per directory
    _rust._clear_faults()

    for key, value in values.items():
        store.add_data_to_store(key, value)
    created_by_adds = _rust._op_counts()["create"]
    store.offload(pickle_container=True)

    assert created_by_adds == 0, "an added entry keeps its working copy in RAM until a file is needed"
    assert _rust._op_counts()["create"] == 2 * len(values)
    assert _rust._op_counts()["unlink"] == 0, "no working file was written, so none is removed"


def test_a_durable_store_write_leaves_only_the_committed_pairs(tmp_path: Path) -> None:
    values = arrays(5)
    store = durable_store(tmp_path)
    for key, value in values.items():
        store.add_data_to_store(key, value)

    store.offload(pickle_container=True)

    assert artefacts(tmp_path) == sorted(f"{key}{suffix}" for key in values for suffix in (".meta.json", ".npy"))
    reopened = durable_store(tmp_path)
    for key, value in values.items():
        np.testing.assert_array_equal(np.asarray(reopened[key]), value)


def test_a_reloaded_entry_of_a_durable_store_materialises_its_dat_without_fsyncs(tmp_path: Path) -> None:
    store = durable_store(tmp_path)
    store.add_data_to_store("k", np.arange(8.0))
    store.offload(pickle_container=True)
    entry = durable_store(tmp_path)["k"]
    entry.data[0] = -1.0
    _rust._clear_faults()

    entry.offload()

    assert syncs() == (0, 0)
    assert np.fromfile(tmp_path / "k.dat")[0] == -1.0


def test_a_standalone_entry_with_purge_off_stays_durable(tmp_path: Path) -> None:
    _rust._clear_faults()

    entry = DiskBackedNDArray(np.arange(8.0), enable_caching=True, cache_path=tmp_path / "e", purge_disk_on_gc=False)
    constructed = syncs()
    entry.data[0] = 5.0
    entry.offload()

    fsyncs, dir_fsyncs = syncs()
    assert fsyncs == 1 and dir_fsyncs >= 1, "the .dat is fsynced, renamed, the directory fsynced"
    assert _rust._op_counts()["map"] >= 1
    assert constructed == (1, 1), "the conversion itself writes the .dat durably"
    assert np.fromfile(tmp_path / "e.dat")[0] == 5.0, "the write through the shared mapping reached the file"


def test_an_entry_installed_with_setitem_keeps_its_own_durability(tmp_path: Path) -> None:
    store = durable_store(tmp_path / "store")
    _rust._clear_faults()

    store["k"] = DiskBackedNDArray(
        np.arange(8.0), enable_caching=True, cache_path=tmp_path / "own", purge_disk_on_gc=False
    )

    assert syncs()[0] == 1
    entry = store["k"]
    store.offload(pickle_container=True)
    del entry
    gc.collect()
    assert (tmp_path / "own.dat").exists(), "an entry the store did not build keeps its own durable .dat"
    np.testing.assert_array_equal(np.fromfile(tmp_path / "own.dat"), np.arange(8.0))


# -- the working .dat after the commit -------------------------------------------------------------


def test_an_added_entry_keeps_its_data_in_ram_until_a_file_is_needed(tmp_path: Path) -> None:
    store = durable_store(tmp_path)
    source = np.arange(6.0).reshape(2, 3)
    store.add_data_to_store("k", source)
    entry = store["k"]
    source[0, 0] = -1.0

    assert not (tmp_path / "k.dat").exists()
    assert "in RAM, no" in repr(entry) and "k.dat' written yet" in repr(entry)
    assert entry.cache_enabled and not entry.offloaded and entry.cache_path == tmp_path / "k.dat"
    assert entry[0, 0] == 0.0, "the entry holds its own copy, not the caller's array"
    entry.data[1, 1] = 7.0
    entry.offload()

    expected = np.arange(6.0).reshape(2, 3)
    expected[1, 1] = 7.0
    np.testing.assert_array_equal(np.fromfile(tmp_path / "k.dat").reshape(2, 3), expected)
    np.testing.assert_array_equal(np.asarray(entry), expected)
    assert syncs() == (0, 0), "a working file is written without fsyncs"


def test_an_added_entry_alive_after_the_commit_maps_the_committed_payload_instead_of_its_ram(tmp_path: Path) -> None:
    store = durable_store(tmp_path)
    store.add_data_to_store("k", np.arange(6.0).reshape(2, 3))
    entry = store["k"]

    store.offload(pickle_container=True)

    assert artefacts(tmp_path) == ["k.meta.json", "k.npy"]
    assert "mapped copy-on-write from" in repr(entry)
    mapping = mapping_of(entry.data)
    assert mapping is not None and mapping.mode == "c" and mapping.path == str(tmp_path / "k.npy")
    entry.data[0, 0] = 9.0
    entry.offload()
    assert np.fromfile(tmp_path / "k.dat")[0] == 9.0
    assert np.load(tmp_path / "k.npy")[0, 0] == 0.0, "the committed value changes only at a commit"


def test_an_added_entry_whose_npy_is_replaced_before_it_adopts_it_keeps_its_ram(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    elsewhere = tmp_path / "elsewhere"
    other = durable_store(elsewhere)  # its .npy lays the payload out as ours does (at 4096)
    other.add_data_to_store("k", np.full((2, 3), 5.0))
    other.offload(pickle_container=True)

    def another_writer_commits_first(committed: Any) -> None:
        os.replace(elsewhere / "k.npy", tmp_path / "k.npy")
        settle_committed_entries(committed)

    monkeypatch.setattr("lazy_disk_cache.disk_backed_store.settle_committed_entries", another_writer_commits_first)
    store = durable_store(tmp_path)
    store.add_data_to_store("k", np.arange(6.0).reshape(2, 3))
    entry = store["k"]

    store.offload(pickle_container=True)

    assert "in RAM" in repr(entry), "the .npy at its name is another writer's: nothing to adopt"
    np.testing.assert_array_equal(np.asarray(entry), np.arange(6.0).reshape(2, 3))


def test_an_entry_still_alive_after_the_commit_reads_the_committed_payload(tmp_path: Path) -> None:
    store = durable_store(tmp_path)
    store.add_data_to_store("k", np.arange(6.0).reshape(2, 3))
    entry = store["k"]
    entry.offload()  # writes its working .dat, which the next load maps shared
    entry.load()

    store.offload(pickle_container=True)

    assert not (tmp_path / "k.dat").exists()
    assert "released working file" in repr(entry)
    released = mapping_of(entry.data)
    entry.offload()
    np.testing.assert_array_equal(np.asarray(entry), np.arange(6.0).reshape(2, 3))
    assert (tmp_path / "k.dat").exists(), "a buffer on the released file is materialised again"
    entry.offload()
    assert released is not None and released.mode == "r+", "its live buffer stayed its own mapping"


def test_writes_through_views_taken_before_the_commit_are_kept_by_the_next_offload(tmp_path: Path) -> None:
    store = durable_store(tmp_path)
    store.add_data_to_store("k", np.zeros(1024))
    entry = store["k"]
    view = entry[100:200]
    store.offload(pickle_container=True)

    view[5] = 42.0
    entry.offload()

    assert np.fromfile(tmp_path / "k.dat")[105] == 42.0
    assert entry[105] == 42.0
    assert np.load(tmp_path / "k.npy")[105] == 0.0, "the committed value changes only at a commit"


def test_an_offloaded_entry_still_alive_after_the_commit_maps_the_payload_copy_on_write(tmp_path: Path) -> None:
    store = durable_store(tmp_path)
    store.add_data_to_store("k", np.arange(4.0))
    entry = store["k"]
    entry.offload()

    store.offload(pickle_container=True)
    mapping = mapping_of(entry.data)
    entry.data[0] = 9.0

    assert not (tmp_path / "k.dat").exists()
    assert mapping is not None and mapping.mode == "c"
    assert np.load(tmp_path / "k.npy")[0] == 0.0
    entry.offload()
    assert np.fromfile(tmp_path / "k.dat")[0] == 9.0


def test_a_live_copy_on_the_same_path_keeps_the_working_dat(tmp_path: Path) -> None:
    store = durable_store(tmp_path)
    store.add_data_to_store("k", np.arange(4.0))
    twin = copy.copy(store["k"])
    twin.offload()

    store.offload(pickle_container=True)

    assert (tmp_path / "k.dat").exists()
    np.testing.assert_array_equal(np.asarray(twin), np.arange(4.0))


def test_a_pickled_entry_keeps_its_working_dat_for_copies_elsewhere(tmp_path: Path) -> None:
    store = durable_store(tmp_path)
    store.add_data_to_store("k", np.arange(4.0))
    blob = pickle.dumps(store["k"])

    store.offload(pickle_container=True)
    gc.collect()

    assert (tmp_path / "k.dat").exists()
    np.testing.assert_array_equal(np.asarray(pickle.loads(blob)), np.arange(4.0))


def test_a_store_that_purges_on_gc_releases_its_working_files_at_the_commit_too(tmp_path: Path) -> None:
    config = LazyDiskCacheConfig(cache_path=tmp_path, enable_caching=True)
    store = DiskBackedStore[DiskBackedNDArray](config=config, factory=DiskBackedNDArray)
    store.add_data_to_store("a", np.arange(4.0))
    entry = store["a"]

    store.offload(pickle_container=True)
    del entry
    gc.collect()

    assert artefacts(tmp_path) == ["a.meta.json", "a.npy"]


def test_an_offloaded_entry_keeps_its_committed_value_when_the_key_is_committed_again(tmp_path: Path) -> None:
    store = durable_store(tmp_path)
    store.add_data_to_store("k", np.arange(4.0))
    first = store["k"]
    first.offload()
    store.offload(pickle_container=True)

    store["k"] = DiskBackedNDArray(np.full(4, 9.0), enable_caching=True, purge_disk_on_gc=False)
    store.offload(pickle_container=True)

    np.testing.assert_array_equal(np.load(tmp_path / "k.npy"), np.full(4, 9.0))
    np.testing.assert_array_equal(np.asarray(first), np.arange(4.0))


def test_a_reloaded_entry_committed_after_its_name_was_replaced_writes_its_own_data(tmp_path: Path) -> None:
    store = durable_store(tmp_path)
    store.add_data_to_store("k", np.arange(2**18, dtype=np.float64))
    store.offload(pickle_container=True)
    entry = durable_store(tmp_path)["k"]
    other = durable_store(tmp_path)
    other["k"] = DiskBackedNDArray(np.zeros(2**18), enable_caching=True, purge_disk_on_gc=False)
    other.offload(pickle_container=True)

    store["k"] = entry
    store.offload(pickle_container=True)

    np.testing.assert_array_equal(np.load(tmp_path / "k.npy"), np.arange(2**18, dtype=np.float64))


def test_a_dat_another_writer_renamed_over_the_working_file_is_left_alone(tmp_path: Path) -> None:
    store = durable_store(tmp_path)
    store.add_data_to_store("k", np.arange(4.0))
    (tmp_path / "elsewhere.dat").write_bytes(b"another writer's file")
    os.replace(tmp_path / "elsewhere.dat", tmp_path / "k.dat")

    store.offload(pickle_container=True)

    assert (tmp_path / "k.dat").read_bytes() == b"another writer's file"
    np.testing.assert_array_equal(np.load(tmp_path / "k.npy"), np.arange(4.0))


def test_a_working_dat_zero_filled_by_load_w_plus_is_released_at_the_commit(tmp_path: Path) -> None:
    store = durable_store(tmp_path)
    store.add_data_to_store("k", np.arange(4.0))
    entry = store["k"]
    entry.offload()
    entry.load("w+")
    entry.data[:] = 3.0

    store.offload(pickle_container=True)

    assert not (tmp_path / "k.dat").exists(), "the .dat load('w+') wrote is the entry's own working file"
    np.testing.assert_array_equal(np.load(tmp_path / "k.npy"), np.full(4, 3.0))
    np.testing.assert_array_equal(np.asarray(entry), np.full(4, 3.0))


def test_an_entry_committed_under_another_key_keeps_its_working_dat(tmp_path: Path) -> None:
    store = durable_store(tmp_path)
    store.add_data_to_store("k", np.arange(4.0))
    entry = store["k"]
    entry.offload()
    entry.load()
    (tmp_path / "k.npy").write_bytes(b"not this entry's payload")

    store["other"] = entry
    store.offload("other", pickle_container=True)

    np.testing.assert_array_equal(np.fromfile(tmp_path / "k.dat"), np.arange(4.0))
    np.testing.assert_array_equal(np.asarray(entry), np.arange(4.0))
    np.testing.assert_array_equal(np.load(tmp_path / "other.npy"), np.arange(4.0))
