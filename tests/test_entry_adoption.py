"""Store-reload adoption: an entry built over a mapping of its sibling ``<key>.npy`` copies nothing.

The store constructs ``cls(memmap, enable_caching=True, cache_path=<dir>/<key>.npy, ...)`` where
the memmap maps the ``.npy`` payload copy-on-write (``c``), or read-only (``r``) for a read-only
directory. These tests build entries exactly that way.
"""

import ast
import errno
import gc
import math
import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray

from lazy_disk_cache import _rust
from lazy_disk_cache._memmap import mapping_of, open_memmap
from lazy_disk_cache.disk_backed_ndarray import DiskBackedNDArray
from lazy_disk_cache.lazy_disk_cache import LoadMode
from listing import artefacts


def _stored(directory: Path, key: str, array: NDArray[Any]) -> None:
    np.save(directory / f"{key}.npy", array)


def _reload(directory: Path, key: str, mode: Any = "c", **settings: Any) -> DiskBackedNDArray:
    handle = _rust.CacheDir.open(directory)
    header = handle.read_header(f"{key}.npy")
    dtype = np.lib.format.descr_to_dtype(ast.literal_eval(header.descr))
    memmap = open_memmap(
        handle,
        f"{key}.npy",
        header.shape,
        dtype,
        mode=mode,
        offset=header.data_offset,
        order="F" if header.fortran_order else "C",
    )
    settings.setdefault("enable_caching", True)
    return DiskBackedNDArray(memmap, cache_path=directory / f"{key}.npy", **settings)


def _source() -> NDArray[np.float64]:
    return np.arange(20, dtype=np.float64).reshape(4, 5)


@pytest.fixture
def store_dir(tmp_path: Path) -> Path:
    _stored(tmp_path, "k", _source())
    return tmp_path


@pytest.fixture(autouse=True)
def _no_faults() -> Any:
    yield
    _rust._clear_faults()


def test_reloaded_entry_adopts_the_payload_mapping_without_creating_a_dat(store_dir: Path) -> None:
    entry = _reload(store_dir, "k")

    assert entry.cache_path == store_dir / "k.dat"
    assert (entry.cache_enabled, entry.offloaded) == (True, False)
    assert not (store_dir / "k.dat").exists()
    assert isinstance(entry.data, np.memmap)
    mapping = mapping_of(entry.data)
    assert mapping is not None and mapping.mode == "c"
    assert np.array_equal(entry.data, _source())


def test_writes_before_materialisation_never_reach_the_committed_npy(store_dir: Path) -> None:
    entry = _reload(store_dir, "k")

    entry.data[0, 0] = -1.0

    assert np.array_equal(np.load(store_dir / "k.npy"), _source())


def test_first_offload_materialises_the_dat_with_the_users_writes(store_dir: Path) -> None:
    entry = _reload(store_dir, "k")
    entry.data[1, 2] = 99.0

    entry.offload()

    on_disk = np.fromfile(store_dir / "k.dat", dtype=np.float64).reshape(4, 5)
    expected = _source()
    expected[1, 2] = 99.0
    assert np.array_equal(on_disk, expected)
    assert np.array_equal(np.load(store_dir / "k.npy"), _source())
    assert entry.offloaded


def test_after_materialisation_load_maps_the_dat_read_write(store_dir: Path) -> None:
    entry = _reload(store_dir, "k")
    entry.offload()

    entry.load()
    entry.data[0, 0] = 5.5
    entry.offload()

    assert np.fromfile(store_dir / "k.dat", dtype=np.float64)[0] == 5.5
    assert np.load(store_dir / "k.npy")[0, 0] == 0.0


def test_materialisation_failure_keeps_the_buffer_and_a_retry_works(store_dir: Path) -> None:
    entry = _reload(store_dir, "k")
    entry.data[3, 4] = 42.0
    _rust._inject_fault("reserve", 1, errno.ENOSPC)

    with pytest.raises(OSError) as caught:
        entry.offload()

    assert caught.value.errno == errno.ENOSPC
    assert caught.value.filename is not None
    assert entry.offloaded is False
    assert entry.data[3, 4] == 42.0
    assert not (store_dir / "k.dat").exists()
    entry.offload()
    assert np.fromfile(store_dir / "k.dat", dtype=np.float64)[-1] == 42.0


def test_convert_to_memmap_on_an_adopted_entry_materialises(store_dir: Path) -> None:
    entry = _reload(store_dir, "k")

    entry._convert_to_memmap()

    assert (store_dir / "k.dat").exists()
    mapping = mapping_of(entry.data)
    assert mapping is not None and mapping.mode == "r+"


