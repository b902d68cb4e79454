"""Store keys on every route: illegal keys are refused before any I/O, legal keys work end to end."""

import hashlib
import os
import pickle
from collections.abc import Callable, Hashable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from hostile_keys import HOSTILE_KEYS, LEGACY_KEYS, LEGAL_KEYS, NOT_A_STR, HostileKey, key_id
from lazy_disk_cache.disk_backed_ndarray import DiskBackedNDArray
from lazy_disk_cache.disk_backed_store import DiskBackedStore
from lazy_disk_cache.errors import StoreKeyError
from listing import artefacts
from stored import make_store

Store = DiskBackedStore[DiskBackedNDArray]
Snapshot = dict[str, tuple[Any, ...]]


def snapshot(root: Path) -> Snapshot:
    """Every path under ``root`` with its type, size, mtime and (for files) content digest."""
    tree: Snapshot = {}
    for directory, subdirectories, files in os.walk(root):
        for name in [*subdirectories, *files]:
            path = Path(directory) / name
            info = path.lstat()
            digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() and not path.is_symlink() else ""
            tree[str(path.relative_to(root))] = (info.st_mode, info.st_size, info.st_mtime_ns, digest)
    return tree


def _restore_state(store: Store, key: object) -> None:
    state = dict(store.__dict__)
    state["_store"] = {key: None}
    fresh: Store = DiskBackedStore.__new__(DiskBackedStore)
    fresh.__setstate__(state)


def _reading_routes(key: Any) -> dict[str, Callable[[Store], object]]:
    """The store routes that read, or remove, what is already on disk under ``key``."""
    routes: dict[str, Callable[[Store], object]] = {
        "getitem": lambda store: store[key],
        "purge": lambda store: store.purge(key),
        "pop-without-default": lambda store: store.pop(key),
        "load_entry": lambda store: store._load_entry(key),
    }
    if isinstance(key, Hashable):
        routes["setstate"] = lambda store: _restore_state(store, key)
    return routes


def _creating_routes(key: Any) -> dict[str, Callable[[Store], object]]:
    """The store routes that would create a new key, or build its names through the public builders."""
    routes: dict[str, Callable[[Store], object]] = {
        "setitem": lambda store: store.__setitem__(key, DiskBackedNDArray(np.arange(2))),
        "add_data_to_store": lambda store: store.add_data_to_store(key, np.arange(2)),
        "offload-list": lambda store: store.offload([key], pickle_container=True),
        "offload-list-after-a-legal-key": lambda store: store.offload(["live", key]),
        "store_entry": lambda store: store._store_entry(key, store["live"]),
        "get_npy_path": lambda store: store._get_npy_path(key),
        "get_meta_path": lambda store: store._get_meta_path(key),
        "get_legacy_pickle_path": lambda store: store._get_legacy_pickle_path(key),
    }
    if isinstance(key, str):
        routes["offload-str"] = lambda store: store.offload(key, pickle_container=True)
    return routes


def _raising_routes(hostile: HostileKey) -> dict[str, Callable[[Store], object]]:
    """Every store route that must raise StoreKeyError for ``hostile``: a legacy key may still be read."""
    if hostile.legacy:
        return _creating_routes(hostile.key)
    return _creating_routes(hostile.key) | _reading_routes(hostile.key)


@pytest.fixture(scope="module")
def populated(tmp_path_factory: pytest.TempPathFactory) -> Store:
    """One store shared by the refusal tests: each of them checks it leaves the store unchanged."""
    store = make_store(tmp_path_factory.mktemp("hostile") / "parent" / "store", enable_caching=True)
    store.add_data_to_store("live", np.arange(4))
    store.add_data_to_store("written", np.arange(3))
    store.offload("written", pickle_container=True)
    return store


def test_the_hostile_table_is_large_enough() -> None:
    assert len(HOSTILE_KEYS) >= 60


@pytest.mark.parametrize("hostile", HOSTILE_KEYS, ids=[hostile.label for hostile in HOSTILE_KEYS])
def test_an_illegal_key_is_refused_on_every_route_before_any_io(populated: Store, hostile: HostileKey) -> None:
    root = populated.cache_dir.parent.parent
    before = snapshot(root)
    tracked = dict(populated._store)
    registry = {key: list(refs) for key, refs in populated._entry_registry.items()}

    for route, call in _raising_routes(hostile).items():
        with pytest.raises(StoreKeyError) as caught:
            call(populated)
        assert hostile.expected in str(caught.value), route
        if hostile.expected == NOT_A_STR:
            assert isinstance(caught.value, TypeError), route

    assert snapshot(root) == before
    assert populated._store == tracked
    assert populated._entry_registry == registry
    assert not populated["live"].offloaded


@pytest.mark.parametrize("hostile", LEGACY_KEYS, ids=[hostile.label for hostile in LEGACY_KEYS])
def test_a_legacy_key_not_on_disk_is_a_miss_on_every_reading_route(populated: Store, hostile: HostileKey) -> None:
    root = populated.cache_dir.parent.parent
    before = snapshot(root)
    tracked = dict(populated._store)
    routes = _reading_routes(hostile.key)
    restore = routes.pop("setstate")

    for route, call in routes.items():
        with pytest.raises(KeyError) as caught:
            call(populated)
        assert not isinstance(caught.value, StoreKeyError), route
    restore(populated)

    assert snapshot(root) == before
    assert populated._store == tracked


