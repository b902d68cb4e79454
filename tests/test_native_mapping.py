"""FileMapping: windows, modes, lifetime of arrays built on it, export counting, refusals."""

import gc
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray

from lazy_disk_cache import _rust


def _array_of(mapping: _rust.FileMapping, dtype: type[np.generic]) -> NDArray[Any]:
    """The mapping as a flat array (NumPy's stubs do not know the buffer protocol before 3.12)."""
    return np.frombuffer(mapping, dtype=dtype)  # type: ignore[call-overload,no-any-return]


def _write(path: Path, values: NDArray[Any]) -> None:
    path.write_bytes(values.tobytes())


def test_frombuffer_array_outlives_every_name_of_the_mapping(tmp_path: Path, cache_dir: _rust.CacheDir) -> None:
    _write(tmp_path / "x.dat", np.arange(1000, dtype=np.float64))
    mapping = _rust.FileMapping.open(cache_dir, "x.dat")
    array = _array_of(mapping, np.float64)

    del mapping
    gc.collect()

    np.testing.assert_array_equal(array, np.arange(1000, dtype=np.float64))


def test_ndarray_on_mapping_buffer_outlives_every_name_of_the_mapping(
    tmp_path: Path, cache_dir: _rust.CacheDir
) -> None:
    _write(tmp_path / "x.dat", np.arange(12, dtype=np.int32))
    mapping = _rust.FileMapping.open(cache_dir, "x.dat", mode="r+")
    array = np.ndarray((3, 4), np.int32, buffer=mapping)  # type: ignore[arg-type]
    view = array[1:, ::2]

    del mapping, array
    gc.collect()

    np.testing.assert_array_equal(view, np.arange(12, dtype=np.int32).reshape(3, 4)[1:, ::2])


def test_export_count_follows_memoryviews(tmp_path: Path, cache_dir: _rust.CacheDir) -> None:
    _write(tmp_path / "x.dat", np.zeros(16, dtype=np.uint8))
    mapping = _rust.FileMapping.open(cache_dir, "x.dat")
    assert mapping.exports == 0

    first = memoryview(mapping)  # type: ignore[arg-type]
    second = memoryview(mapping)  # type: ignore[arg-type]
    assert mapping.exports == 2

    first.release()
    del second
    gc.collect()
    assert mapping.exports == 0


def test_window_starts_at_an_unaligned_offset(tmp_path: Path, cache_dir: _rust.CacheDir) -> None:
    data = np.arange(256, dtype=np.uint8)
    _write(tmp_path / "x.dat", data)

    mapping = _rust.FileMapping.open(cache_dir, "x.dat", offset=100, length=50)

    assert (mapping.offset, mapping.length) == (100, 50)
    np.testing.assert_array_equal(_array_of(mapping, np.uint8), data[100:150])


def test_length_none_maps_to_end_of_file(tmp_path: Path, cache_dir: _rust.CacheDir) -> None:
    _write(tmp_path / "x.dat", np.arange(64, dtype=np.uint8))

    mapping = _rust.FileMapping.open(cache_dir, "x.dat", offset=60)

    np.testing.assert_array_equal(_array_of(mapping, np.uint8), [60, 61, 62, 63])


def test_short_file_is_refused_with_value_error(tmp_path: Path, cache_dir: _rust.CacheDir) -> None:
    _write(tmp_path / "x.dat", np.zeros(10, dtype=np.uint8))

    with pytest.raises(ValueError, match="expected 20 bytes, found 10"):
        _rust.FileMapping.open(cache_dir, "x.dat", offset=4, length=16)


def test_zero_length_window_is_an_empty_buffer(tmp_path: Path, cache_dir: _rust.CacheDir) -> None:
    (tmp_path / "empty.dat").write_bytes(b"")

    mapping = _rust.FileMapping.open(cache_dir, "empty.dat", mode="r+")

    assert mapping.length == 0
    assert _array_of(mapping, np.uint8).size == 0