def test_disable_caching_on_an_adopted_entry_keeps_writes_and_creates_nothing(store_dir: Path) -> None:
    entry = _reload(store_dir, "k")
    entry.data[0, 1] = -7.0

    entry.disable_caching()

    assert type(entry.data) is np.ndarray
    assert entry.data[0, 1] == -7.0
    assert not (store_dir / "k.dat").exists()


def test_materialisation_makes_this_process_the_owner(store_dir: Path) -> None:
    entry = _reload(store_dir, "k")
    entry._owner_pid = -1
    entry.data[0, 0] = -2.0

    entry.offload()

    assert entry._owner_pid != -1
    assert entry._lease.owner_pid == entry._owner_pid


def test_gc_removes_the_materialised_dat_but_never_the_codec_pair(store_dir: Path) -> None:
    (store_dir / "k.meta.json").write_text("{}")
    entry = _reload(store_dir, "k")
    entry.data[0, 0] = -2.0
    entry.offload()
    assert (store_dir / "k.dat").exists()

    del entry
    gc.collect()

    assert artefacts(store_dir) == ["k.meta.json", "k.npy"]


def test_gc_of_an_unmaterialised_entry_leaves_the_directory_unchanged(store_dir: Path) -> None:
    entry = _reload(store_dir, "k")

    del entry
    gc.collect()

    assert sorted(p.name for p in store_dir.iterdir()) == ["k.npy"]


def test_automatic_offloading_at_construction_offloads_onto_the_payload_without_a_dat(store_dir: Path) -> None:
    entry = _reload(store_dir, "k", automatic_offloading=True)

    assert entry.offloaded
    assert not (store_dir / "k.dat").exists()
    assert np.array_equal(entry[2], _source()[2])
    assert not (store_dir / "k.dat").exists()


def test_pickling_an_adopted_entry_materialises_first(store_dir: Path) -> None:
    entry = _reload(store_dir, "k")
    entry.data[0, 0] = 8.0

    copy = pickle.loads(pickle.dumps(entry))

    assert (store_dir / "k.dat").exists()
    assert copy[0, 0] == 8.0


def test_fortran_ordered_payload_is_adopted_and_materialised_in_c_order(tmp_path: Path) -> None:
    source = np.asfortranarray(_source())
    _stored(tmp_path, "f", source)

    entry = _reload(tmp_path, "f")
    assert not (tmp_path / "f.dat").exists()
    entry.data[0, 0] = source[0, 0]  # a write, of the same value, makes the offload materialise
    entry.offload()

    assert np.array_equal(np.fromfile(tmp_path / "f.dat", dtype=np.float64).reshape(4, 5), source)
    assert np.array_equal(entry[...], source)


def test_zero_size_payload_is_adopted(tmp_path: Path) -> None:
    _stored(tmp_path, "z", np.zeros((0, 3), dtype=np.int32))

    entry = _reload(tmp_path, "z")
    entry.offload()

    assert np.asarray(entry).shape == (0, 3)


def test_a_mapping_of_another_keys_npy_is_copied_not_adopted(tmp_path: Path) -> None:
    _stored(tmp_path, "other", _source())
    handle = _rust.CacheDir.open(tmp_path)
    header = handle.read_header("other.npy")
    memmap = open_memmap(handle, "other.npy", (4, 5), np.float64, mode="c", offset=header.data_offset)

    entry = DiskBackedNDArray(memmap, enable_caching=True, cache_path=tmp_path / "k.npy")

    assert (tmp_path / "k.dat").exists()
    mapping = mapping_of(entry.data)
    assert mapping is not None and mapping.mode == "r+"


def test_a_partial_view_of_the_payload_is_copied_not_adopted(store_dir: Path) -> None:
    handle = _rust.CacheDir.open(store_dir)
    header = handle.read_header("k.npy")
    memmap = open_memmap(handle, "k.npy", (4, 5), np.float64, mode="c", offset=header.data_offset)

    entry = DiskBackedNDArray(memmap[1:], enable_caching=True, cache_path=store_dir / "k.npy")

    assert (store_dir / "k.dat").exists()
    assert np.array_equal(entry.data, _source()[1:])


def test_a_writable_shared_mapping_is_never_adopted(store_dir: Path) -> None:
    handle = _rust.CacheDir.open(store_dir)
    header = handle.read_header("k.npy")
    memmap = open_memmap(handle, "k.npy", (4, 5), np.float64, mode="r+", offset=header.data_offset)

    entry = DiskBackedNDArray(memmap, enable_caching=True, cache_path=store_dir / "k.npy")
    entry.data[0, 0] = 123.0

    assert (store_dir / "k.dat").exists()
    assert np.load(store_dir / "k.npy")[0, 0] == 0.0


# -- read-only directory (mode r) ------------------------------------------------------------


