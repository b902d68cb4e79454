"""The .npy + .meta.json codec: what the store writes, what it accepts and how it reloads."""

import builtins
import json
import logging
import math
import os
import pickle
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray

from lazy_disk_cache import _rust
from lazy_disk_cache import disk_backed_store as dbs
from lazy_disk_cache._payload_layout import layout_of, payload_memmap
from lazy_disk_cache.disk_backed_ndarray import DiskBackedNDArray
from lazy_disk_cache.disk_backed_store import DiskBackedStore
from lazy_disk_cache.errors import LazyDiskCacheWarning
from lazy_disk_cache.lazy_disk_cache import CopyableFile, LazyDiskCacheConfig, copyable_file
from listing import artefacts
from stored import make_store, write_original_pair, write_sidecar

LOGGER = "lazy_disk_cache.disk_backed_store"
# The store writes payloads page-aligned (DESIGN.md §4.6); np.save aligns to 64 bytes.
PAGE = 4096


def npy_header(path: Path) -> tuple[tuple[int, ...], bool, np.dtype[Any]]:
    """Shape, Fortran flag and dtype of a .npy file, as NumPy reads them."""
    with open(path, "rb") as handle:
        return npy_header_of(handle)


def npy_data_offset(path: Path) -> int:
    """Where the payload of a .npy file starts, as NumPy reads the header."""
    with open(path, "rb") as handle:
        npy_header_of(handle)
        return handle.tell()


def npy_header_of(handle: Any) -> tuple[tuple[int, ...], bool, np.dtype[Any]]:
    major, _ = np.lib.format.read_magic(handle)
    read = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
    return read(handle)


def store_and_offload(cache_dir: Path, key: str, array: NDArray[Any], **settings: Any) -> None:
    store = make_store(cache_dir, enable_caching=True, **settings)
    store.add_data_to_store(key, array)
    store.offload(key, pickle_container=True)


DTYPE_CASES: list[tuple[str, NDArray[Any]]] = [
    ("float64-2d", np.arange(12, dtype=np.float64).reshape(3, 4)),
    ("int32-big-endian", np.arange(5, dtype=">i4")),
    ("bool", np.array([True, False, True])),
    ("complex", np.array([1 + 2j, -3j])),
    ("datetime", np.array(["2024-01-01", "2025-06-30"], dtype="M8[D]")),
    ("unicode", np.array(["a", "bcd", "\u00e9"])),
    ("bytes", np.array([b"x", b"yz"])),
    ("structured", np.array([(1.5, 2), (3.5, 4)], dtype=[("x", "<f8"), ("cls", "u1")])),
    ("zero-d", np.array(7.25)),
    ("empty", np.zeros((0, 3), dtype=np.float32)),
    ("three-d", np.arange(24, dtype=np.int16).reshape(2, 3, 4)),
]


# -- what the store writes -----------------------------------------------------------------------


def test_sidecar_is_one_line_of_json_with_the_documented_keys_in_order_then_the_checksum(tmp_path: Path) -> None:
    store_and_offload(tmp_path, "tile", np.arange(6, dtype="<f4").reshape(2, 3), purge_disk_on_gc=False)
    checksum = _rust.CacheDir.open(tmp_path).checksum("tile.npy")

    text = (tmp_path / "tile.meta.json").read_text(encoding="utf-8")

    assert text == (
        '{"schema_version": 1, "lazy_disk_cache_class": "DiskBackedNDArray", "shape": [2, 3], "dtype": "<f4", '
        f'"purge_disk_on_gc": false, "automatic_offloading": false, "enable_caching": true, "checksum": "{checksum}"}}'
    )
    assert json.loads(text) == {
        "schema_version": 1,
        "lazy_disk_cache_class": "DiskBackedNDArray",
        "shape": [2, 3],
        "dtype": "<f4",
        "purge_disk_on_gc": False,
        "automatic_offloading": False,
        "enable_caching": True,
        "checksum": checksum,
    }
    assert re.fullmatch(r"xxh3-64:[0-9a-f]{16}", checksum), checksum


