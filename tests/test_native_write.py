"""Atomic writes through the native layer: replacement, temps, symlinks, modes, GIL release."""

import errno
import os
import signal
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray

from lazy_disk_cache import _rust

CHUNK = 1 << 20


def _array_of(mapping: _rust.FileMapping, dtype: type[np.generic]) -> NDArray[Any]:
    """The mapping as a flat array (NumPy's stubs do not know the buffer protocol before 3.12)."""
    return np.frombuffer(mapping, dtype=dtype)  # type: ignore[call-overload,no-any-return]


def _bytes_of(mapping: _rust.FileMapping) -> bytes:
    return _array_of(mapping, np.uint8).tobytes()


def test_atomic_write_replaces_file_and_leaves_no_temp(tmp_path: Path, cache_dir: _rust.CacheDir) -> None:
    (tmp_path / "x.dat").write_bytes(b"old content")
    payload = np.arange(1000, dtype=np.int64)

    cache_dir.write_file("x.dat", payload, chunk_bytes=CHUNK, durable=True)

    assert (tmp_path / "x.dat").read_bytes() == payload.tobytes()
    assert sorted(os.listdir(tmp_path)) == ["x.dat"]


def test_write_returns_writable_mapping_of_new_content(cache_dir: _rust.CacheDir) -> None:
    payload = np.arange(12, dtype=np.float32)

    mapping = cache_dir.write_file("x.dat", payload, chunk_bytes=8, durable=False)

    assert (mapping.mode, mapping.offset, mapping.length, mapping.readonly) == ("r+", 0, payload.nbytes, False)
    np.testing.assert_array_equal(_array_of(mapping, np.float32), payload)


def test_planted_symlink_at_temp_name_is_not_followed(tmp_path: Path) -> None:
    inside = tmp_path / "cache"
    inside.mkdir()
    outside = tmp_path / "outside.txt"
    outside.write_bytes(b"must stay")
    (inside / "x.dat.tmp").symlink_to(outside)
    cache = _rust.CacheDir.open(inside)

    cache.write_file("x.dat", b"new data", chunk_bytes=CHUNK, durable=True)

    assert outside.read_bytes() == b"must stay"
    assert (inside / "x.dat").read_bytes() == b"new data"
    assert not (inside / "x.dat.tmp").is_symlink()
    assert sorted(os.listdir(inside)) == ["x.dat"]


def test_replacement_keeps_the_destination_mode(tmp_path: Path, cache_dir: _rust.CacheDir) -> None:
    target = tmp_path / "x.dat"
    target.write_bytes(b"old")
    target.chmod(0o640)

    cache_dir.write_file("x.dat", b"new", chunk_bytes=CHUNK, durable=False)

    assert stat.S_IMODE(target.stat().st_mode) == 0o640


def test_new_file_gets_default_mode_minus_umask(tmp_path: Path, cache_dir: _rust.CacheDir) -> None:
    old_umask = os.umask(0o027)
    try:
        cache_dir.write_file("x.dat", b"new", chunk_bytes=CHUNK, durable=False)
    finally:
        os.umask(old_umask)

    assert stat.S_IMODE((tmp_path / "x.dat").stat().st_mode) == 0o640


def test_iterable_source_is_written_block_by_block(tmp_path: Path, cache_dir: _rust.CacheDir) -> None:
    rows = np.arange(30, dtype=np.float64).reshape(10, 3)
    blocks = (rows[start : start + 4].data for start in range(0, 10, 4))

    cache_dir.write_file("x.dat", blocks, nbytes=rows.nbytes, chunk_bytes=16, durable=True)

    np.testing.assert_array_equal(np.fromfile(tmp_path / "x.dat").reshape(10, 3), rows)


def test_iterable_source_with_wrong_total_raises_and_keeps_old_file(tmp_path: Path, cache_dir: _rust.CacheDir) -> None:
    (tmp_path / "x.dat").write_bytes(b"old")

    with pytest.raises(ValueError, match="expected 100 bytes"):
        cache_dir.write_file("x.dat", [b"a" * 40, b"b" * 40], nbytes=100, chunk_bytes=CHUNK, durable=False)

    assert (tmp_path / "x.dat").read_bytes() == b"old"
    assert sorted(os.listdir(tmp_path)) == ["x.dat"]


def test_iterable_source_without_nbytes_is_a_type_error(cache_dir: _rust.CacheDir) -> None:
    with pytest.raises(TypeError, match="nbytes"):
        cache_dir.write_file("x.dat", [b"abc"], chunk_bytes=CHUNK, durable=False)


