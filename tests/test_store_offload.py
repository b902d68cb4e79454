"""DiskBackedStore.offload: key validation first, group commit, partial failure, offloaded sources."""

import errno
import json
import logging
import os
import pickle
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from lazy_disk_cache import _rust
from lazy_disk_cache.disk_backed_ndarray import DiskBackedNDArray
from lazy_disk_cache.disk_backed_store import DiskBackedStore
from lazy_disk_cache.errors import LazyDiskCacheWarning, StoreKeyError
from lazy_disk_cache.paths import CLAUSE_SEPARATOR
from listing import artefacts
from stored import make_store

LOGGER = "lazy_disk_cache.disk_backed_store"


pytestmark = pytest.mark.usefixtures("clean_faults")


def cached_store(cache_dir: Path, *keys: str, **settings: Any) -> DiskBackedStore[DiskBackedNDArray]:
    store = make_store(cache_dir, enable_caching=True, **settings)
    for index, key in enumerate(keys):
        store.add_data_to_store(key, np.arange(4) + 10 * index)
    return store


def pair_names(directory: Path) -> list[str]:
    return [name for name in artefacts(directory) if not name.endswith(".dat")]


# -- selection and validation ------------------------------------------------------------------


def test_offload_without_keys_offloads_every_cached_entry(tmp_path: Path) -> None:
    store = cached_store(tmp_path, "a", "b")

    store.offload()

    assert store["a"].offloaded and store["b"].offloaded
    assert pair_names(tmp_path) == []


@pytest.mark.parametrize(
    "keys",
    ["a", ["a"], ("a",), {"a"}, frozenset({"a"}), {"a": 1}, {"a": 1}.keys(), iter(["a"]), (k for k in "a")],
    ids=["str", "list", "tuple", "set", "frozenset", "dict", "dict-keys", "iterator", "generator"],
)
def test_offload_accepts_a_key_or_any_iterable_of_keys(tmp_path: Path, keys: Any) -> None:
    store = cached_store(tmp_path, "a", "b")

    store.offload(keys)

    assert (store["a"].offloaded, store["b"].offloaded) == (True, False)


def test_offload_consumes_a_generator_over_the_store_before_any_effect(tmp_path: Path) -> None:
    store = cached_store(tmp_path, "a", "b", "c")

    store.offload((key for key in store if key != "a"), pickle_container=True)

    assert store._store["a"] is not None
    assert (store._store["b"], store._store["c"]) == (None, None)
    assert pair_names(tmp_path) == ["b.meta.json", "b.npy", "c.meta.json", "c.npy"]


def test_offload_checks_every_key_of_a_generator_before_touching_any(tmp_path: Path) -> None:
    store = cached_store(tmp_path, "a")
    produced: list[str] = []

    def keys() -> Iterator[str]:
        for key in ("a", "missing"):
            produced.append(key)
            yield key

    with pytest.raises(KeyError):
        store.offload(keys(), pickle_container=True)

    assert produced == ["a", "missing"]
    assert store._store["a"] is not None and not store["a"].offloaded
    assert pair_names(tmp_path) == []


@pytest.mark.parametrize("element", [1, None, b"a", Path("a")], ids=repr)
def test_offload_refuses_a_non_str_element_with_the_non_str_key_error(tmp_path: Path, element: object) -> None:
    store = cached_store(tmp_path, "a")

    with pytest.raises(StoreKeyError, match="a store key must be a str") as caught:
        store.offload({"a", element})  # type: ignore[arg-type]

    assert isinstance(caught.value, TypeError)
    assert not store["a"].offloaded


@pytest.mark.parametrize("keys", [5, 1.5, Path("a"), object()], ids=lambda keys: type(keys).__name__)
def test_offload_refuses_keys_that_are_neither_a_str_nor_iterable_saying_what_keys_may_be(
    tmp_path: Path, keys: object
) -> None:
    store = cached_store(tmp_path, "a")

    with pytest.raises(TypeError) as caught:
        store.offload(keys)  # type: ignore[arg-type]

    assert not isinstance(caught.value, StoreKeyError)
    assert str(caught.value) == (
        "offload() keys must be None, a str key or an iterable of str keys (a list, tuple, set, dict view "
        f"or generator); got {type(keys).__name__}"
    )
    assert not store["a"].offloaded


@pytest.mark.parametrize("keys", [b"a", bytearray(b"a")], ids=repr)
def test_offload_takes_bytes_as_one_non_str_key_not_as_an_iterable(tmp_path: Path, keys: object) -> None:
    store = cached_store(tmp_path, "a")

    with pytest.raises(StoreKeyError, match=r"but got (bytes|bytearray)\. Convert it explicitly"):
        store.offload(keys)  # type: ignore[arg-type]