def test_read_only_adoption_is_unwritable_and_creates_nothing(store_dir: Path) -> None:
    entry = _reload(store_dir, "k", mode="r")

    assert entry.cache_enabled
    assert entry.cache_path == store_dir / "k.dat"
    assert not entry.data.flags.writeable
    assert sorted(p.name for p in store_dir.iterdir()) == ["k.npy"]


def test_read_only_offload_just_drops_the_buffer(store_dir: Path) -> None:
    entry = _reload(store_dir, "k", mode="r")

    entry.offload()

    assert entry.offloaded
    assert sorted(p.name for p in store_dir.iterdir()) == ["k.npy"]


@pytest.mark.parametrize("mode", ["r", "c"])
def test_read_only_load_remaps_the_payload(store_dir: Path, mode: LoadMode) -> None:
    entry = _reload(store_dir, "k", mode="r")
    entry.offload()

    entry.load(mode)

    assert np.array_equal(entry.data, _source())
    assert entry.data.flags.writeable is (mode == "c")
    assert sorted(p.name for p in store_dir.iterdir()) == ["k.npy"]


@pytest.mark.parametrize("mode", ["r+", "w+"])
def test_read_only_writable_load_raises_permission_error(store_dir: Path, mode: LoadMode) -> None:
    entry = _reload(store_dir, "k", mode="r")
    entry.offload()

    with pytest.raises(PermissionError) as caught:
        entry.load(mode)

    assert caught.value.errno == errno.EACCES
    assert caught.value.strerror == os.strerror(errno.EACCES)
    assert any("read-only cache directory" in note for note in caught.value.__notes__)
    assert entry.offloaded
    assert sorted(p.name for p in store_dir.iterdir()) == ["k.npy"]


def test_read_only_entry_with_auto_offloading_reads_on_access(store_dir: Path) -> None:
    entry = _reload(store_dir, "k", mode="r", automatic_offloading=True)

    row = entry[1]
    total = np.asarray(entry).sum()

    assert np.array_equal(row, _source()[1])
    assert total == _source().sum()
    assert entry.offloaded
    assert sorted(p.name for p in store_dir.iterdir()) == ["k.npy"]


def test_read_only_entry_data_property_loads_read_only(store_dir: Path) -> None:
    entry = _reload(store_dir, "k", mode="r")
    entry.offload()

    data = entry.data

    assert not data.flags.writeable
    assert math.isclose(float(data.sum()), float(_source().sum()))


# -- the first offload of an entry reopened from a store -----------------------------------------


def test_offloading_an_unwritten_reloaded_entry_creates_no_dat_and_stays_on_the_payload(store_dir: Path) -> None:
    entry = _reload(store_dir, "k")
    assert np.array_equal(entry.data, _source()), "read in full, never written"
    _rust._clear_faults()

    entry.offload()

    counts = _rust._op_counts()
    assert not (store_dir / "k.dat").exists()
    assert (counts["create"], counts["write"], counts["fsync"]) == (0, 0, 0)
    assert entry.offloaded
    np.testing.assert_array_equal(np.asarray(entry), _source())
    assert not (store_dir / "k.dat").exists(), "reading it back maps the payload again"


def test_one_written_page_makes_the_first_offload_materialise_the_dat_with_the_write(store_dir: Path) -> None:
    entry = _reload(store_dir, "k")
    entry.data[3, 4] = -7.0
    expected = _source()
    expected[3, 4] = -7.0

    entry.offload()

    assert np.array_equal(np.fromfile(store_dir / "k.dat", dtype=np.float64).reshape(4, 5), expected)
    np.testing.assert_array_equal(np.asarray(entry), expected)
    np.testing.assert_array_equal(np.load(store_dir / "k.npy"), _source())


def test_a_write_through_a_view_taken_before_is_kept_by_the_first_offload(store_dir: Path) -> None:
    entry = _reload(store_dir, "k")
    view = entry[1:3]

    view[0, 0] = 99.0
    entry.offload()

    assert np.fromfile(store_dir / "k.dat", dtype=np.float64).reshape(4, 5)[1, 0] == 99.0


def test_reading_an_offloaded_reloaded_entry_maps_its_payload_copy_on_write(store_dir: Path) -> None:
    entry = _reload(store_dir, "k")
    entry.offload()

    mapping = mapping_of(entry.data)
    entry.data[0, 1] = 5.0
    assert not (store_dir / "k.dat").exists()
    entry.offload()

    assert mapping is not None and mapping.mode == "c"
    np.testing.assert_array_equal(np.load(store_dir / "k.npy"), _source())
    assert np.fromfile(store_dir / "k.dat", dtype=np.float64)[1] == 5.0
    assert entry[0, 1] == 5.0


