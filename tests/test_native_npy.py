"""`.npy` files through the native layer: CommitBatch output loads in NumPy, NumPy output decodes."""

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from numpy.lib import format as npy_format
from numpy.typing import NDArray

from lazy_disk_cache import _rust
from listing import artefacts

CHUNK = 1 << 20


def _descr_literal(array: NDArray[Any]) -> str:
    return repr(npy_format.dtype_to_descr(array.dtype))


def _add(batch: _rust.CommitBatch, key: str, array: NDArray[Any]) -> None:
    fortran = bool(array.flags.f_contiguous and not array.flags.c_contiguous)
    batch.add_npy(
        key,
        descr=_descr_literal(array),
        fortran_order=fortran,
        shape=array.shape,
        nbytes=array.nbytes,
        meta=json.dumps({"key": key}).encode(),
        source=np.ravel(array, order="A").data if array.size else b"",
    )


def _mapped(cache: _rust.CacheDir, name: str) -> NDArray[Any]:
    header = cache.read_header(name)
    dtype = npy_format.descr_to_dtype(eval(header.descr))  # literal text from the header
    mapping = _rust.FileMapping.open(cache, name, offset=header.data_offset)
    order = "F" if header.fortran_order else "C"
    return np.ndarray(header.shape, dtype=dtype, buffer=mapping, order=order)  # type: ignore[arg-type]


STRUCTURED = np.array([(1.5, 2), (3.5, 4)], dtype=[("x", "<f8"), ("cls", "u1")])
SAMPLES: dict[str, NDArray[Any]] = {
    "float64_2d": np.arange(12, dtype=np.float64).reshape(3, 4),
    "int32_1d": np.arange(5, dtype=np.int32),
    "big_endian": np.arange(6, dtype=">i4"),
    "structured": STRUCTURED,
    "zero_d": np.array(3.25),
    "empty": np.zeros((0, 3), dtype=np.float32),
    "fortran": np.asfortranarray(np.arange(6, dtype=np.int16).reshape(2, 3)),
}


@pytest.mark.parametrize("case", sorted(SAMPLES))
def test_committed_npy_loads_with_numpy_and_payload_at_4096(
    tmp_path: Path, cache_dir: _rust.CacheDir, case: str
) -> None:
    array = SAMPLES[case]

    with cache_dir.begin_commit(chunk_bytes=CHUNK) as batch:
        _add(batch, "entry", array)
        batch.commit()

    loaded = np.load(tmp_path / "entry.npy")
    mapped = np.load(tmp_path / "entry.npy", mmap_mode="r")
    np.testing.assert_array_equal(loaded, array)
    assert loaded.dtype == array.dtype
    np.testing.assert_array_equal(mapped, array)
    expected_offset = 4096 if array.nbytes else cache_dir.read_header("entry.npy").data_offset
    assert mapped.offset == expected_offset
    assert (tmp_path / "entry.meta.json").read_bytes() == b'{"key": "entry"}'


def test_zero_byte_payload_uses_the_standard_64_byte_layout(cache_dir: _rust.CacheDir) -> None:
    with cache_dir.begin_commit(chunk_bytes=CHUNK) as batch:
        _add(batch, "empty", SAMPLES["empty"])
        batch.commit()

    header = cache_dir.read_header("empty.npy")

    assert header.data_offset % 64 == 0
    assert header.data_offset < 4096


@pytest.mark.parametrize("case", sorted(SAMPLES))
def test_numpy_saved_file_is_decoded_and_mapped_at_data_offset(
    tmp_path: Path, cache_dir: _rust.CacheDir, case: str
) -> None:
    array = SAMPLES[case]
    np.save(tmp_path / "saved.npy", array)

    header = cache_dir.read_header("saved.npy")

    assert header.shape == array.shape
    assert header.fortran_order == (array.flags.f_contiguous and not array.flags.c_contiguous and array.ndim > 1)
    assert header.file_len == (tmp_path / "saved.npy").stat().st_size
    assert header.version == (1, 0)
    np.testing.assert_array_equal(_mapped(cache_dir, "saved.npy"), array)


def test_read_npy_maps_the_payload_on_request_and_refuses_a_writable_map_mode(
    tmp_path: Path, cache_dir: _rust.CacheDir
) -> None:
    array = np.arange(6, dtype=np.int32)
    np.save(tmp_path / "saved.npy", array)

    header, mapping = cache_dir.read_npy("saved.npy", map_mode="c")
    _, unmapped = cache_dir.read_npy("saved.npy")

    assert unmapped is None
    assert mapping is not None
    assert (mapping.mode, mapping.offset) == ("c", header.data_offset)
    np.testing.assert_array_equal(np.frombuffer(mapping, dtype=np.int32), array)  # type: ignore[call-overload]
    for mode in ("r+", "w"):
        with pytest.raises(ValueError, match="map_mode"):
            cache_dir.read_npy("saved.npy", map_mode=mode)  # type: ignore[arg-type]