def test_offload_validates_every_key_lexically_before_touching_any(tmp_path: Path) -> None:
    store = cached_store(tmp_path, "a")

    with pytest.raises(StoreKeyError, match=CLAUSE_SEPARATOR):
        store.offload(["a", "x/y"], pickle_container=True)

    assert store._store["a"] is not None and not store["a"].offloaded
    assert pair_names(tmp_path) == []


def test_offload_checks_tracking_of_every_key_before_touching_any(tmp_path: Path) -> None:
    store = cached_store(tmp_path, "a")

    with pytest.raises(KeyError) as caught:
        store.offload(["a", "missing", "also-missing"])

    assert caught.value.args == ("missing",)
    assert not store["a"].offloaded


def test_lexical_errors_win_over_tracking_errors(tmp_path: Path) -> None:
    store = cached_store(tmp_path, "a")

    with pytest.raises(StoreKeyError):
        store.offload(["missing", ".."])


def test_offload_skips_keys_not_in_memory(tmp_path: Path) -> None:
    store = cached_store(tmp_path, "a")
    store._store["away"] = None

    store.offload(["away", "a"], pickle_container=True)

    assert store._store == {"away": None, "a": None}
    assert pair_names(tmp_path) == ["a.meta.json", "a.npy"]


@pytest.mark.parametrize("pickle_container", [False, True])
def test_offload_skips_entries_with_caching_off_with_a_debug_log(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, pickle_container: bool
) -> None:
    store = make_store(tmp_path)
    store.add_data_to_store("ram", np.arange(3))

    with caplog.at_level(logging.DEBUG, logger=LOGGER), warnings.catch_warnings():
        warnings.simplefilter("ignore", LazyDiskCacheWarning)
        store.offload("ram", pickle_container=pickle_container)

    assert store._store["ram"] is not None and not store["ram"].offloaded
    assert [(r.levelno, r.msg, r.args) for r in caplog.records if r.name == LOGGER] == [
        (logging.DEBUG, "Skipping offload for %s because caching is disabled.", ("ram",))
    ]
    assert os.listdir(tmp_path) == []