def test_exception_from_the_source_iterator_removes_the_temp(tmp_path: Path, cache_dir: _rust.CacheDir) -> None:
    def failing_blocks() -> Iterator[bytes]:
        yield b"abcd"
        raise RuntimeError("source failed")

    with pytest.raises(RuntimeError, match="source failed"):
        cache_dir.write_file("x.dat", failing_blocks(), nbytes=8, chunk_bytes=CHUNK, durable=False)

    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize(
    "make",
    [
        lambda: np.arange(20, dtype=np.int32)[::2],
        lambda: np.asfortranarray(np.arange(300, dtype=np.float64).reshape(12, 25)),
        lambda: np.arange(60, dtype=np.int16).reshape(3, 4, 5)[::-1, :, ::-2].transpose(2, 0, 1),
        lambda: np.zeros((6, 4), dtype=[("x", "<f4"), ("c", "u1")])[:, ::3],
        lambda: np.broadcast_to(np.arange(7, dtype=np.uint8), (5, 7)),
    ],
    ids=["step", "fortran", "reversed-transposed", "structured", "broadcast"],
)
def test_non_contiguous_source_is_written_in_c_order(tmp_path: Path, cache_dir: _rust.CacheDir, make: Any) -> None:
    source = make()
    assert not source.flags.c_contiguous

    mapping = cache_dir.write_file("x.dat", source, chunk_bytes=7, durable=False)

    assert (tmp_path / "x.dat").read_bytes() == np.ascontiguousarray(source).tobytes()
    assert mapping.length == source.nbytes


def test_non_contiguous_destination_is_rejected(tmp_path: Path, cache_dir: _rust.CacheDir) -> None:
    (tmp_path / "x.dat").write_bytes(bytes(80))
    strided = np.zeros(20, dtype=np.int32)[::2]

    with pytest.raises(ValueError, match="C-contiguous"):
        cache_dir.read_into("x.dat", 0, strided.data, chunk_bytes=CHUNK)

    assert not strided.any()


def test_write_zeroed_creates_zero_filled_file(tmp_path: Path, cache_dir: _rust.CacheDir) -> None:
    (tmp_path / "z.dat").write_bytes(b"old content here")

    mapping = cache_dir.write_zeroed("z.dat", 4096, durable=True)

    assert _bytes_of(mapping) == bytes(4096)
    assert (tmp_path / "z.dat").stat().st_size == 4096


def test_copy_range_replaces_destination_with_source_range(tmp_path: Path, cache_dir: _rust.CacheDir) -> None:
    source = np.arange(4096, dtype=np.uint8).tobytes() * 4
    (tmp_path / "src.dat").write_bytes(source)

    mapping = cache_dir.copy_range("src.dat", 4096, "dst.dat", 8192 + 100, chunk_bytes=CHUNK, durable=True)

    assert _bytes_of(mapping) == source[4096 : 4096 + 8192 + 100]
    assert (tmp_path / "dst.dat").read_bytes() == source[4096 : 4096 + 8192 + 100]


def test_copy_range_from_short_source_is_a_value_error(tmp_path: Path, cache_dir: _rust.CacheDir) -> None:
    (tmp_path / "src.dat").write_bytes(b"short")

    with pytest.raises(ValueError, match=r"src\.dat"):
        cache_dir.copy_range("src.dat", 0, "dst.dat", 100, chunk_bytes=CHUNK, durable=False)

    assert sorted(os.listdir(tmp_path)) == ["src.dat"]


def test_read_into_fills_destination_from_offset(tmp_path: Path, cache_dir: _rust.CacheDir) -> None:
    values = np.arange(100, dtype=np.int64)
    (tmp_path / "x.dat").write_bytes(values.tobytes())
    dest = np.empty(10, dtype=np.int64)

    cache_dir.read_into("x.dat", 8 * 50, dest.data, chunk_bytes=CHUNK)

    np.testing.assert_array_equal(dest, values[50:60])


def test_read_into_past_end_of_file_is_a_value_error(tmp_path: Path, cache_dir: _rust.CacheDir) -> None:
    (tmp_path / "x.dat").write_bytes(bytes(16))

    with pytest.raises(ValueError, match=r"x\.dat"):
        cache_dir.read_into("x.dat", 8, np.empty(4, dtype=np.int64).data, chunk_bytes=CHUNK)


def test_read_into_read_only_destination_is_rejected(tmp_path: Path, cache_dir: _rust.CacheDir) -> None:
    (tmp_path / "x.dat").write_bytes(bytes(16))

    with pytest.raises(ValueError, match="read-only"):
        cache_dir.read_into("x.dat", 0, b"0123456789abcdef", chunk_bytes=CHUNK)


def test_unlink_all_reports_failures_and_ignores_missing(tmp_path: Path, cache_dir: _rust.CacheDir) -> None:
    (tmp_path / "a.dat").write_bytes(b"a")
    (tmp_path / "sub").mkdir()

    failed = cache_dir.unlink_all(["a.dat", "missing.dat", "sub"])

    assert not (tmp_path / "a.dat").exists()
    assert [name for name, _ in failed] == ["sub"]
    assert isinstance(failed[0][1], OSError)
    assert failed[0][1].filename == str(tmp_path / "sub")


