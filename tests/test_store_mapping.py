"""DiskBackedStore construction, the mapping protocol, value checks and add_data_to_store."""

import gc
import logging
import os
import stat
import subprocess
import sys
from pathlib import Path
from types import MappingProxyType
from typing import Any, TypeGuard

import numpy as np
import pydantic
import pytest
from numpy.typing import NDArray

from lazy_disk_cache import disk_backed_store as dbs
from lazy_disk_cache.disk_backed_ndarray import DiskBackedNDArray
from lazy_disk_cache.disk_backed_store import DiskBackedStore, Factory
from lazy_disk_cache.errors import LazyDiskCacheWarning, StoreContainmentError, StoreKeyError
from lazy_disk_cache.lazy_disk_cache import LazyDiskCacheConfig
from lazy_disk_cache.paths import CLAUSE_SEPARATOR
from listing import artefacts
from stored import make_store

LOGGER = "lazy_disk_cache.disk_backed_store"


def entry(values: Any = (1, 2, 3), **settings: Any) -> DiskBackedNDArray:
    return DiskBackedNDArray(np.asarray(values), **settings)


class OtherEntry(DiskBackedNDArray):
    """A second entry class, for value_type checks."""


# -- construction ----------------------------------------------------------------------------


def test_constructor_rejects_positional_arguments(tmp_path: Path) -> None:
    with pytest.raises(pydantic.ValidationError, match="factory"):
        DiskBackedStore(LazyDiskCacheConfig(cache_path=tmp_path), DiskBackedNDArray)  # type: ignore[call-arg]


def test_constructor_rejects_a_non_callable_factory(tmp_path: Path) -> None:
    with pytest.raises(pydantic.ValidationError, match="Factory"):
        DiskBackedStore(config=LazyDiskCacheConfig(cache_path=tmp_path), factory=5)  # type: ignore[arg-type]


def test_constructor_requires_a_factory(tmp_path: Path) -> None:
    with pytest.raises(pydantic.ValidationError, match="factory"):
        DiskBackedStore(config=LazyDiskCacheConfig(cache_path=tmp_path))  # type: ignore[call-arg]


def test_constructor_rejects_a_value_type_that_is_not_an_entry_class(tmp_path: Path) -> None:
    not_an_entry_class: Any = int

    with pytest.raises(pydantic.ValidationError, match="value_type"):
        DiskBackedStore(
            config=LazyDiskCacheConfig(cache_path=tmp_path), factory=DiskBackedNDArray, value_type=not_an_entry_class
        )


def test_constructor_coerces_a_dict_config(tmp_path: Path) -> None:
    store: DiskBackedStore[DiskBackedNDArray] = DiskBackedStore(
        config={"cache_path": str(tmp_path), "enable_caching": "yes"},  # type: ignore[arg-type]
        factory=DiskBackedNDArray,
    )

    assert store.cache_dir == tmp_path
    assert store._enable_caching is True


def test_constructor_works_through_the_generic_alias(tmp_path: Path) -> None:
    config = LazyDiskCacheConfig(cache_path=tmp_path)

    store = DiskBackedStore[DiskBackedNDArray](config=config, factory=DiskBackedNDArray)

    assert isinstance(store, DiskBackedStore)
    assert store._factory is DiskBackedNDArray


def test_constructor_copies_the_config_flags(tmp_path: Path) -> None:
    store = make_store(tmp_path, enable_caching=True, automatic_offloading=True, purge_disk_on_gc=False)

    assert (store._enable_caching, store._automatic_offloading, store._purge_disk_on_gc) == (True, True, False)
    assert store._owner_pid == os.getpid()
    assert store._store == {} and store._entry_registry == {}


def test_automatic_offloading_needs_a_configured_cache_path(private_tempdir: Path) -> None:
    store = make_store(None, enable_caching=True, automatic_offloading=True)

    assert store._automatic_offloading is False


def test_a_configured_relative_path_is_made_absolute_and_created(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)

    store = make_store(Path("a/b"))

    assert store.cache_dir == tmp_path / "a" / "b"
    assert store.cache_dir.is_dir()


def test_no_cache_path_gives_a_private_directory(private_tempdir: Path) -> None:
    store = make_store(None)

    assert store.cache_dir.parent == private_tempdir
    assert stat.S_IMODE(store.cache_dir.stat().st_mode) == 0o700