def test_sidecar_records_the_entry_flags(tmp_path: Path) -> None:
    store = make_store(tmp_path, enable_caching=True)
    store.add_data_to_store("k", np.arange(3), automatic_offloading_override=True)
    store.offload("k", pickle_container=True)

    meta = json.loads((tmp_path / "k.meta.json").read_text())

    assert (meta["purge_disk_on_gc"], meta["automatic_offloading"], meta["enable_caching"]) == (True, True, True)


def test_sidecar_keeps_non_ascii_text_unescaped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dbs, "_LAZY_DISK_CACHE_CLASS_REGISTRY", dict(dbs._LAZY_DISK_CACHE_CLASS_REGISTRY))
    accented: type[DiskBackedNDArray] = type("Entr\u00e9e", (DiskBackedNDArray,), {})
    dbs.register_lazy_disk_cache_class(accented)
    store = DiskBackedStore[DiskBackedNDArray](
        config=LazyDiskCacheConfig(cache_path=tmp_path, enable_caching=True), factory=accented
    )
    store.add_data_to_store("k", np.arange(3))

    store.offload(pickle_container=True)

    assert '"lazy_disk_cache_class": "Entr\u00e9e"'.encode() in (tmp_path / "k.meta.json").read_bytes()
    assert type(make_store(tmp_path)["k"]) is accented


@pytest.mark.parametrize(("label", "array"), DTYPE_CASES, ids=[label for label, _ in DTYPE_CASES])
def test_written_npy_loads_with_np_load(tmp_path: Path, label: str, array: NDArray[Any]) -> None:
    store_and_offload(tmp_path, "k", array)

    loaded = np.load(tmp_path / "k.npy", allow_pickle=False)

    assert loaded.dtype == array.dtype
    np.testing.assert_array_equal(loaded, array)


@pytest.mark.parametrize(("label", "array"), DTYPE_CASES, ids=[label for label, _ in DTYPE_CASES])
def test_every_dtype_round_trips_through_a_reload(tmp_path: Path, label: str, array: NDArray[Any]) -> None:
    store_and_offload(tmp_path, "k", array)

    reloaded = np.asarray(make_store(tmp_path)["k"])

    assert reloaded.dtype == array.dtype
    assert reloaded.shape == array.shape
    np.testing.assert_array_equal(reloaded, array)


def test_payload_starts_on_a_page_boundary(tmp_path: Path) -> None:
    store_and_offload(tmp_path, "k", np.arange(10, dtype=np.float64))

    mapped = np.load(tmp_path / "k.npy", mmap_mode="r")

    assert isinstance(mapped, np.memmap)
    assert mapped.offset == PAGE


def test_a_fortran_ordered_source_is_written_in_c_order(tmp_path: Path) -> None:
    source = np.asfortranarray(np.arange(12).reshape(3, 4))
    store = make_store(tmp_path)
    store["k"] = DiskBackedNDArray(source)

    store._store_entry("k", store["k"])

    assert npy_header(tmp_path / "k.npy")[:2] == ((3, 4), False)
    np.testing.assert_array_equal(np.load(tmp_path / "k.npy"), source)


def test_a_strided_source_is_written_in_budget_sized_pieces(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, clean_faults: None
) -> None:
    monkeypatch.setattr(dbs, "chunk_budget_bytes", lambda: 64)
    source = np.arange(400, dtype=np.int64).reshape(20, 20)[:, ::2]
    store = make_store(tmp_path)
    store["k"] = DiskBackedNDArray(source)
    _rust._clear_faults()

    store._store_entry("k", store["k"])

    # The header and the sidecar are one write each; no payload piece exceeds 64 bytes.
    assert _rust._op_counts()["write"] >= 2 + math.ceil(source.nbytes / 64)
    np.testing.assert_array_equal(np.load(tmp_path / "k.npy"), source)
    assert np.load(tmp_path / "k.npy").tobytes() == np.ascontiguousarray(source).tobytes()