@pytest.mark.usefixtures("clean_faults")
def test_durable_unlink_all_fsyncs_the_directory_once(tmp_path: Path, cache_dir: _rust.CacheDir) -> None:
    for name in ("a.dat", "b.dat"):
        (tmp_path / name).write_bytes(b"x")

    assert cache_dir.unlink_all(["a.dat", "b.dat"], durable=True) == []

    assert _rust._op_counts()["dir_fsync"] == 1
    assert os.listdir(tmp_path) == []


@pytest.mark.usefixtures("clean_faults")
def test_durable_unlink_all_raises_a_failed_directory_fsync(tmp_path: Path, cache_dir: _rust.CacheDir) -> None:
    (tmp_path / "a.dat").write_bytes(b"x")
    _rust._inject_fault("dir_fsync", 1, errno.EIO)

    with pytest.raises(OSError) as failure:
        cache_dir.unlink_all(["a.dat"], durable=True)

    assert failure.value.errno == errno.EIO
    assert failure.value.filename == str(tmp_path)


def test_unlink_all_unlinks_a_symlink_not_its_target(tmp_path: Path, cache_dir: _rust.CacheDir) -> None:
    target = tmp_path / "target.bin"
    target.write_bytes(b"keep")
    (tmp_path / "link.dat").symlink_to(target)

    assert cache_dir.unlink_all(["link.dat"]) == []

    assert target.read_bytes() == b"keep"
    assert not (tmp_path / "link.dat").is_symlink()


def test_open_create_makes_missing_parents(tmp_path: Path) -> None:
    nested = tmp_path / "a" / "b" / "c"

    cache = _rust.CacheDir.open(nested, create=True)

    assert nested.is_dir()
    assert cache.path == str(nested)


def test_open_resolves_a_symlinked_root(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "link").symlink_to(real)

    cache = _rust.CacheDir.open(tmp_path / "link")

    assert cache.path == str(real)


def test_write_file_releases_the_gil(cache_dir: _rust.CacheDir) -> None:
    # Ticks are counted only while the native code writes a block: the flag is set right
    # before a block is handed over and cleared when the next one is pulled, so the counter
    # can only run in between if the write released the GIL.
    block = np.ones(32 << 20, dtype=np.uint8)
    writing = threading.Event()
    done = threading.Event()
    start = threading.Barrier(2)
    ticks_during_write = 0

    def blocks() -> Iterator[memoryview]:
        start.wait()
        for _ in range(8):
            writing.set()
            yield block.data
            writing.clear()

    def count() -> None:
        nonlocal ticks_during_write
        start.wait()
        while not done.is_set():
            if writing.is_set():
                ticks_during_write += 1

    counter = threading.Thread(target=count)
    counter.start()
    try:
        cache_dir.write_file("big.dat", blocks(), nbytes=8 * block.nbytes, chunk_bytes=8 << 20, durable=False)
    finally:
        done.set()
        counter.join()

    assert ticks_during_write > 0, "the counter never ran while a block was being written"


class _AlarmError(Exception):
    """Raised by the test's signal handler."""


def _raise_alarm(signum: int, frame: FrameType | None) -> None:
    raise _AlarmError


def _signal_once_writing(thread_id: int, done: threading.Event) -> None:
    """Send SIGALRM to ``thread_id`` once the native write has written its first piece.

    The write releases the GIL between pieces, so this thread sees the counter move; the handler
    then runs at the write's next signal check, never in the test's own code before or after it.
    """
    while not done.is_set():
        if _rust._op_counts()["write"] >= 1:
            signal.pthread_kill(thread_id, signal.SIGALRM)
            return
        time.sleep(0.0005)


def test_signal_handler_exception_between_chunks_aborts_and_removes_the_temp(
    tmp_path: Path, cache_dir: _rust.CacheDir, clean_faults: None
) -> None:
    (tmp_path / "x.dat").write_bytes(b"old content")
    payload = np.ones(256 << 20, dtype=np.uint8)
    previous = signal.signal(signal.SIGALRM, _raise_alarm)
    done = threading.Event()
    sender = threading.Thread(target=_signal_once_writing, args=(threading.get_ident(), done))
    try:
        sender.start()
        with pytest.raises(_AlarmError):
            cache_dir.write_file("x.dat", payload.data, chunk_bytes=64 << 10, durable=False)
    finally:
        done.set()
        sender.join()
        signal.signal(signal.SIGALRM, previous)

    assert _rust._op_counts()["write"] >= 1
    assert (tmp_path / "x.dat").read_bytes() == b"old content"
    assert sorted(os.listdir(tmp_path)) == ["x.dat"]