def test_an_explicit_read_write_load_writes_the_dat_from_the_payload_and_maps_it_shared(store_dir: Path) -> None:
    entry = _reload(store_dir, "k")
    entry.offload()

    entry.load("r+")
    mapping = mapping_of(entry.data)
    entry.data[2, 2] = -3.0

    assert mapping is not None and mapping.mode == "r+"
    expected = _source()
    expected[2, 2] = -3.0
    np.testing.assert_array_equal(np.fromfile(store_dir / "k.dat", dtype=np.float64).reshape(4, 5), expected)
    np.testing.assert_array_equal(np.load(store_dir / "k.npy"), _source())


def test_loading_an_offloaded_reloaded_entry_zero_filled_writes_its_own_dat(store_dir: Path) -> None:
    entry = _reload(store_dir, "k")
    entry.offload()

    entry.load("w+")
    entry.data[0, 0] = 1.0
    entry.offload()

    expected = np.zeros((4, 5))
    expected[0, 0] = 1.0
    np.testing.assert_array_equal(np.asarray(entry), expected)
    np.testing.assert_array_equal(np.load(store_dir / "k.npy"), _source())
    assert (store_dir / "k.dat").exists()


def test_a_written_page_is_materialised_with_the_rest_copied_from_the_payload_file(store_dir: Path) -> None:
    big = np.arange(512 * 1024, dtype=np.float64).reshape(1024, 512)
    _stored(store_dir, "b", big)
    entry = _reload(store_dir, "b")
    entry.data[700, 3] = -1.0
    expected = big.copy()
    expected[700, 3] = -1.0
    _rust._clear_faults()

    entry.offload()

    counts = _rust._op_counts()
    assert counts["copy"] >= 1, "the unwritten pages are copied from the payload file"
    assert counts["write"] == 1, "only the written page is written from memory"
    np.testing.assert_array_equal(np.fromfile(store_dir / "b.dat", dtype=np.float64).reshape(1024, 512), expected)


def test_an_offloaded_unwritten_entry_keeps_its_own_payload_when_a_newer_one_is_renamed_over_it(
    store_dir: Path,
) -> None:
    entry = _reload(store_dir, "k")
    entry.offload()

    replacement = store_dir / "replacement.npy"
    np.save(replacement, np.full((4, 5), 7.0))
    os.replace(replacement, store_dir / "k.npy")

    np.testing.assert_array_equal(np.asarray(entry), _source())
    entry.data[0, 0] = 1.0
    entry.offload()
    expected = _source()
    expected[0, 0] = 1.0
    np.testing.assert_array_equal(np.fromfile(store_dir / "k.dat", dtype=np.float64).reshape(4, 5), expected)


def test_a_write_through_a_view_kept_across_an_unwritten_offload_is_seen_by_the_next_load(store_dir: Path) -> None:
    entry = _reload(store_dir, "k")
    view = entry.data[2]
    entry.offload()

    view[1] = 55.0
    entry.load()

    assert entry[2, 1] == 55.0
    entry.offload()
    assert np.fromfile(store_dir / "k.dat", dtype=np.float64).reshape(4, 5)[2, 1] == 55.0


def _write_npy_with_descr(path: Path, descr: str, shape: tuple[int, ...], payload: bytes) -> None:
    """A version 1.0 ``.npy`` whose header names ``descr`` verbatim, with the payload at 4096."""
    text = f"{{'descr': {descr}, 'fortran_order': False, 'shape': {shape}, }}"
    header = text.encode("latin1").ljust(4096 - 10 - 1) + b"\n"
    path.write_bytes(b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header + payload)


def test_a_revived_copy_whose_npy_was_replaced_by_an_unreadable_descr_refuses_with_valueerror(
    store_dir: Path,
) -> None:
    entry = _reload(store_dir, "k")
    entry.offload()
    copy = pickle.loads(pickle.dumps(entry))
    # Python 2's long literal: the header's syntax is accepted, but no dtype can be read from it.
    _write_npy_with_descr(store_dir / "k.npy", "[('a', '<f8', (2L,))]", (4, 5), _source().tobytes())

    with pytest.raises(ValueError, match="no longer holds the array"):
        copy.load()


def test_a_revived_copy_reads_its_npy_where_the_header_now_puts_the_data(store_dir: Path) -> None:
    entry = _reload(store_dir, "k")
    entry.offload()
    copy = pickle.loads(pickle.dumps(entry))
    # The same array, committed again with its data at 4096 (np.save put it at 128).
    _write_npy_with_descr(store_dir / "k.npy", "'<f8'", (4, 5), _source().tobytes())

    copy.load()

    np.testing.assert_array_equal(copy.data, _source())
