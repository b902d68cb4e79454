"""DiskBackedStore.rename: a key's value moves to a new portable key, crash-safely.

The new pair is committed (temps, fsync, rename, directory fsync) before any name of the old key is
removed, so an interruption leaves the old value, the new one, or both, never neither. Every refusal
happens before anything changes.
"""

import errno
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from lazy_disk_cache import _rust
from lazy_disk_cache import disk_backed_store as dbs
from lazy_disk_cache.disk_backed_ndarray import DiskBackedNDArray
from lazy_disk_cache.disk_backed_store import DiskBackedStore
from lazy_disk_cache.errors import LazyDiskCacheWarning, StoreKeyError, StorePurgeRefusedError
from listing import artefacts
from stored import make_store

Store = DiskBackedStore[DiskBackedNDArray]


def open_quietly(cache_dir: Path, **settings: Any) -> Store:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LazyDiskCacheWarning)
        return make_store(cache_dir, **settings)


def stored(cache_dir: Path, key: str, array: np.ndarray[Any, Any]) -> None:
    """Leave ``key``'s pair in ``cache_dir`` (a legacy key through a rename, as an older store would)."""
    writer = make_store(cache_dir, enable_caching=True, purge_disk_on_gc=False)
    writer.add_data_to_store("portable", array)
    writer.offload("portable", pickle_container=True)  # the writer's working .dat goes with it
    if key != "portable":
        os.rename(cache_dir / "portable.npy", cache_dir / (key + ".npy"))
        os.rename(cache_dir / "portable.meta.json", cache_dir / (key + ".meta.json"))


def files(cache_dir: Path) -> list[str]:
    return artefacts(cache_dir)


def test_rename_moves_a_legacy_key_to_a_portable_one(tmp_path: Path) -> None:
    stored(tmp_path, "tile:0_0", np.arange(6).reshape(2, 3))
    store = open_quietly(tmp_path)

    store.rename("tile:0_0", "tile-0_0")

    assert store.keys() == ["tile-0_0"]
    assert files(tmp_path) == ["tile-0_0.meta.json", "tile-0_0.npy"]
    np.testing.assert_array_equal(np.asarray(store["tile-0_0"]), np.arange(6).reshape(2, 3))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        reopened = make_store(tmp_path)
    assert reopened.keys() == ["tile-0_0"]


def test_rename_keeps_the_sidecar_flags(tmp_path: Path) -> None:
    stored(tmp_path, "CON", np.arange(3))
    store = open_quietly(tmp_path)

    store.rename("CON", "con-port")

    entry = store["con-port"]
    assert (entry.cache_enabled, entry.purge_disk_on_gc, entry.automatic_offloading) == (True, False, False)


def test_rename_carries_unsaved_writes_of_a_live_entry(tmp_path: Path) -> None:
    store = make_store(tmp_path, enable_caching=True)
    store.add_data_to_store("a", np.zeros(4))
    store["a"].data[...] = 5

    store.rename("a", "b")

    assert files(tmp_path) == ["b.meta.json", "b.npy"]
    np.testing.assert_array_equal(np.asarray(open_quietly(tmp_path)["b"]), np.full(4, 5.0))


def test_rename_of_an_offloaded_entry_moves_its_dat_into_the_new_pair(tmp_path: Path) -> None:
    store = make_store(tmp_path, enable_caching=True)
    store.add_data_to_store("a", np.arange(5))
    store.offload("a")
    assert files(tmp_path) == ["a.dat"]

    store.rename("a", "b")

    assert files(tmp_path) == ["b.meta.json", "b.npy"]
    np.testing.assert_array_equal(np.asarray(store["b"]), np.arange(5))


@pytest.mark.parametrize("on_disk", [True, False], ids=["stored", "tracked"])
def test_rename_refuses_an_existing_destination_and_changes_nothing(tmp_path: Path, on_disk: bool) -> None:
    stored(tmp_path, "a", np.arange(3))
    store = open_quietly(tmp_path, enable_caching=True)
    if on_disk:
        stored(tmp_path, "b", np.arange(4))
    else:
        store.add_data_to_store("b", np.arange(4))
    before = {name: (tmp_path / name).read_bytes() for name in files(tmp_path)}

    with pytest.raises(KeyError, match=r"Key b already exists in store\."):
        store.rename("a", "b")

    assert {name: (tmp_path / name).read_bytes() for name in files(tmp_path)} == before
    np.testing.assert_array_equal(np.asarray(open_quietly(tmp_path)["a"]), np.arange(3))


@pytest.mark.parametrize("new", ["tile:1", "CON", "x.", "a/b", "..", 5], ids=repr)
def test_rename_refuses_a_destination_that_is_not_a_portable_key(tmp_path: Path, new: Any) -> None:
    stored(tmp_path, "a", np.arange(3))
    store = open_quietly(tmp_path)

    with pytest.raises(StoreKeyError):
        store.rename("a", new)

    assert files(tmp_path) == ["a.meta.json", "a.npy"]
    assert store.keys() == ["a"]


def test_rename_of_a_missing_key_raises_key_error(tmp_path: Path) -> None:
    store = make_store(tmp_path)

    with pytest.raises(KeyError):
        store.rename("missing", "b")

    assert files(tmp_path) == []


def test_rename_to_the_same_key_is_refused(tmp_path: Path) -> None:
    stored(tmp_path, "a", np.arange(3))
    store = open_quietly(tmp_path)

    with pytest.raises(ValueError, match="two different keys"):
        store.rename("a", "a")

    assert files(tmp_path) == ["a.meta.json", "a.npy"]


def test_rename_from_another_process_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    stored(tmp_path, "a", np.arange(3))
    store = open_quietly(tmp_path)
    store._owner_pid = os.getpid() + 1

    with pytest.raises(StorePurgeRefusedError):
        store.rename("a", "b")

    assert files(tmp_path) == ["a.meta.json", "a.npy"]


@pytest.mark.usefixtures("clean_faults")
@pytest.mark.parametrize("op", ["create", "write", "fsync", "rename"])
def test_a_failure_writing_the_new_pair_keeps_the_old_key_whole(tmp_path: Path, op: str) -> None:
    stored(tmp_path, "tile:0_0", np.arange(3))
    store = open_quietly(tmp_path)
    _rust._inject_fault(op, 1, errno.EIO)

    with pytest.raises(OSError) as raised:
        store.rename("tile:0_0", "tile-0_0")

    assert raised.value.errno == errno.EIO
    assert files(tmp_path) == ["tile:0_0.meta.json", "tile:0_0.npy"]
    assert store.keys() == ["tile:0_0"]
    np.testing.assert_array_equal(np.asarray(store["tile:0_0"]), np.arange(3))


def test_an_interruption_after_the_new_pair_is_committed_leaves_both_keys_readable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stored(tmp_path, "tile:0_0", np.arange(3))
    store = open_quietly(tmp_path)

    def interrupted(paths: object) -> list[tuple[Path, OSError]]:
        raise KeyboardInterrupt

    monkeypatch.setattr(dbs, "unlink_in_order", interrupted)

    with pytest.raises(KeyboardInterrupt):
        store.rename("tile:0_0", "tile-0_0")

    reopened = open_quietly(tmp_path)
    assert reopened.keys() == ["tile-0_0", "tile:0_0"]
    for key in reopened.keys():
        np.testing.assert_array_equal(np.asarray(reopened[key]), np.arange(3))