def test_read_only_mapping_refuses_writable_export(tmp_path: Path, cache_dir: _rust.CacheDir) -> None:
    _write(tmp_path / "x.dat", np.zeros(8, dtype=np.uint8))
    mapping = _rust.FileMapping.open(cache_dir, "x.dat", mode="r")

    array = _array_of(mapping, np.uint8)

    assert mapping.readonly
    assert not array.flags.writeable
    with pytest.raises(ValueError, match="read-only"):
        array[0] = 1


def test_shared_writes_reach_the_file_after_flush(tmp_path: Path, cache_dir: _rust.CacheDir) -> None:
    _write(tmp_path / "x.dat", np.zeros(4, dtype=np.int64))
    mapping = _rust.FileMapping.open(cache_dir, "x.dat", mode="r+")

    _array_of(mapping, np.int64)[:] = [1, 2, 3, 4]
    mapping.flush()

    np.testing.assert_array_equal(np.fromfile(tmp_path / "x.dat", dtype=np.int64), [1, 2, 3, 4])


def test_copy_on_write_mapping_never_changes_the_file(tmp_path: Path, cache_dir: _rust.CacheDir) -> None:
    _write(tmp_path / "x.dat", np.zeros(4, dtype=np.int64))
    mapping = _rust.FileMapping.open(cache_dir, "x.dat", mode="c")

    array = _array_of(mapping, np.int64)
    array[:] = 7
    mapping.flush()

    np.testing.assert_array_equal(array, [7, 7, 7, 7])
    np.testing.assert_array_equal(np.fromfile(tmp_path / "x.dat", dtype=np.int64), [0, 0, 0, 0])


def test_mapping_reports_path_and_mode(tmp_path: Path, cache_dir: _rust.CacheDir) -> None:
    _write(tmp_path / "x.dat", np.zeros(4, dtype=np.uint8))

    mapping = _rust.FileMapping.open(cache_dir, "x.dat", mode="c")

    assert (mapping.path, mapping.mode, mapping.readonly) == (str(tmp_path / "x.dat"), "c", False)


def test_mapping_is_not_picklable(tmp_path: Path, cache_dir: _rust.CacheDir) -> None:
    _write(tmp_path / "x.dat", np.zeros(4, dtype=np.uint8))
    mapping = _rust.FileMapping.open(cache_dir, "x.dat")

    with pytest.raises(TypeError, match="pickle"):
        pickle.dumps(mapping)


def test_unknown_mode_is_a_value_error(tmp_path: Path, cache_dir: _rust.CacheDir) -> None:
    _write(tmp_path / "x.dat", np.zeros(4, dtype=np.uint8))

    with pytest.raises(ValueError, match="mode"):
        _rust.FileMapping.open(cache_dir, "x.dat", mode="w+")  # type: ignore[arg-type]


def test_missing_file_raises_file_not_found_with_errno_and_filename(tmp_path: Path, cache_dir: _rust.CacheDir) -> None:
    with pytest.raises(FileNotFoundError) as raised:
        _rust.FileMapping.open(cache_dir, "missing.dat")

    assert raised.value.errno == 2
    assert raised.value.filename == str(tmp_path / "missing.dat")


def test_read_write_mapping_refuses_a_symlink(tmp_path: Path, cache_dir: _rust.CacheDir) -> None:
    outside = tmp_path.parent / f"{tmp_path.name}-outside.dat"
    _write(outside, np.zeros(4, dtype=np.uint8))
    (tmp_path / "x.dat").symlink_to(outside)

    with pytest.raises(OSError, match=r"x\.dat") as raised:
        _rust.FileMapping.open(cache_dir, "x.dat", mode="r+")

    assert raised.value.errno == 40  # ELOOP: O_NOFOLLOW met a symlink
    outside.unlink()


@pytest.mark.parametrize("name", ["a/b", "..", ".", "x\0y", ""])
def test_illegal_name_is_a_value_error(cache_dir: _rust.CacheDir, name: str) -> None:
    with pytest.raises(ValueError, match="invalid artefact name"):
        _rust.FileMapping.open(cache_dir, name)
