"""``_memmap``: np.memmap instances over native FileMappings, built without NumPy opening a file."""

import gc
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from lazy_disk_cache import _rust
from lazy_disk_cache._memmap import as_memmap, mapping_of, open_memmap
from lazy_disk_cache.disk_backed_ndarray import DiskBackedNDArray


@pytest.fixture
def directory(tmp_path: Path) -> _rust.CacheDir:
    (tmp_path / "f.bin").write_bytes(np.arange(12, dtype=np.int32).tobytes())
    return _rust.CacheDir.open(tmp_path)


def _mapping(directory: _rust.CacheDir, mode: Any = "r+") -> _rust.FileMapping:
    return _rust.FileMapping.open(directory, "f.bin", mode=mode)


def test_as_memmap_returns_a_memmap_carrying_the_mapping(directory: _rust.CacheDir) -> None:
    mapping = _mapping(directory)

    array = as_memmap(mapping, (3, 4), np.int32)

    assert type(array) is np.memmap
    assert mapping_of(array) is mapping
    assert array._mmap is mapping  # type: ignore[attr-defined]
    assert (array.filename, array.offset, array.mode) == (mapping.path, 0, "r+")
    assert np.array_equal(array, np.arange(12).reshape(3, 4))


def test_as_memmap_accepts_an_explicit_filename(directory: _rust.CacheDir) -> None:
    array = as_memmap(_mapping(directory), (12,), np.int32, filename="/some/name.dat")

    assert array.filename == "/some/name.dat"


def test_as_memmap_supports_fortran_order(directory: _rust.CacheDir) -> None:
    array = as_memmap(_mapping(directory), (4, 3), np.int32, order="F")

    assert array.flags.f_contiguous
    assert np.array_equal(array, np.arange(12).reshape(3, 4).T)


def test_slices_stay_memmaps_and_keep_the_mapping(directory: _rust.CacheDir) -> None:
    mapping = _mapping(directory)
    array = as_memmap(mapping, (3, 4), np.int32)

    view = array[1:, ::2]

    assert type(view) is np.memmap
    assert mapping_of(view) is mapping


def test_a_view_keeps_the_mapping_alive_after_everything_else_is_gone(directory: _rust.CacheDir) -> None:
    view = as_memmap(_mapping(directory), (3, 4), np.int32)[2]
    gc.collect()

    assert np.array_equal(view, [8, 9, 10, 11])


def test_writes_through_a_shared_mapping_reach_the_file(tmp_path: Path, directory: _rust.CacheDir) -> None:
    array = as_memmap(_mapping(directory), (12,), np.int32)

    array[0] = 77
    array.flush()

    assert np.fromfile(tmp_path / "f.bin", dtype=np.int32)[0] == 77


def test_copy_on_write_mapping_is_private(tmp_path: Path, directory: _rust.CacheDir) -> None:
    array = as_memmap(_mapping(directory, "c"), (12,), np.int32)

    array[0] = 77
    array.flush()

    assert np.fromfile(tmp_path / "f.bin", dtype=np.int32)[0] == 0


def test_read_only_mapping_gives_an_unwritable_array(directory: _rust.CacheDir) -> None:
    array = as_memmap(_mapping(directory, "r"), (12,), np.int32)

    with pytest.raises(ValueError, match="read-only"):
        array[0] = 1


def test_the_mapping_cannot_be_closed_through_the_memmap(directory: _rust.CacheDir) -> None:
    array = as_memmap(_mapping(directory), (12,), np.int32)

    with pytest.raises(AttributeError):
        array._mmap.close()  # type: ignore[attr-defined]

    assert array[11] == 11


def test_ufunc_results_over_a_memmap_are_plain_arrays(directory: _rust.CacheDir) -> None:
    array = as_memmap(_mapping(directory), (12,), np.int32)

    assert type(array + 1) is np.ndarray


def test_open_memmap_maps_only_the_arrays_bytes(tmp_path: Path, directory: _rust.CacheDir) -> None:
    array = open_memmap(directory, "f.bin", (2,), np.int32, mode="r", offset=8)

    assert np.array_equal(array, [2, 3])
    assert array.offset == 8


def test_open_memmap_of_a_short_file_raises_value_error(directory: _rust.CacheDir) -> None:
    with pytest.raises(ValueError):
        open_memmap(directory, "f.bin", (13,), np.int32, mode="r")


def test_open_memmap_of_a_missing_file_raises_file_not_found(directory: _rust.CacheDir) -> None:
    with pytest.raises(FileNotFoundError) as caught:
        open_memmap(directory, "absent.bin", (1,), np.int32, mode="r")

    assert "absent.bin" in str(caught.value.filename)


@pytest.mark.parametrize(
    "array", [np.arange(3), np.arange(3)[1:], np.frombuffer(b"abcd", dtype=np.uint8)], ids=["own", "view", "bytes"]
)
def test_mapping_of_is_none_for_arrays_not_over_a_file_mapping(array: np.ndarray[Any, Any]) -> None:
    assert mapping_of(array) is None


def test_mapping_of_is_none_for_numpys_own_memmap(tmp_path: Path) -> None:
    array = np.memmap(tmp_path / "n.bin", dtype=np.uint8, mode="w+", shape=(4,))

    assert mapping_of(array) is None
    del array


def test_mapping_of_is_none_for_non_arrays() -> None:
    assert mapping_of([1, 2]) is None


def test_entry_buffers_are_memmaps_named_after_the_dat(tmp_path: Path) -> None:
    entry = DiskBackedNDArray(np.arange(4), cache_path=tmp_path / "e", enable_caching=True)

    assert isinstance(entry.data, np.memmap)
    assert entry.data.filename == os.fspath(tmp_path / "e.dat")
    entry.offload()
    entry.load("c")
    assert entry.data.mode == "c"