def test_an_existing_file_as_cache_path_gives_a_temporary_directory_with_a_warning(
    tmp_path: Path, private_tempdir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    existing = tmp_path / "file"
    existing.write_bytes(b"keep me")

    config = LazyDiskCacheConfig(cache_path=existing)
    with caplog.at_level(logging.WARNING, logger=LOGGER), pytest.warns(LazyDiskCacheWarning) as caught:
        # Built here, not through a helper: the warning must point at this line's file.
        store = DiskBackedStore[DiskBackedNDArray](config=config, factory=DiskBackedNDArray)

    assert store.cache_dir.parent == private_tempdir
    assert existing.read_bytes() == b"keep me"
    assert [(r.levelno, r.msg % r.args) for r in caplog.records] == [
        (
            logging.WARNING,
            f"Cache path {str(existing)!r} is an existing file; using temporary directory "
            f"{str(store.cache_dir)!r} instead.",
        )
    ]
    assert [str(warning.message) for warning in caught] == [
        f"Cache path {str(existing)!r} is an existing file; using temporary directory "
        f"{str(store.cache_dir)!r} instead. Nothing is written to the path you gave, and the temporary "
        "directory is deleted when the store goes (purge_disk_on_gc=True)."
    ]
    assert caught[0].filename == __file__


def test_the_existing_file_warning_reaches_a_program_that_configured_nothing(tmp_path: Path) -> None:
    existing = tmp_path / "file"
    existing.write_bytes(b"keep me")
    program = (
        "import lazy_disk_cache as ldc\n"
        f"config = ldc.LazyDiskCacheConfig(cache_path={str(existing)!r}, purge_disk_on_gc=False)\n"
        "store = ldc.DiskBackedStore(config=config, factory=ldc.DiskBackedNDArray)\n"
    )

    finished = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=60, check=True)

    assert f"<string>:3: LazyDiskCacheWarning: Cache path {str(existing)!r} is an existing file" in finished.stderr
    assert "is not deleted when the store goes (purge_disk_on_gc=False)" in finished.stderr


def test_the_private_directory_is_removed_when_the_store_is_collected(private_tempdir: Path) -> None:
    store = make_store(None, enable_caching=True)
    store.add_data_to_store("k", np.arange(3))
    store.offload(pickle_container=True)
    directory = store.cache_dir

    del store
    gc.collect()

    assert not directory.exists()


def test_the_private_directory_is_kept_when_purge_is_off(private_tempdir: Path) -> None:
    store = make_store(None, purge_disk_on_gc=False)
    directory = store.cache_dir

    del store
    gc.collect()

    assert directory.is_dir()


def test_a_configured_directory_is_never_removed(tmp_path: Path) -> None:
    store = make_store(tmp_path / "d", enable_caching=True)
    store.add_data_to_store("k", np.arange(3))
    store.offload(pickle_container=True)

    del store
    gc.collect()

    assert artefacts(tmp_path / "d") == ["k.meta.json", "k.npy"]


def test_factory_protocol_is_runtime_checkable() -> None:
    assert isinstance(DiskBackedNDArray, Factory)
    assert not isinstance(5, Factory)


# -- __getitem__ / __setitem__ / __delitem__ / membership --------------------------------------


def test_getitem_of_an_unknown_key_raises_keyerror_and_tracks_nothing(tmp_path: Path) -> None:
    store = make_store(tmp_path)

    with pytest.raises(KeyError) as caught:
        store["missing"]

    assert caught.value.args == ("missing",)
    assert "missing" not in store._store


