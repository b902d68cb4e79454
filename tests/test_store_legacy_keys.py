"""Legacy keys: names a store written before the key rule may hold, legal on POSIX but not portable.

A directory holding ``tile:0_0.npy``, ``CON.npy`` or ``x..npy`` (with their sidecars) loads unchanged:
the keys are listed, readable and purgeable, each adopted with one warning. Creating a new such key stays
refused.
"""

import logging
import os
import pickle
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from lazy_disk_cache.disk_backed_ndarray import DiskBackedNDArray
from lazy_disk_cache.disk_backed_store import DiskBackedStore
from lazy_disk_cache.errors import LazyDiskCacheWarning, StoreKeyError
from lazy_disk_cache.paths import CLAUSE_ABSOLUTE, CLAUSE_LENGTH, CLAUSE_RESERVED, CLAUSE_TRAILING
from listing import artefacts
from stored import make_store

Store = DiskBackedStore[DiskBackedNDArray]

LEGACY = {
    "tile:0_0": CLAUSE_ABSOLUTE,
    "2024-01-01T10:00": CLAUSE_ABSOLUTE,
    "CON": CLAUSE_RESERVED,
    "nul.las": CLAUSE_RESERVED,
    "x.": CLAUSE_TRAILING,
    "trailing ": CLAUSE_TRAILING,
    "a" * 245: CLAUSE_LENGTH,
}