def test_store_entry_refuses_an_object_dtype_before_writing(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    store["k"] = DiskBackedNDArray(np.array([{}, []], dtype=object))

    with pytest.raises(TypeError, match="contains Python objects"):
        store._store_entry("k", store["k"])

    assert os.listdir(tmp_path) == []


def test_store_entry_refuses_a_masked_array_before_writing(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    store["k"] = DiskBackedNDArray(np.ma.masked_array(np.arange(3), mask=[True, False, False]))

    with pytest.raises(TypeError, match=r"numpy\.ma\.MaskedArray on disk: its mask would be lost"):
        store._store_entry("k", store["k"])

    assert os.listdir(tmp_path) == []


def test_adding_a_masked_array_to_a_caching_store_is_refused_and_leaves_nothing(tmp_path: Path) -> None:
    store = make_store(tmp_path, enable_caching=True)

    with pytest.raises(TypeError, match=r"numpy\.ma\.MaskedArray"):
        store.add_data_to_store("k", np.ma.masked_array(np.arange(3), mask=[True, False, False]))

    assert "k" not in store
    assert os.listdir(tmp_path) == []


def test_store_entry_commits_a_single_pair_on_its_own(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    store["k"] = DiskBackedNDArray(np.arange(3))

    store._store_entry("k", store["k"])

    assert artefacts(tmp_path) == ["k.meta.json", "k.npy"]
    assert json.loads((tmp_path / "k.meta.json").read_text())["enable_caching"] is False


# -- reading pairs the original wrote ------------------------------------------------------------


def test_a_pair_written_with_np_save_and_a_hand_written_sidecar_loads(tmp_path: Path) -> None:
    array = np.arange(6, dtype=np.float64).reshape(2, 3)
    write_original_pair(tmp_path, "legacy", array)

    reloaded = make_store(tmp_path)["legacy"]

    np.testing.assert_array_equal(np.asarray(reloaded), array)
    assert reloaded.cache_enabled
    assert reloaded.purge_disk_on_gc is False


def test_a_fortran_ordered_np_save_file_loads_with_its_order(tmp_path: Path) -> None:
    array = np.asfortranarray(np.arange(12, dtype=np.int32).reshape(3, 4))
    write_original_pair(tmp_path, "f", array)

    reloaded = np.asarray(make_store(tmp_path)["f"])

    np.testing.assert_array_equal(reloaded, array)


def test_a_fortran_ordered_reload_is_written_back_in_c_order(tmp_path: Path) -> None:
    array = np.asfortranarray(np.arange(12, dtype=np.int32).reshape(3, 4))
    write_original_pair(tmp_path, "f", array)
    store = make_store(tmp_path)
    store["f"]

    store.offload("f", pickle_container=True)

    assert npy_header(tmp_path / "f.npy")[1] is False
    np.testing.assert_array_equal(np.load(tmp_path / "f.npy"), array)


def test_absent_flags_take_the_config_defaults(tmp_path: Path) -> None:
    np.save(tmp_path / "k.npy", np.arange(3))
    write_sidecar(tmp_path, "k", {"schema_version": 1, "lazy_disk_cache_class": "DiskBackedNDArray"})

    reloaded = make_store(tmp_path, enable_caching=True, purge_disk_on_gc=False)["k"]

    assert (reloaded.cache_enabled, reloaded.purge_disk_on_gc, reloaded.automatic_offloading) == (False, True, False)
    np.testing.assert_array_equal(np.asarray(reloaded), np.arange(3))


def test_sidecar_flags_win_over_the_store_config(tmp_path: Path) -> None:
    write_original_pair(
        tmp_path, "k", np.arange(3), enable_caching=False, purge_disk_on_gc=True, automatic_offloading=False
    )

    reloaded = make_store(tmp_path, enable_caching=True, purge_disk_on_gc=False, automatic_offloading=True)["k"]

    assert (reloaded.cache_enabled, reloaded.purge_disk_on_gc, reloaded.automatic_offloading) == (False, True, False)


def test_a_stale_sidecar_shape_and_dtype_log_a_warning_and_the_header_wins(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store_and_offload(tmp_path, "tile", np.arange(6, dtype=np.int64).reshape(2, 3))
    meta = json.loads((tmp_path / "tile.meta.json").read_text())
    write_sidecar(tmp_path, "tile", meta | {"shape": [6], "dtype": "<f8"})

    with caplog.at_level(logging.WARNING, logger=LOGGER), pytest.warns(LazyDiskCacheWarning) as caught:
        reloaded = np.asarray(make_store(tmp_path)["tile"])

    assert reloaded.shape == (2, 3)
    assert reloaded.dtype == np.int64
    assert [(r.levelno, r.msg, r.args) for r in caplog.records] == [
        (logging.WARNING, "sidecar for key %r is stale; the .npy header wins", ("tile",))
    ]
    assert [str(warning.message) for warning in caught] == [
        f"sidecar for key 'tile' is stale; the .npy header wins (shape (2, 3), dtype int64; the sidecar "
        f"{str(tmp_path / 'tile.meta.json')!r} says shape [6], dtype '<f8')"
    ]


def test_a_matching_sidecar_logs_no_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store_and_offload(tmp_path, "tile", np.arange(6, dtype=np.int64).reshape(2, 3))

    with caplog.at_level(logging.WARNING, logger=LOGGER):
        make_store(tmp_path)["tile"]

    assert caplog.records == []


def test_trailing_bytes_after_the_payload_are_ignored(tmp_path: Path) -> None:
    write_original_pair(tmp_path, "k", np.arange(4, dtype=np.int64))
    with open(tmp_path / "k.npy", "ab") as handle:
        handle.write(b"trailing garbage")

    np.testing.assert_array_equal(np.asarray(make_store(tmp_path)["k"]), np.arange(4))


# -- reload paths ---------------------------------------------------------------------------------


def test_reload_with_caching_maps_the_npy_copy_on_write_without_a_dat(tmp_path: Path) -> None:
    store_and_offload(tmp_path, "k", np.arange(6, dtype=np.float64))

    reloaded = make_store(tmp_path)["k"]

    assert isinstance(reloaded.data, np.memmap)
    assert reloaded.data.flags.writeable
    assert not (tmp_path / "k.dat").exists()
    assert reloaded.cache_path == tmp_path / "k.dat"


def test_writes_before_the_first_offload_are_kept_and_never_reach_the_npy(tmp_path: Path) -> None:
    store_and_offload(tmp_path, "k", np.arange(6, dtype=np.float64))
    reloaded = make_store(tmp_path)["k"]

    reloaded.data[0] = 100.0
    np.testing.assert_array_equal(np.load(tmp_path / "k.npy"), np.arange(6))
    reloaded.offload()

    assert (tmp_path / "k.dat").is_file()
    assert np.asarray(reloaded)[0] == 100.0
    np.testing.assert_array_equal(np.load(tmp_path / "k.npy"), np.arange(6))


def test_reload_with_caching_off_reads_into_ram(tmp_path: Path) -> None:
    write_original_pair(tmp_path, "k", np.arange(5), enable_caching=False)

    reloaded = make_store(tmp_path)["k"]

    assert type(reloaded.data) is np.ndarray
    assert reloaded.data.flags.writeable
    np.testing.assert_array_equal(reloaded.data, np.arange(5))
    assert sorted(os.listdir(tmp_path)) == ["k.meta.json", "k.npy"]


def test_reload_of_an_automatic_offloading_entry_ends_offloaded(tmp_path: Path) -> None:
    write_original_pair(tmp_path, "k", np.arange(5), automatic_offloading=True)

    reloaded = make_store(tmp_path)["k"]

    assert reloaded.offloaded
    np.testing.assert_array_equal(reloaded[1:3], [1, 2])


# -- _load_entry refusals, in the documented order ---------------------------------------------


def test_a_legacy_pickle_without_a_pair_is_a_logged_miss_and_never_opened(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    legacy = tmp_path / "k.pkl"
    legacy.write_bytes(pickle.dumps(np.arange(3)))
    store = make_store(tmp_path)

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"opened {args!r}")

    for name in ("load", "loads", "Unpickler"):
        monkeypatch.setattr(pickle, name, refuse)
    monkeypatch.setattr(builtins, "open", refuse)

    with caplog.at_level(logging.INFO, logger=LOGGER), pytest.raises(KeyError) as caught:
        store._load_entry("k")

    assert caught.value.args == ("k",)
    assert [(r.levelno, r.args) for r in caplog.records] == [(logging.INFO, (legacy,))]
    assert "Legacy pre-Phase-2 cache file" in caplog.records[0].getMessage()
    assert caplog.records[0].getMessage() == (
        f"Legacy pre-Phase-2 cache file at {legacy} is a pickle, which this package never reads; with no "
        "complete .npy + .meta.json pair beside it, the key counts as missing. To keep its value, add it to a "
        "store again and offload it with pickle_container=True."
    )


def test_a_legacy_pickle_next_to_a_complete_pair_is_ignored(tmp_path: Path) -> None:
    write_original_pair(tmp_path, "k", np.arange(3))
    (tmp_path / "k.pkl").write_bytes(b"ignored")

    np.testing.assert_array_equal(np.asarray(make_store(tmp_path)["k"]), np.arange(3))


@pytest.mark.parametrize("missing", ["k.npy", "k.meta.json"])
def test_a_torn_pair_is_a_miss(tmp_path: Path, missing: str) -> None:
    write_original_pair(tmp_path, "k", np.arange(3))
    (tmp_path / missing).unlink()
    store = make_store(tmp_path)

    with pytest.raises(KeyError) as caught:
        store._load_entry("k")

    assert caught.value.args == ("k",)


@pytest.mark.parametrize("missing", ["k.npy", "k.meta.json"])
def test_a_tracked_key_whose_pair_half_vanished_is_a_miss_and_stays_tracked(tmp_path: Path, missing: str) -> None:
    write_original_pair(tmp_path, "k", np.arange(3))
    store = make_store(tmp_path)
    (tmp_path / missing).unlink()

    with pytest.raises(KeyError) as caught:
        store["k"]

    assert caught.value.args == ("k",)
    assert store._store == {"k": None}


def test_temps_are_never_read(tmp_path: Path) -> None:
    write_original_pair(tmp_path, "k", np.arange(3))
    store = make_store(tmp_path)
    (tmp_path / "k.npy").rename(tmp_path / "k.npy.tmp")
    (tmp_path / "k.meta.json").rename(tmp_path / "k.meta.json.tmp")

    with pytest.raises(KeyError):
        store._load_entry("k")


def test_invalid_json_raises_a_json_decode_error_naming_the_key_and_the_file(tmp_path: Path) -> None:
    write_original_pair(tmp_path, "k", np.arange(3))
    (tmp_path / "k.meta.json").write_text("{not json")

    with pytest.raises(json.JSONDecodeError) as caught:
        make_store(tmp_path)["k"]

    assert str(caught.value) == (
        f"Corrupt lazy_disk_cache sidecar {str(tmp_path / 'k.meta.json')!r} for key 'k', not valid JSON: "
        "Expecting property name enclosed in double quotes: line 1 column 2 (char 1)"
    )
    assert (caught.value.lineno, caught.value.colno, caught.value.pos) == (1, 2, 1)


def test_a_sidecar_that_is_not_utf8_raises_value_error_naming_the_key_and_the_file(tmp_path: Path) -> None:
    write_original_pair(tmp_path, "k", np.arange(3))
    (tmp_path / "k.meta.json").write_bytes(b'{"schema_version": 1, "x": "\xff"}')

    with pytest.raises(ValueError) as caught:
        make_store(tmp_path)["k"]

    assert str(caught.value).startswith(
        f"Corrupt lazy_disk_cache sidecar {str(tmp_path / 'k.meta.json')!r} for key 'k', not valid UTF-8: "
    )


@pytest.mark.parametrize("meta", [[], "text", 1, None], ids=repr)
def test_a_sidecar_that_is_not_an_object_raises_valueerror(tmp_path: Path, meta: object) -> None:
    write_original_pair(tmp_path, "k", np.arange(3))
    write_sidecar(tmp_path, "k", meta)

    with pytest.raises(ValueError) as caught:
        make_store(tmp_path)._load_entry("k")

    assert str(caught.value) == (
        "Unsupported lazy_disk_cache sidecar for key 'k': expected a JSON object with schema_version 1"
    )


@pytest.mark.parametrize(
    ("version", "shown"),
    [(True, "True"), (1.0, "1.0"), ("1", "'1'"), (2, "2"), (0, "0"), (None, "None"), ("missing", "None")],
    ids=repr,
)
def test_schema_version_must_be_the_integer_one(tmp_path: Path, version: object, shown: str) -> None:
    write_original_pair(tmp_path, "k", np.arange(3))
    meta = json.loads((tmp_path / "k.meta.json").read_text())
    if version == "missing":
        del meta["schema_version"]
    else:
        meta["schema_version"] = version
    write_sidecar(tmp_path, "k", meta)

    with pytest.raises(ValueError) as caught:
        make_store(tmp_path)._load_entry("k")

    assert str(caught.value) == f"Unsupported lazy_disk_cache schema_version {shown}; expected 1"


@pytest.mark.parametrize("name", ["missing", None, 3, ["DiskBackedNDArray"]], ids=repr)
def test_a_missing_or_non_string_class_raises_valueerror(tmp_path: Path, name: object) -> None:
    write_original_pair(tmp_path, "k", np.arange(3))
    meta = json.loads((tmp_path / "k.meta.json").read_text())
    if name == "missing":
        del meta["lazy_disk_cache_class"]
    else:
        meta["lazy_disk_cache_class"] = name
    write_sidecar(tmp_path, "k", meta)

    with pytest.raises(ValueError) as caught:
        make_store(tmp_path)._load_entry("k")

    assert str(caught.value) == "lazy_disk_cache sidecar for key 'k' has no valid lazy_disk_cache_class"


def test_an_unknown_class_raises_valueerror_listing_the_allowed_ones(tmp_path: Path) -> None:
    write_original_pair(tmp_path, "k", np.arange(3), lazy_disk_cache_class="builtins.eval")

    with pytest.raises(ValueError) as caught:
        make_store(tmp_path)._load_entry("k")

    assert str(caught.value).startswith("Unknown lazy_disk_cache_class 'builtins.eval'; allowed: [")
    assert "'DiskBackedNDArray'" in str(caught.value)


def test_the_class_is_checked_before_the_npy_header(tmp_path: Path) -> None:
    write_original_pair(tmp_path, "k", np.arange(3), lazy_disk_cache_class="Nope")
    (tmp_path / "k.npy").write_bytes(b"garbage")

    with pytest.raises(ValueError, match="Unknown lazy_disk_cache_class"):
        make_store(tmp_path)._load_entry("k")


@pytest.mark.parametrize(
    "payload",
    [b"", b"garbage", b"\x93NUMPY\x01\x00\x10\x00{'descr': '<f8'}    \n", b"\x93NUMPY\x09\x00"],
    ids=["empty", "garbage", "incomplete-dict", "bad-version"],
)
def test_a_corrupt_npy_header_raises_valueerror(tmp_path: Path, payload: bytes) -> None:
    write_original_pair(tmp_path, "k", np.arange(3))
    (tmp_path / "k.npy").write_bytes(payload)

    with pytest.raises(ValueError):
        make_store(tmp_path)._load_entry("k")


def test_a_short_npy_raises_valueerror_naming_the_path(tmp_path: Path) -> None:
    write_original_pair(tmp_path, "k", np.arange(100, dtype=np.float64))
    path = tmp_path / "k.npy"
    os.truncate(path, path.stat().st_size - 8)

    with pytest.raises(ValueError, match=str(path)):
        make_store(tmp_path)._load_entry("k")


def test_an_object_dtype_npy_raises_valueerror(tmp_path: Path) -> None:
    np.save(tmp_path / "k.npy", np.array([{}], dtype=object), allow_pickle=True)
    write_sidecar(tmp_path, "k", {"schema_version": 1, "lazy_disk_cache_class": "DiskBackedNDArray"})

    with pytest.raises(ValueError, match="object arrays"):
        make_store(tmp_path)._load_entry("k")


@pytest.mark.parametrize("field", ["purge_disk_on_gc", "automatic_offloading", "enable_caching"])
@pytest.mark.parametrize("value", [1, 0, "true", None, 1.0], ids=repr)
def test_a_non_boolean_flag_raises_valueerror_naming_the_field(tmp_path: Path, field: str, value: object) -> None:
    write_original_pair(tmp_path, "k", np.arange(3), **{field: value})

    with pytest.raises(ValueError) as caught:
        make_store(tmp_path)._load_entry("k")

    assert repr(field) in str(caught.value)
    assert "'k'" in str(caught.value)


def test_flags_are_checked_after_the_npy_header(tmp_path: Path) -> None:
    write_original_pair(tmp_path, "k", np.arange(3), enable_caching="yes")
    (tmp_path / "k.npy").write_bytes(b"garbage")

    with pytest.raises(ValueError) as caught:
        make_store(tmp_path)._load_entry("k")

    assert "enable_caching" not in str(caught.value)


def test_a_failed_load_leaves_tracking_unchanged(tmp_path: Path) -> None:
    write_original_pair(tmp_path, "k", np.arange(3), schema_version=2)
    store = make_store(tmp_path)

    with pytest.raises(ValueError):
        store["k"]

    assert store._store == {"k": None}


# -- directories that refuse writes (decided once per reload) -----------------------------------


@pytest.fixture
def refusing_writes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make every reload see a directory it may not write (root passes any permission check)."""
    monkeypatch.setattr(dbs, "directory_refuses_writes", lambda directory: True)


@pytest.mark.usefixtures("refusing_writes")
def test_a_directory_refusing_writes_maps_the_payload_read_only(tmp_path: Path) -> None:
    write_original_pair(tmp_path, "k", np.arange(4.0))

    reloaded = make_store(tmp_path)["k"]

    assert isinstance(reloaded.data, np.memmap)
    assert reloaded.data.flags.writeable is False
    assert reloaded.cache_path == tmp_path / "k.dat"
    reloaded.offload()
    with pytest.raises(PermissionError):
        reloaded.load("r+")
    reloaded.load("r")
    np.testing.assert_array_equal(reloaded.data, np.arange(4.0))
    assert sorted(os.listdir(tmp_path)) == ["k.meta.json", "k.npy"]


@pytest.mark.usefixtures("refusing_writes")
def test_an_offloaded_read_only_reload_offers_its_c_ordered_npy_payload_to_copy(tmp_path: Path) -> None:
    write_original_pair(tmp_path, "k", np.arange(4.0))
    reloaded = make_store(tmp_path)["k"]

    reloaded.offload()

    assert copyable_file(reloaded) == CopyableFile(tmp_path / "k.npy", npy_data_offset(tmp_path / "k.npy"))


@pytest.mark.usefixtures("refusing_writes")
def test_an_offloaded_read_only_reload_of_fortran_data_offers_no_file_to_copy(tmp_path: Path) -> None:
    write_original_pair(tmp_path, "k", np.asfortranarray(np.arange(12.0).reshape(3, 4)))
    reloaded = make_store(tmp_path)["k"]

    reloaded.offload()

    assert copyable_file(reloaded) is None


@pytest.mark.usefixtures("refusing_writes")
@pytest.mark.parametrize("order", ["C", "F"])
def test_an_offloaded_read_only_reload_is_rewritten_from_its_npy_payload(tmp_path: Path, order: str) -> None:
    array = np.arange(12, dtype=np.int32).reshape(3, 4)
    write_original_pair(tmp_path, "k", np.asfortranarray(array) if order == "F" else array)
    store = make_store(tmp_path)
    store["k"].offload()
    _rust._clear_faults()

    store.offload("k", pickle_container=True)

    assert (_rust._op_counts()["copy"] >= 1) is (order == "C")
    assert npy_header(tmp_path / "k.npy")[1] is False
    np.testing.assert_array_equal(np.load(tmp_path / "k.npy"), array)
    assert artefacts(tmp_path) == ["k.meta.json", "k.npy"]


def test_a_payload_with_trailing_bytes_replaced_while_mapped_is_refused_not_mixed(tmp_path: Path) -> None:
    np.save(tmp_path / "k.npy", np.arange(6.0))
    with open(tmp_path / "k.npy", "ab") as handle:
        handle.write(b"trailing bytes the header does not announce")
    directory = _rust.CacheDir.open(tmp_path)
    header, mapping = directory.read_npy("k.npy", map_mode="c")
    assert mapping is not None
    layout = layout_of(header, tmp_path / "k.npy")
    np.save(tmp_path / "new.npy", np.full(6, 9.0))
    os.replace(tmp_path / "new.npy", tmp_path / "k.npy")

    with pytest.raises(ValueError, match="was replaced while it was being mapped"):
        payload_memmap(directory, tmp_path / "k.npy", mapping, layout)