@pytest.mark.parametrize("hostile", HOSTILE_KEYS, ids=[hostile.label for hostile in HOSTILE_KEYS])
def test_get_pop_and_contains_treat_an_illegal_key_as_absent(populated: Store, hostile: HostileKey) -> None:
    root = populated.cache_dir.parent.parent
    before = snapshot(root)
    marker = object()

    key: Any = hostile.key

    assert populated.get(key, marker) is marker
    assert populated.pop(key, marker) is marker
    assert (hostile.key in populated) is False

    assert snapshot(root) == before


def test_setstate_with_an_illegal_key_restores_nothing(populated: Store) -> None:
    fresh: Store = DiskBackedStore.__new__(DiskBackedStore)
    state = dict(populated.__dict__) | {"_store": {"ok": None, "../x": None}}

    with pytest.raises(StoreKeyError):
        fresh.__setstate__(state)

    assert fresh.__dict__ == {}


def test_setstate_refuses_a_cache_dir_that_is_not_a_path(populated: Store) -> None:
    fresh: Store = DiskBackedStore.__new__(DiskBackedStore)
    state = dict(populated.__dict__) | {"_cache_dir": str(populated.cache_dir)}

    with pytest.raises(StoreKeyError, match=r"expected a pathlib\.Path"):
        fresh.__setstate__(state)

    assert fresh.__dict__ == {}


def test_unpickling_a_tampered_state_with_a_traversal_key_raises(tmp_path: Path) -> None:
    store = make_store(tmp_path, enable_caching=True)
    store.add_data_to_store("written", np.arange(3))
    blob = pickle.dumps(store)
    tampered = blob.replace(b"\x8c\x07written", b"\x8c\x07../xxxx")

    with pytest.raises(StoreKeyError):
        pickle.loads(tampered)


@pytest.mark.parametrize("key", LEGAL_KEYS, ids=[key_id(key) for key in LEGAL_KEYS])
def test_a_legal_key_round_trips_through_its_own_file_names(tmp_path: Path, key: str) -> None:
    store = make_store(tmp_path, enable_caching=True)
    store.add_data_to_store(key, np.arange(3))

    store.offload(key, pickle_container=True)
    reopened = make_store(tmp_path)

    assert artefacts(tmp_path) == sorted([key + ".meta.json", key + ".npy"])
    assert reopened.keys() == [key]
    np.testing.assert_array_equal(np.asarray(reopened[key]), np.arange(3))
    reopened.purge(key)
    assert artefacts(tmp_path) == []


@pytest.mark.parametrize("name", ["k.npy.tmp", "k.meta.json.tmp", "k.npy", "k.meta.json"])
def test_a_planted_symlink_at_an_artefact_name_is_never_written_through(tmp_path: Path, name: str) -> None:
    outside = tmp_path / "outside.bin"
    outside.write_bytes(b"precious")
    store = make_store(tmp_path / "store", enable_caching=True)
    store.add_data_to_store("k", np.arange(3))
    (tmp_path / "store" / name).symlink_to(outside)

    store.offload("k", pickle_container=True)

    assert outside.read_bytes() == b"precious"
    assert not (tmp_path / "store" / "k.npy").is_symlink()
    assert not (tmp_path / "store" / "k.meta.json").is_symlink()
    np.testing.assert_array_equal(np.load(tmp_path / "store" / "k.npy"), np.arange(3))


# -- a key is checked once per operation, where it enters ----------------------------------------


def _store_with_a_stored_key(cache_dir: Path) -> Store:
    writer = make_store(cache_dir, enable_caching=True)
    writer.add_data_to_store("k", np.arange(4))
    writer.offload("k", pickle_container=True)
    return make_store(cache_dir, enable_caching=True)


def test_reloading_a_key_checks_it_once(tmp_path: Path, judged_keys: list[str]) -> None:
    store = _store_with_a_stored_key(tmp_path)
    judged_keys.clear()

    store["k"]

    assert judged_keys == ["k"]


def test_writing_a_key_to_its_pair_checks_it_once(tmp_path: Path, judged_keys: list[str]) -> None:
    store = make_store(tmp_path, enable_caching=True)
    store.add_data_to_store("k", np.arange(4))
    judged_keys.clear()

    store.offload("k", pickle_container=True)

    assert judged_keys == ["k"]
    assert {"k.npy", "k.meta.json"} <= set(os.listdir(tmp_path))


def test_adding_and_purging_a_key_check_it_once_each(tmp_path: Path, judged_keys: list[str]) -> None:
    store = make_store(tmp_path, enable_caching=True)

    store.add_data_to_store("k", np.arange(4))
    added = list(judged_keys)
    judged_keys.clear()
    store.purge("k")

    assert (added, judged_keys) == (["k"], ["k"])