def open_quietly(cache_dir: Path, **settings: Any) -> Store:
    """Open a store on ``cache_dir``, ignoring the adoption warnings (other tests pin them)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LazyDiskCacheWarning)
        return make_store(cache_dir, **settings)


def plant_pair(cache_dir: Path, key: str, array: np.ndarray[Any, Any], **flags: bool) -> None:
    """Write ``<key>.npy`` + ``<key>.meta.json`` as a store written before the key rule left them."""
    staging = cache_dir.parent / "staging"
    writer = make_store(staging, enable_caching=True, **flags)
    writer.add_data_to_store("portable", array)
    writer.offload("portable", pickle_container=True)
    cache_dir.mkdir(exist_ok=True)
    os.rename(staging / "portable.npy", cache_dir / (key + ".npy"))
    os.rename(staging / "portable.meta.json", cache_dir / (key + ".meta.json"))


@pytest.mark.parametrize("key", LEGACY, ids=lambda key: ascii(key)[:24])
def test_a_legacy_key_is_listed_and_reads_its_value(tmp_path: Path, key: str) -> None:
    plant_pair(tmp_path / "store", key, np.arange(6).reshape(2, 3))

    store = open_quietly(tmp_path / "store")

    assert store.keys() == [key]
    assert key in store
    np.testing.assert_array_equal(np.asarray(store[key]), np.arange(6).reshape(2, 3))
    np.testing.assert_array_equal(np.asarray(store.get(key)), np.arange(6).reshape(2, 3))


def test_each_legacy_key_is_adopted_with_one_log_record_and_one_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    directory = tmp_path / "store"
    for key in ("tile:0_0", "CON"):
        plant_pair(directory, key, np.arange(3))

    with caplog.at_level(logging.DEBUG, logger="lazy_disk_cache"), pytest.warns(LazyDiskCacheWarning) as caught:
        store = make_store(directory)

    assert store.keys() == ["CON", "tile:0_0"]
    assert [(record.levelno, record.args) for record in caplog.records] == [
        (logging.WARNING, ("CON.npy", str(directory), "CON", CLAUSE_RESERVED)),
        (logging.WARNING, ("tile:0_0.npy", str(directory), "tile:0_0", CLAUSE_ABSOLUTE)),
    ]
    assert [str(warning.message) for warning in caught] == [
        f"Adopting 'CON.npy' in cache directory {str(directory)!r} as legacy key 'CON': the key "
        f"{CLAUSE_RESERVED}, so it is not portable. It can be read and purged but no new key like it can be "
        "created; store.rename('CON', new_key) moves it to a portable key.",
        f"Adopting 'tile:0_0.npy' in cache directory {str(directory)!r} as legacy key 'tile:0_0': the key "
        f"{CLAUSE_ABSOLUTE}, so it is not portable. It can be read and purged but no new key like it can be "
        "created; store.rename('tile:0_0', new_key) moves it to a portable key.",
    ]


def test_a_legacy_key_is_purged_with_all_its_files(tmp_path: Path) -> None:
    directory = tmp_path / "store"
    plant_pair(directory, "tile:0_0", np.arange(3))
    store = open_quietly(directory)
    store["tile:0_0"].offload()

    store.purge("tile:0_0")

    assert store.keys() == []
    assert artefacts(directory) == []


@pytest.mark.parametrize("key", ["tile:0_0", "CON", "x."], ids=ascii)
def test_creating_a_new_legacy_key_stays_refused(tmp_path: Path, key: str) -> None:
    store = make_store(tmp_path, enable_caching=True)

    with pytest.raises(StoreKeyError):
        store.add_data_to_store(key, np.arange(3))
    with pytest.raises(StoreKeyError):
        store[key] = DiskBackedNDArray(np.arange(3))
    with pytest.raises(StoreKeyError):
        store.offload([key], pickle_container=True)

    assert artefacts(tmp_path) == []


def test_a_legacy_entry_is_written_back_under_its_own_name(tmp_path: Path) -> None:
    directory = tmp_path / "store"
    plant_pair(directory, "tile:0_0", np.arange(4), purge_disk_on_gc=False)
    store = open_quietly(directory)
    store["tile:0_0"].data[...] = 7

    store.offload("tile:0_0", pickle_container=True)
    reopened = open_quietly(directory)

    assert artefacts(directory) == ["tile:0_0.meta.json", "tile:0_0.npy"]
    np.testing.assert_array_equal(np.asarray(reopened["tile:0_0"]), np.full(4, 7))


def test_a_legacy_entry_offloads_to_its_own_dat(tmp_path: Path) -> None:
    directory = tmp_path / "store"
    plant_pair(directory, "CON", np.arange(4))
    store = open_quietly(directory)
    entry = store["CON"]

    store.offload("CON")

    assert entry.offloaded
    assert entry.cache_path == directory / "CON.dat"
    np.testing.assert_array_equal(np.asarray(entry), np.arange(4))


def test_a_store_holding_legacy_keys_survives_a_pickle_round_trip(tmp_path: Path) -> None:
    directory = tmp_path / "store"
    plant_pair(directory, "tile:0_0", np.arange(3))
    store = open_quietly(directory, enable_caching=True)
    store["tile:0_0"]

    copy: Store = pickle.loads(pickle.dumps(store))

    assert copy.keys() == ["tile:0_0"]
    np.testing.assert_array_equal(np.asarray(copy["tile:0_0"]), np.arange(3))


def test_rescan_logs_exactly_one_record_per_skipped_or_legacy_file_naming_it_and_the_directory(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    directory = tmp_path / "store"
    plant_pair(directory, "CON", np.arange(3))
    plant_pair(directory, "foo.", np.arange(3))
    plant_pair(directory, "ok", np.arange(3))
    for name in ("..npy", "a\\b.npy", "k\x01.npy", "x" * 248 + ".npy"):
        (directory / name).write_bytes(b"not an array")

    with caplog.at_level(logging.DEBUG, logger="lazy_disk_cache"), pytest.warns(LazyDiskCacheWarning) as caught:
        store = make_store(directory)

    arguments = [tuple(record.args or ()) for record in caplog.records if isinstance(record.args, tuple)]
    assert store.keys() == ["CON", "foo.", "ok"]
    assert sorted(str(args[0]) for args in arguments) == sorted(
        ["CON.npy", "foo..npy", "..npy", "a\\b.npy", "k\x01.npy", "x" * 248 + ".npy"]
    )
    assert len(caplog.records) == len(arguments) == len(caught)
    assert all(args[1] == str(directory) for args in arguments)