def test_getitem_miss_on_a_tracked_key_keeps_it_tracked_as_none(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    store._store["gone"] = None

    with pytest.raises(KeyError):
        store["gone"]

    assert store._store == {"gone": None}


def test_setitem_tracks_the_entry_and_writes_no_file(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    value = entry()

    store["k"] = value

    assert store["k"] is value
    assert artefacts(tmp_path) == []


def test_setitem_overwrites_silently(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    first, second = entry(), entry()
    store["k"] = first

    store["k"] = second

    assert store["k"] is second


def test_setitem_validates_the_key_before_the_value(tmp_path: Path) -> None:
    store = make_store(tmp_path)

    with pytest.raises(StoreKeyError, match=CLAUSE_SEPARATOR):
        store["a/b"] = "not an entry"  # type: ignore[assignment]


def test_delitem_leaves_files_and_getitem_readopts_the_pair(tmp_path: Path) -> None:
    store = make_store(tmp_path, enable_caching=True)
    store.add_data_to_store("k", np.arange(4))
    store.offload("k", pickle_container=True)

    del store["k"]

    assert "k" not in store
    assert {"k.npy", "k.meta.json"} <= set(os.listdir(tmp_path))
    np.testing.assert_array_equal(np.asarray(store["k"]), np.arange(4))
    assert "k" in store


def test_delitem_of_an_untracked_key_raises_keyerror(tmp_path: Path) -> None:
    store = make_store(tmp_path)

    with pytest.raises(KeyError):
        del store["missing"]


@pytest.mark.parametrize("key", ["a/b", "..", 5, None, b"k"], ids=repr)
def test_contains_is_false_for_illegal_keys(tmp_path: Path, key: object) -> None:
    store = make_store(tmp_path)

    assert (key in store) is False


def test_contains_looks_only_at_tracking_not_at_the_disk(tmp_path: Path) -> None:
    writer = make_store(tmp_path, enable_caching=True)
    reader = make_store(tmp_path)
    writer.add_data_to_store("later", np.arange(2))
    writer.offload(pickle_container=True)

    assert "later" not in reader
    assert "later" in writer


def test_iter_and_len_include_offloaded_keys(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    store["live"] = entry()
    store._store["away"] = None

    assert list(store) == ["live", "away"]
    assert len(store) == 2


def test_keys_is_a_list_snapshot(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    store["a"] = entry()

    keys = store.keys()
    store["b"] = entry()

    assert keys == ["a"]
    assert type(keys) is list


def test_values_and_items_are_iterators_yielding_none_and_never_load(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = make_store(tmp_path)
    live = entry()
    store["live"] = live
    store._store["away"] = None

    def refuse(key: str) -> DiskBackedNDArray:
        raise AssertionError(f"loaded {key!r}")

    monkeypatch.setattr(store, "_load_entry", refuse)

    values, items = store.values(), store.items()

    assert iter(values) is values and iter(items) is items
    assert list(values) == [live, None]
    assert list(items) == [("live", live), ("away", None)]


def test_equality_is_the_mapping_equality_with_none_for_offloaded(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    live = entry()
    store["live"] = live
    store._store["away"] = None

    assert store == {"live": live, "away": None}


def test_repr_lists_the_keys(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    store["k1"] = entry()
    store._store["k2"] = None

    assert repr(store) == "<DiskBackedStore(['k1', 'k2'])>"


def test_str_counts_the_keys_and_names_the_directory_without_listing_them(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    store["k1"] = entry()
    store._store["k2"] = None
    store._store["k3"] = None

    assert str(store) == f"<DiskBackedStore of 3 keys (1 in memory) in {str(tmp_path)!r}>"


def test_store_property_is_a_read_only_live_view(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    view = store.store
    store["k"] = entry()

    assert isinstance(view, MappingProxyType)
    assert list(view) == ["k"]
    with pytest.raises(TypeError):
        view["x"] = None  # type: ignore[index]
    with pytest.raises(TypeError):
        del view["k"]  # type: ignore[attr-defined]
    with pytest.raises(AttributeError):
        view.pop("k")  # type: ignore[attr-defined]


def test_cache_dir_is_the_directory_path(tmp_path: Path) -> None:
    assert make_store(tmp_path / "d").cache_dir == tmp_path / "d"


# -- get / pop / clear ---------------------------------------------------------------------------


def test_get_returns_the_default_on_a_miss_and_on_an_illegal_key(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    marker = object()

    assert store.get("missing") is None
    assert store.get("missing", marker) is marker
    assert store.get("a/b", marker) is marker
    assert store.get(5, marker) is marker  # type: ignore[call-overload]


def test_get_returns_the_entry(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    value = entry()
    store["k"] = value

    assert store.get("k") is value


def test_get_propagates_containment_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = make_store(tmp_path)

    def escape(key: str) -> DiskBackedNDArray:
        raise StoreContainmentError.for_path(tmp_path / key, key, tmp_path)

    monkeypatch.setattr(store, "_load_entry", escape)

    with pytest.raises(StoreContainmentError, match="resolves outside its cache directory"):
        store.get("k", None)
    with pytest.raises(StoreContainmentError):
        store.pop("k", None)


def test_get_propagates_codec_value_errors(tmp_path: Path) -> None:
    (tmp_path / "k.npy").write_bytes(b"not an npy file")
    (tmp_path / "k.meta.json").write_text("[]")
    store = make_store(tmp_path)

    with pytest.raises(ValueError, match="expected a JSON object"):
        store.get("k")


def test_pop_returns_the_entry_and_drops_tracking_but_keeps_files(tmp_path: Path) -> None:
    store = make_store(tmp_path, enable_caching=True)
    store.add_data_to_store("k", np.arange(3))
    store.offload("k", pickle_container=True)

    popped = store.pop("k")

    np.testing.assert_array_equal(np.asarray(popped), np.arange(3))
    assert "k" not in store
    assert {"k.npy", "k.meta.json"} <= set(os.listdir(tmp_path))


def test_pop_of_a_missing_key_uses_the_default_or_raises(tmp_path: Path) -> None:
    store = make_store(tmp_path)

    assert store.pop("missing", None) is None
    assert store.pop("missing", 7) == 7
    with pytest.raises(KeyError) as caught:
        store.pop("missing")
    assert caught.value.args == ("missing",)


def test_pop_of_an_illegal_key_uses_the_default_or_raises(tmp_path: Path) -> None:
    store = make_store(tmp_path)

    assert store.pop("a/b", "default") == "default"
    with pytest.raises(StoreKeyError, match=CLAUSE_SEPARATOR):
        store.pop("a/b")


def test_clear_drops_every_key_without_loading(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = make_store(tmp_path)
    store["live"] = entry()
    store._store["away"] = None

    def refuse(key: str) -> DiskBackedNDArray:
        raise AssertionError(f"loaded {key!r}")

    monkeypatch.setattr(store, "_load_entry", refuse)

    store.clear()

    assert len(store) == 0


def test_clear_raises_runtimeerror_naming_the_keys_left(tmp_path: Path) -> None:
    class StickyStore(DiskBackedStore[DiskBackedNDArray]):
        def __delitem__(self, key: str) -> None:
            if key != "sticky":
                super().__delitem__(key)

    store = StickyStore(config=LazyDiskCacheConfig(cache_path=tmp_path), factory=DiskBackedNDArray)
    store["sticky"] = entry()
    store["loose"] = entry()

    with pytest.raises(RuntimeError, match="'sticky'"):
        store.clear()

    assert list(store) == ["sticky"]


def test_setdefault_and_update_validate_keys(tmp_path: Path) -> None:
    store = make_store(tmp_path)

    with pytest.raises(StoreKeyError):
        store.update({"a/b": entry()})
    value = entry()
    assert store.setdefault("k", value) is value
    assert store.popitem() == ("k", value)


# -- value checks ------------------------------------------------------------------------------


def test_check_t_refuses_a_non_entry(tmp_path: Path) -> None:
    store = make_store(tmp_path)

    with pytest.raises(TypeError) as caught:
        store["k"] = np.arange(3)  # type: ignore[assignment]

    assert str(caught.value) == "value must be LazyDiskCache; got <class 'numpy.ndarray'>"


def test_check_t_refuses_a_value_of_the_wrong_type(tmp_path: Path) -> None:
    store = DiskBackedStore[DiskBackedNDArray](
        config=LazyDiskCacheConfig(cache_path=tmp_path), factory=DiskBackedNDArray, value_type=OtherEntry
    )

    with pytest.raises(TypeError) as caught:
        store["k"] = entry()

    assert str(caught.value) == f"value must be {OtherEntry}; got {DiskBackedNDArray}"


def test_check_t_accepts_a_tuple_of_value_types(tmp_path: Path) -> None:
    store = DiskBackedStore[DiskBackedNDArray](
        config=LazyDiskCacheConfig(cache_path=tmp_path),
        factory=DiskBackedNDArray,
        value_type=(OtherEntry, DiskBackedNDArray),
    )
    value = entry()

    assert store._check_T(value) is value


def test_check_t_refuses_a_value_the_validator_rejects(tmp_path: Path) -> None:
    def only_ints(value: object) -> TypeGuard[DiskBackedNDArray]:
        return isinstance(value, DiskBackedNDArray) and value.data.dtype.kind == "i"

    store = DiskBackedStore[DiskBackedNDArray](
        config=LazyDiskCacheConfig(cache_path=tmp_path), factory=DiskBackedNDArray, validator=only_ints
    )
    store["ints"] = entry([1, 2])

    with pytest.raises(TypeError) as caught:
        store["floats"] = entry([1.5])

    assert str(caught.value) == f"value rejected by validator; got {DiskBackedNDArray}"
    assert "floats" not in store


def _odd_sized(value: object) -> TypeGuard[DiskBackedNDArray]:
    return isinstance(value, DiskBackedNDArray) and np.asarray(value).size % 2 == 1


# With automatic offloading an added entry writes its .dat at once (one without it may wait in
# RAM), so a rejected entry has a file to leave behind.
WRITES_DAT_AT_ADD = {"automatic_offloading": True}


@pytest.mark.parametrize("purge", [True, False], ids=["purge", "durable"])
@pytest.mark.parametrize("check", ["validator", "value_type"])
def test_an_entry_rejected_by_add_data_to_store_leaves_no_file_behind(tmp_path: Path, purge: bool, check: str) -> None:
    rules: dict[str, Any] = {"validator": _odd_sized} if check == "validator" else {"value_type": OtherEntry}
    config = LazyDiskCacheConfig(cache_path=tmp_path, enable_caching=True, purge_disk_on_gc=purge, **WRITES_DAT_AT_ADD)
    store = DiskBackedStore[DiskBackedNDArray](config=config, factory=DiskBackedNDArray, **rules)

    with pytest.raises(TypeError, match=r"rejected by validator|value must be"):
        store.add_data_to_store("k", np.arange(4))

    assert "k" not in store
    assert artefacts(tmp_path) == []


def test_a_rejection_never_removes_a_dat_that_was_there_before(tmp_path: Path) -> None:
    (tmp_path / "k.dat").write_bytes(b"\x00" * 32)
    config = LazyDiskCacheConfig(cache_path=tmp_path, enable_caching=True, purge_disk_on_gc=False, **WRITES_DAT_AT_ADD)
    store = DiskBackedStore[DiskBackedNDArray](config=config, factory=DiskBackedNDArray, validator=_odd_sized)

    with pytest.raises(TypeError, match="rejected by validator"):
        store.add_data_to_store("k", np.arange(4))

    assert artefacts(tmp_path) == ["k.dat"]


def test_a_rejected_entry_collected_later_never_removes_the_next_entry_file(tmp_path: Path) -> None:
    config = LazyDiskCacheConfig(cache_path=tmp_path, enable_caching=True, **WRITES_DAT_AT_ADD)
    store = DiskBackedStore[DiskBackedNDArray](config=config, factory=DiskBackedNDArray, validator=_odd_sized)
    with pytest.raises(TypeError) as rejection:
        store.add_data_to_store("k", np.arange(4))

    store.add_data_to_store("k", np.arange(5), purge_disk_on_gc_override=False)
    del rejection, store
    gc.collect()

    assert artefacts(tmp_path) == ["k.dat"]
    np.testing.assert_array_equal(np.fromfile(tmp_path / "k.dat", dtype=np.arange(5).dtype), np.arange(5))


# -- add_data_to_store -------------------------------------------------------------------------


class RecordingFactory:
    """A factory that records the keyword arguments it was called with."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    def __call__(self, data: NDArray[Any], /, **kwargs: Any) -> DiskBackedNDArray:
        self.calls.append(dict(kwargs))
        return DiskBackedNDArray(data, **kwargs)


def test_add_data_to_store_calls_the_factory_with_the_store_flags_and_npy_path(tmp_path: Path) -> None:
    factory = RecordingFactory()
    config = LazyDiskCacheConfig(cache_path=tmp_path, enable_caching=True, purge_disk_on_gc=False)
    store = DiskBackedStore[DiskBackedNDArray](config=config, factory=factory)

    store.add_data_to_store("k", np.arange(3))

    assert factory.calls == [
        {
            "enable_caching": True,
            "cache_path": tmp_path / "k.npy",
            "automatic_offloading": False,
            "purge_disk_on_gc": False,
        }
    ]
    assert store["k"].cache_path == tmp_path / "k.dat"
    assert not (tmp_path / "k.dat").exists(), "the working copy stays in RAM until a file is needed"
    store["k"].offload()
    assert (tmp_path / "k.dat").is_file()


def test_add_data_to_store_applies_each_override(tmp_path: Path) -> None:
    factory = RecordingFactory()
    store = DiskBackedStore[DiskBackedNDArray](config=LazyDiskCacheConfig(cache_path=tmp_path), factory=factory)

    store.add_data_to_store(
        "k",
        np.arange(3),
        enable_caching_override=True,
        automatic_offloading_override=True,
        purge_disk_on_gc_override=False,
    )

    assert factory.calls[0] | {"cache_path": None} == {
        "enable_caching": True,
        "cache_path": None,
        "automatic_offloading": True,
        "purge_disk_on_gc": False,
    }
    assert store["k"].offloaded


def test_add_data_to_store_refuses_a_duplicate_key(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    store.add_data_to_store("k", np.arange(3))

    with pytest.raises(KeyError) as caught:
        store.add_data_to_store("k", np.arange(3))

    assert caught.value.args == ("Key k already exists in store.",)


def test_add_data_to_store_validates_the_key_before_the_duplicate_check(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    store._store["a/b"] = None

    with pytest.raises(StoreKeyError, match=CLAUSE_SEPARATOR):
        store.add_data_to_store("a/b", np.arange(3))


def test_add_data_to_store_checks_the_factory_result(tmp_path: Path) -> None:
    def wrong(data: Any, /, **kwargs: Any) -> Any:
        return data

    store: DiskBackedStore[DiskBackedNDArray] = DiskBackedStore(
        config=LazyDiskCacheConfig(cache_path=tmp_path), factory=wrong
    )

    with pytest.raises(TypeError, match="value must be LazyDiskCache"):
        store.add_data_to_store("k", np.arange(3))

    assert "k" not in store


def test_add_data_to_store_registers_the_entry(tmp_path: Path) -> None:
    store = make_store(tmp_path)

    store.add_data_to_store("k", np.arange(3))

    assert [ref() for ref in store._entry_registry["k"]] == [store["k"]]


# -- class registry ----------------------------------------------------------------------------


def test_registry_starts_with_diskbackedndarray() -> None:
    assert dbs._LAZY_DISK_CACHE_CLASS_REGISTRY["DiskBackedNDArray"] is DiskBackedNDArray
    assert dbs._SCHEMA_VERSION == 1


def test_register_returns_the_class_and_is_idempotent(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dbs, "_LAZY_DISK_CACHE_CLASS_REGISTRY", dict(dbs._LAZY_DISK_CACHE_CLASS_REGISTRY))

    assert dbs.register_lazy_disk_cache_class(OtherEntry) is OtherEntry
    assert dbs.register_lazy_disk_cache_class(OtherEntry) is OtherEntry
    assert dbs._resolve_lazy_disk_cache_class("OtherEntry") is OtherEntry


def test_register_works_as_a_decorator(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dbs, "_LAZY_DISK_CACHE_CLASS_REGISTRY", dict(dbs._LAZY_DISK_CACHE_CLASS_REGISTRY))

    @dbs.register_lazy_disk_cache_class
    class Decorated(DiskBackedNDArray):
        pass

    assert dbs._LAZY_DISK_CACHE_CLASS_REGISTRY["Decorated"] is Decorated


@pytest.mark.parametrize("candidate", [int, 5, np.ndarray, "DiskBackedNDArray"], ids=repr)
def test_register_refuses_anything_but_an_entry_class(candidate: Any) -> None:
    with pytest.raises(TypeError) as caught:
        dbs.register_lazy_disk_cache_class(candidate)

    assert str(caught.value) == f"register_lazy_disk_cache_class expects a LazyDiskCache subclass; got {candidate!r}"


def test_register_refuses_an_impostor_under_a_taken_name() -> None:
    impostor = type("DiskBackedNDArray", (DiskBackedNDArray,), {})

    with pytest.raises(ValueError) as caught:
        dbs.register_lazy_disk_cache_class(impostor)

    assert str(caught.value) == (
        f"Cannot register {impostor!r} under 'DiskBackedNDArray': a different class ({DiskBackedNDArray!r}) "
        "is already registered under that name."
    )
    assert dbs._LAZY_DISK_CACHE_CLASS_REGISTRY["DiskBackedNDArray"] is DiskBackedNDArray


def test_resolve_refuses_an_unknown_name_listing_the_allowed_ones() -> None:
    with pytest.raises(ValueError) as caught:
        dbs._resolve_lazy_disk_cache_class("os.system")

    assert str(caught.value) == (
        f"Unknown lazy_disk_cache_class 'os.system'; allowed: {sorted(dbs._LAZY_DISK_CACHE_CLASS_REGISTRY)}"
    )


def test_a_registered_class_reloads_as_itself(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dbs, "_LAZY_DISK_CACHE_CLASS_REGISTRY", dict(dbs._LAZY_DISK_CACHE_CLASS_REGISTRY))
    dbs.register_lazy_disk_cache_class(OtherEntry)
    store = DiskBackedStore[OtherEntry](
        config=LazyDiskCacheConfig(cache_path=tmp_path, enable_caching=True), factory=OtherEntry
    )
    store.add_data_to_store("k", np.arange(3))
    store.offload(pickle_container=True)

    reloaded = make_store(tmp_path)["k"]

    assert type(reloaded) is OtherEntry