def test_writing_pairs_warns_about_each_entry_it_leaves_unwritten_because_caching_is_off(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    store.add_data_to_store("ram", np.arange(3))
    store.add_data_to_store("disk", np.arange(3), enable_caching_override=True)

    with pytest.warns(LazyDiskCacheWarning) as caught:
        store.offload(pickle_container=True)

    assert [str(warning.message) for warning in caught] == [
        "Key 'ram' was not written to the cache directory: its entry has caching disabled, so "
        "offload(pickle_container=True) keeps it in memory only and a store reopened on "
        f"{str(tmp_path)!r} will not find it."
    ]
    assert artefacts(tmp_path) == ["disk.meta.json", "disk.npy"]


def test_plain_offload_of_an_entry_with_caching_off_does_not_warn(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    store.add_data_to_store("ram", np.arange(3))

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        store.offload("ram")


def test_pickling_a_store_carries_entries_with_caching_off_inline_without_a_warning(tmp_path: Path) -> None:
    store = make_store(tmp_path, enable_caching=True)
    store.add_data_to_store("ram", np.arange(3), enable_caching_override=False)

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        copy = pickle.loads(pickle.dumps(store))

    np.testing.assert_array_equal(np.asarray(copy["ram"]), np.arange(3))


def test_offload_of_a_duplicated_key_writes_it_once(tmp_path: Path) -> None:
    store = cached_store(tmp_path, "a")

    store.offload(["a", "a"], pickle_container=True)

    assert store._store == {"a": None}


# -- writing pairs -----------------------------------------------------------------------------


def test_pickle_container_writes_the_pair_and_drops_the_entry(tmp_path: Path) -> None:
    store = cached_store(tmp_path, "a")

    store.offload("a", pickle_container=True)

    assert store._store == {"a": None}
    np.testing.assert_array_equal(np.load(tmp_path / "a.npy"), np.arange(4))
    np.testing.assert_array_equal(np.asarray(store["a"]), np.arange(4))


def test_pickle_container_writes_the_current_values_of_a_mapped_entry(tmp_path: Path) -> None:
    store = cached_store(tmp_path, "a")
    store["a"].data[0] = 99

    store.offload("a", pickle_container=True)

    assert np.load(tmp_path / "a.npy")[0] == 99


def test_an_offloaded_entry_is_copied_from_its_dat_without_user_space(tmp_path: Path) -> None:
    store = cached_store(tmp_path, "a")
    store.offload("a")
    _rust._clear_faults()

    store.offload("a", pickle_container=True)

    counts = _rust._op_counts()
    assert counts["copy"] >= 1
    assert counts["write"] == 2
    np.testing.assert_array_equal(np.load(tmp_path / "a.npy"), np.arange(4))


def test_an_offloaded_entry_whose_dat_lies_elsewhere_is_written_from_a_mapping(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    store = make_store(tmp_path / "store")
    outside = DiskBackedNDArray(np.arange(5.0), cache_path=elsewhere / "e", enable_caching=True)
    outside.offload()
    store["a"] = outside

    store.offload("a", pickle_container=True)

    np.testing.assert_array_equal(np.load(tmp_path / "store" / "a.npy"), np.arange(5.0))
    assert (elsewhere / "e.dat").is_file()


def test_an_automatic_offloading_store_writes_its_offloaded_entries(tmp_path: Path) -> None:
    store = cached_store(tmp_path, "a", automatic_offloading=True)
    assert store["a"].offloaded

    store.offload(pickle_container=True)

    np.testing.assert_array_equal(np.load(tmp_path / "a.npy"), np.arange(4))


@pytest.fixture
def memory_backed_dir(tmp_path: Path) -> Iterator[Path]:
    """A directory on the shared-memory tmpfs when there is one (fsync is free there), else ``tmp_path``.

    The counts asserted on do not depend on the filesystem; only the run time does.
    """
    shm = Path("/dev/shm")
    if not (shm.is_dir() and os.access(shm, os.W_OK)):
        yield tmp_path
        return
    directory = Path(tempfile.mkdtemp(dir=shm))
    try:
        yield directory
    finally:
        shutil.rmtree(directory)


def test_offload_of_many_entries_performs_exactly_one_directory_fsync(memory_backed_dir: Path) -> None:
    keys = [f"k{index:04d}" for index in range(1000)]
    store = make_store(memory_backed_dir, enable_caching=True)
    for index, key in enumerate(keys):
        store.add_data_to_store(key, np.full(2, index, dtype=np.int32))
    _rust._clear_faults()

    store.offload(pickle_container=True)

    counts = _rust._op_counts()
    assert counts["dir_fsync"] == 1
    assert counts["fsync"] == 2 * len(keys)
    assert all(value is None for value in store.values())
    assert int(np.load(memory_backed_dir / "k0999.npy")[0]) == 999


def test_a_failure_part_way_keeps_earlier_keys_processed_and_later_ones_untouched(tmp_path: Path) -> None:
    store = cached_store(tmp_path, "a", "b", "c", "d")
    store.offload("c", pickle_container=True)
    old_c = (tmp_path / "c.npy").read_bytes()
    store["c"].data[:] = -1
    # Each key creates two temps (.npy.tmp, .meta.json.tmp): the fifth create is key c's payload.
    _rust._inject_fault("create", 5, errno.ENOSPC)

    with pytest.raises(OSError) as caught:
        store.offload(["a", "b", "c", "d"], pickle_container=True)

    assert caught.value.errno == errno.ENOSPC
    assert caught.value.filename is not None and "c.npy.tmp" in caught.value.filename
    assert (store._store["a"], store._store["b"]) == (None, None)
    assert store._store["c"] is not None and store._store["d"] is not None
    assert (tmp_path / "c.npy").read_bytes() == old_c
    assert not (tmp_path / "d.npy").exists()
    assert [name for name in os.listdir(tmp_path) if name.endswith(".tmp")] == []
    np.testing.assert_array_equal(np.load(tmp_path / "b.npy"), np.arange(4) + 10)


def test_a_failed_offload_can_be_retried(tmp_path: Path) -> None:
    store = cached_store(tmp_path, "a", "b")
    _rust._inject_fault("fsync", 3, errno.EIO)
    with pytest.raises(OSError):
        store.offload(pickle_container=True)

    store.offload(pickle_container=True)

    assert store._store == {"a": None, "b": None}
    np.testing.assert_array_equal(np.load(tmp_path / "b.npy"), np.arange(4) + 10)


def test_a_failing_rename_leaves_the_failing_key_tracked(tmp_path: Path) -> None:
    store = cached_store(tmp_path, "a")
    _rust._inject_fault("rename", 1, errno.EIO)

    with pytest.raises(OSError) as caught:
        store.offload(pickle_container=True)

    assert caught.value.errno == errno.EIO
    assert store._store["a"] is not None
    np.testing.assert_array_equal(np.asarray(store["a"]), np.arange(4))


def test_a_single_pair_write_failure_removes_both_temps(tmp_path: Path) -> None:
    store = cached_store(tmp_path, "a")
    _rust._inject_fault("write", 2, errno.EIO)

    with pytest.raises(OSError):
        store._store_entry("a", store["a"])

    assert pair_names(tmp_path) == []


def test_the_sidecar_of_an_offloaded_write_carries_the_entry_flags(tmp_path: Path) -> None:
    store = cached_store(tmp_path, "a", purge_disk_on_gc=False)

    store.offload(pickle_container=True)

    meta = json.loads((tmp_path / "a.meta.json").read_text())
    assert (meta["purge_disk_on_gc"], meta["enable_caching"]) == (False, True)