def test_format_2_header_is_decoded(tmp_path: Path, cache_dir: _rust.CacheDir) -> None:
    array = np.arange(4, dtype=np.uint16)
    with open(tmp_path / "v2.npy", "wb") as handle:
        npy_format.write_array(handle, array, version=(2, 0))

    header = cache_dir.read_header("v2.npy")

    assert header.version == (2, 0)
    np.testing.assert_array_equal(_mapped(cache_dir, "v2.npy"), array)


def test_corrupt_header_is_a_value_error(tmp_path: Path, cache_dir: _rust.CacheDir) -> None:
    (tmp_path / "bad.npy").write_bytes(b"\x93NUMPY\x01\x00\x10\x00{'descr': <f8}     \n")

    with pytest.raises(ValueError, match=r"bad\.npy: invalid \.npy header"):
        cache_dir.read_header("bad.npy")


def test_file_shorter_than_its_header_is_a_value_error(tmp_path: Path, cache_dir: _rust.CacheDir) -> None:
    np.save(tmp_path / "cut.npy", np.arange(3))
    (tmp_path / "cut.npy").write_bytes((tmp_path / "cut.npy").read_bytes()[:50])

    with pytest.raises(ValueError, match="header"):
        cache_dir.read_header("cut.npy")


def test_non_npy_file_is_a_value_error(tmp_path: Path, cache_dir: _rust.CacheDir) -> None:
    (tmp_path / "text.npy").write_text("hello")

    with pytest.raises(ValueError, match="magic"):
        cache_dir.read_header("text.npy")


def test_payload_from_source_file_copies_the_range(tmp_path: Path, cache_dir: _rust.CacheDir) -> None:
    array = np.arange(3000, dtype=np.float64)
    (tmp_path / "entry.dat").write_bytes(array.tobytes())

    with cache_dir.begin_commit(chunk_bytes=CHUNK) as batch:
        batch.add_npy(
            "entry",
            descr="'<f8'",
            fortran_order=False,
            shape=array.shape,
            nbytes=array.nbytes,
            meta=b"{}",
            source_file="entry.dat",
        )
        batch.commit()

    np.testing.assert_array_equal(np.load(tmp_path / "entry.npy"), array)


def test_leaving_the_batch_without_commit_removes_every_temp(tmp_path: Path, cache_dir: _rust.CacheDir) -> None:
    (tmp_path / "a.npy").write_bytes(b"previous")

    with cache_dir.begin_commit(chunk_bytes=CHUNK) as batch:
        _add(batch, "a", np.arange(3))
        _add(batch, "b", np.arange(4))
        assert batch.keys == ["a", "b"]

    assert batch.keys == []
    assert artefacts(tmp_path) == ["a.npy"]
    assert (tmp_path / "a.npy").read_bytes() == b"previous"


def test_failed_add_keeps_earlier_keys_ready_to_commit(tmp_path: Path, cache_dir: _rust.CacheDir) -> None:
    with cache_dir.begin_commit(chunk_bytes=CHUNK) as batch:
        _add(batch, "good", np.arange(3))
        with pytest.raises(ValueError, match="expected 100 bytes"):
            batch.add_npy(
                "bad", descr="'|u1'", fortran_order=False, shape=(100,), nbytes=100, meta=b"{}", source=[b"x"]
            )
        batch.commit()

    assert artefacts(tmp_path) == ["good.meta.json", "good.npy"]


def test_duplicate_key_in_one_batch_is_a_value_error(cache_dir: _rust.CacheDir) -> None:
    with cache_dir.begin_commit(chunk_bytes=CHUNK) as batch:
        _add(batch, "a", np.arange(3))

        with pytest.raises(ValueError, match="already"):
            _add(batch, "a", np.arange(3))


def test_source_and_source_file_are_mutually_exclusive(cache_dir: _rust.CacheDir) -> None:
    with cache_dir.begin_commit(chunk_bytes=CHUNK) as batch, pytest.raises(TypeError, match="exactly one"):
        batch.add_npy("a", descr="'|u1'", fortran_order=False, shape=(1,), nbytes=1, meta=b"{}")


def test_illegal_key_is_a_value_error(cache_dir: _rust.CacheDir) -> None:
    with cache_dir.begin_commit(chunk_bytes=CHUNK) as batch, pytest.raises(ValueError, match="invalid artefact"):
        batch.add_npy("a/b", descr="'|u1'", fortran_order=False, shape=(1,), nbytes=1, meta=b"{}", source=b"x")
