"""Bit-exact round trips through the .dat for every supported dtype and memory layout."""

import copy
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray

from lazy_disk_cache.disk_backed_ndarray import DiskBackedNDArray
from lazy_disk_cache.lazy_disk_cache import LoadMode


def _structured() -> NDArray[np.void]:
    dtype = np.dtype([("x", "<f8"), ("y", ">i4"), ("tag", "S3"), ("ok", "?")])
    return np.array([(1.5, -2, b"abc", True), (np.nan, 7, b"", False)], dtype=dtype)


SOURCES = {
    "zero_d": np.array(3.25),
    "zero_d_int": np.array(-7, dtype=np.int8),
    "empty_1d": np.zeros(0, dtype=np.float32),
    "empty_2d": np.zeros((0, 3), dtype=np.int16),
    "empty_inner": np.zeros((4, 0), dtype=np.int16),
    "bool": np.array([True, False, True]),
    "complex": np.array([1 + 2j, -3.5j, np.inf], dtype=np.complex128),
    "complex64": np.arange(6, dtype=np.complex64).reshape(2, 3) * (1 - 1j),
    "datetime": np.array(["2024-01-01T12:00", "NaT", "1970-01-01"], dtype="datetime64[s]"),
    "timedelta": np.array([1, -2, 3], dtype="timedelta64[ms]"),
    "bytes": np.array([b"a", b"bcd", b""], dtype="S4"),
    "unicode": np.array(["\u00e9", "\uff23\uff2f\uff2e", ""], dtype="U4"),
    "structured": _structured(),
    "big_endian": np.arange(10, dtype=">i4"),
    "float16": np.linspace(-1, 1, 9, dtype=np.float16),
    "nan_payloads": np.array([0x7FF8000000000001, 0xFFF0000000000001], dtype=np.uint64).view(np.float64),
    "fortran": np.asfortranarray(np.arange(24, dtype=np.float64).reshape(2, 3, 4)),
    "strided": np.arange(100, dtype=np.int32).reshape(10, 10)[::3, ::2],
    "negative_strides": np.arange(20, dtype=np.int64)[::-1],
    "transposed": np.arange(12, dtype=np.uint16).reshape(3, 4).T,
    "broadcast": np.broadcast_to(np.arange(4, dtype=np.float32), (5, 4)),
    "unaligned": np.frombuffer(b"\x00" + np.arange(5, dtype=np.float64).tobytes(), dtype=np.float64, offset=1),
}


def _assert_bit_exact(actual: NDArray[Any], expected: NDArray[Any]) -> None:
    assert actual.shape == expected.shape
    assert actual.dtype == expected.dtype
    assert np.ascontiguousarray(actual).tobytes() == np.ascontiguousarray(expected).tobytes()


@pytest.mark.parametrize("name", list(SOURCES))
def test_round_trip_through_offload_and_load_is_bit_exact(tmp_path: Path, name: str) -> None:
    source = SOURCES[name]
    expected = source.copy()
    entry = DiskBackedNDArray(source, cache_path=tmp_path / name, enable_caching=True)

    entry.offload()
    entry.load()

    _assert_bit_exact(np.asarray(entry.data), expected)


@pytest.mark.parametrize("name", [name for name, source in SOURCES.items() if source.size])
def test_dat_file_holds_the_array_in_c_order(tmp_path: Path, name: str) -> None:
    source = SOURCES[name]

    entry = DiskBackedNDArray(source, cache_path=tmp_path / name, enable_caching=True)

    assert entry.cache_path is not None
    assert entry.cache_path.read_bytes() == np.ascontiguousarray(source).tobytes()


EMPTY = [name for name, source in SOURCES.items() if not source.size]


@pytest.mark.parametrize("name", EMPTY)
def test_an_empty_array_gets_a_one_byte_dat_that_np_memmap_opens(tmp_path: Path, name: str) -> None:
    source = SOURCES[name]

    entry = DiskBackedNDArray(source, cache_path=tmp_path / name, enable_caching=True)

    assert entry.cache_path is not None
    assert entry.cache_path.read_bytes() == b"\x00"
    reopened = np.memmap(entry.cache_path, dtype=source.dtype, mode="r", shape=source.shape)
    assert reopened.shape == source.shape
    assert np.asarray(entry).shape == source.shape


@pytest.mark.parametrize("route", ["w+", "deepcopy", "ephemeral"])
def test_every_route_that_writes_an_empty_dat_writes_one_byte(tmp_path: Path, route: str) -> None:
    source = np.zeros((0, 4), dtype=np.float64)
    entry = DiskBackedNDArray(source, cache_path=tmp_path / "e", enable_caching=True)
    entry.offload()

    if route == "w+":
        entry.load("w+")
        written = entry
    elif route == "deepcopy":
        written = copy.deepcopy(entry)
    else:
        written = DiskBackedNDArray(source, enable_caching=True)

    assert written.cache_path is not None
    assert written.cache_path.read_bytes() == b"\x00"
    assert np.asarray(written).shape == (0, 4)


@pytest.mark.parametrize("name", list(SOURCES))
def test_round_trip_back_to_ram_is_bit_exact(tmp_path: Path, name: str) -> None:
    source = SOURCES[name]
    entry = DiskBackedNDArray(source, cache_path=tmp_path / name, enable_caching=True)
    entry.offload()

    entry.disable_caching()

    assert type(entry.data) is np.ndarray
    _assert_bit_exact(entry.data, source)


def test_zero_d_entry_supports_scalar_indexing_and_asarray(tmp_path: Path) -> None:
    entry = DiskBackedNDArray(np.array(2.5), cache_path=tmp_path / "z", enable_caching=True, automatic_offloading=True)

    assert entry[()] == 2.5
    assert np.asarray(entry).shape == ()
    assert entry.offloaded


def test_empty_entry_supports_load_modes(tmp_path: Path) -> None:
    entry = DiskBackedNDArray(np.zeros((0, 5)), cache_path=tmp_path / "e", enable_caching=True)

    modes: tuple[LoadMode, ...] = ("r", "r+", "c", "w+")
    for mode in modes:
        entry.offload()
        entry.load(mode)
        assert entry.data.shape == (0, 5)
