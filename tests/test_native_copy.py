"""Range copies through the native layer: each mechanism byte-exact, faults surface cleanly.

``copy_range`` and ``add_npy(source_file=...)`` try a reflink (``FICLONERANGE``), then
``copy_file_range``, then a bounded bounce buffer. The fault seam makes the first two fail with
the errnos of filesystems that cannot do them, so the fallbacks run on any filesystem. The
reflink itself runs on a filesystem that can do it (``reflink_dir``: a loop-mounted xfs image
when the temporary directory cannot reflink), where ``FIEMAP`` shows whether the copy's blocks
are the source's blocks.
"""

import errno
import os
from pathlib import Path

import pytest

from extents import Block, block_map
from lazy_disk_cache import _rust

PAGE = 4096
# Three blocks and a tail: a reflink shares the blocks and leaves the tail to copy_file_range.
PAYLOAD_LEN = 3 * PAGE + 123
SMALL_CHUNK = 1000
BIG_CHUNK = 1 << 20


def _pattern(length: int, seed: int) -> bytes:
    return bytes((index * 31 + seed) % 256 for index in range(length))


def _write_source(directory: Path) -> bytes:
    """``src.npy``: a page of other bytes, then the payload; returns the payload."""
    payload = _pattern(PAYLOAD_LEN, 7)
    (directory / "src.npy").write_bytes(b"\xaa" * PAGE + payload)
    return payload


def _temps(directory: Path) -> list[str]:
    return sorted(name for name in os.listdir(directory) if name.endswith(".tmp"))


def _add_from_file(batch: _rust.CommitBatch, key: str, source_file: str, offset: int = 0) -> None:
    batch.add_npy(
        key,
        descr="'|u1'",
        fortran_order=False,
        shape=(PAYLOAD_LEN,),
        nbytes=PAYLOAD_LEN,
        meta=b"{}",
        source_file=source_file,
        source_offset=offset,
    )


def _force_bounce(clone_errno: int, kernel_copy_errno: int) -> None:
    """Fail the next reflink and the next ``copy_file_range`` as an incapable filesystem would."""
    _rust._inject_fault("copy", 1, clone_errno)
    _rust._inject_fault("copy", 2, kernel_copy_errno)


@pytest.mark.parametrize(
    ("src_offset", "length"),
    [(PAGE, PAYLOAD_LEN), (PAGE, 2 * PAGE), (100, PAYLOAD_LEN - 100), (PAGE + 1, 1), (PAGE, 0)],
)
def test_copy_range_is_byte_exact_for_aligned_and_unaligned_ranges(
    tmp_path: Path, cache_dir: _rust.CacheDir, src_offset: int, length: int
) -> None:
    payload = _write_source(tmp_path)
    source = b"\xaa" * PAGE + payload

    mapping = cache_dir.copy_range("src.npy", src_offset, "x.dat", length, chunk_bytes=SMALL_CHUNK, durable=True)

    assert mapping.length == length
    assert (tmp_path / "x.dat").read_bytes() == source[src_offset : src_offset + length]
    assert _temps(tmp_path) == []


@pytest.mark.usefixtures("clean_faults")
@pytest.mark.parametrize(
    ("clone_errno", "kernel_copy_errno"),
    [(errno.EOPNOTSUPP, errno.EXDEV), (errno.EXDEV, errno.EOPNOTSUPP), (errno.EINVAL, errno.ENOSYS)],
)
def test_copy_range_falls_back_to_the_bounce_buffer_byte_exact(
    tmp_path: Path, cache_dir: _rust.CacheDir, clone_errno: int, kernel_copy_errno: int
) -> None:
    payload = _write_source(tmp_path)
    (tmp_path / "x.dat").write_bytes(b"old")
    _force_bounce(clone_errno, kernel_copy_errno)

    cache_dir.copy_range("src.npy", PAGE, "x.dat", PAYLOAD_LEN, chunk_bytes=SMALL_CHUNK, durable=True)

    counts = _rust._op_counts()
    assert (tmp_path / "x.dat").read_bytes() == payload
    assert counts["copy"] == 2, counts
    assert counts["read"] >= 1, "the bounce buffer did not run"
    assert _temps(tmp_path) == []


@pytest.mark.usefixtures("clean_faults")
def test_staged_key_from_a_file_falls_back_to_the_bounce_buffer_in_budget_sized_pieces(
    tmp_path: Path, cache_dir: _rust.CacheDir
) -> None:
    payload = _pattern(PAYLOAD_LEN, 3)
    (tmp_path / "k.dat").write_bytes(payload)
    _force_bounce(errno.EOPNOTSUPP, errno.EXDEV)

    with cache_dir.begin_commit(chunk_bytes=SMALL_CHUNK) as batch:
        _add_from_file(batch, "k", "k.dat")
        batch.commit()

    counts = _rust._op_counts()
    stored = (tmp_path / "k.npy").read_bytes()
    assert stored[PAGE:] == payload
    assert counts["read"] == -(-PAYLOAD_LEN // SMALL_CHUNK), counts


@pytest.mark.usefixtures("clean_faults")
@pytest.mark.parametrize("nth", [1, 2])
def test_failed_kernel_copy_keeps_the_destination_and_names_the_temp(
    tmp_path: Path, cache_dir: _rust.CacheDir, nth: int
) -> None:
    _write_source(tmp_path)
    (tmp_path / "x.dat").write_bytes(b"old")
    _rust._inject_fault("copy", nth, errno.EIO)

    with pytest.raises(OSError, match="during copy") as raised:
        cache_dir.copy_range("src.npy", PAGE, "x.dat", PAYLOAD_LEN, chunk_bytes=SMALL_CHUNK, durable=True)

    assert raised.value.errno == errno.EIO
    assert raised.value.filename == str(tmp_path / "x.dat.tmp")
    assert (tmp_path / "x.dat").read_bytes() == b"old"
    assert _temps(tmp_path) == []


@pytest.mark.usefixtures("clean_faults")
def test_failed_bounce_read_keeps_the_destination_and_names_the_source(
    tmp_path: Path, cache_dir: _rust.CacheDir
) -> None:
    _write_source(tmp_path)
    (tmp_path / "x.dat").write_bytes(b"old")
    _force_bounce(errno.EOPNOTSUPP, errno.EXDEV)
    _rust._inject_fault("read", 1, errno.EIO)

    with pytest.raises(OSError, match="during read") as raised:
        cache_dir.copy_range("src.npy", PAGE, "x.dat", PAYLOAD_LEN, chunk_bytes=SMALL_CHUNK, durable=True)

    assert raised.value.errno == errno.EIO
    assert raised.value.filename == str(tmp_path / "src.npy")
    assert (tmp_path / "x.dat").read_bytes() == b"old"
    assert _temps(tmp_path) == []


@pytest.mark.usefixtures("clean_faults")
def test_failed_copy_of_a_staged_key_removes_its_temps_and_keeps_earlier_keys(
    tmp_path: Path, cache_dir: _rust.CacheDir
) -> None:
    (tmp_path / "b.npy").write_bytes(b"old b")
    (tmp_path / "a.dat").write_bytes(_pattern(PAYLOAD_LEN, 1))
    (tmp_path / "b.dat").write_bytes(_pattern(PAYLOAD_LEN, 2))

    with cache_dir.begin_commit(chunk_bytes=BIG_CHUNK) as batch:
        _add_from_file(batch, "a", "a.dat")
        _rust._inject_fault("copy", 1, errno.EIO)
        with pytest.raises(OSError, match="during copy") as raised:
            _add_from_file(batch, "b", "b.dat")
        keys_after_failure = batch.keys
        batch.commit()

    assert raised.value.errno == errno.EIO
    assert raised.value.filename == str(tmp_path / "b.npy.tmp")
    assert keys_after_failure == ["a"]
    assert (tmp_path / "a.npy").read_bytes()[PAGE:] == _pattern(PAYLOAD_LEN, 1)
    assert (tmp_path / "b.npy").read_bytes() == b"old b"
    assert _temps(tmp_path) == []


def _copy(directory: Path, src_offset: int, length: int) -> None:
    """``copy_range`` from ``src.npy`` to ``x.dat``, keeping nothing open: the filesystem is unmounted next."""
    _rust.CacheDir.open(directory).copy_range(
        "src.npy", src_offset, "x.dat", length, chunk_bytes=SMALL_CHUNK, durable=True
    )


def _commit_from_file(directory: Path, source_file: str, offset: int) -> None:
    """Store key ``k`` from ``source_file``, keeping nothing open: the filesystem is unmounted next."""
    with _rust.CacheDir.open(directory).begin_commit(chunk_bytes=SMALL_CHUNK) as batch:
        _add_from_file(batch, "k", source_file, offset)
        batch.commit()


@pytest.mark.usefixtures("clean_faults")
@pytest.mark.parametrize(("length", "kernel_copies"), [(2 * PAGE, 0), (PAYLOAD_LEN, 1)])
def test_block_aligned_copy_range_shares_the_source_blocks(reflink_dir: Path, length: int, kernel_copies: int) -> None:
    payload = _write_source(reflink_dir)

    _copy(reflink_dir, PAGE, length)

    counts = _rust._op_counts()
    source, copy = block_map(reflink_dir / "src.npy"), block_map(reflink_dir / "x.dat")
    assert (reflink_dir / "x.dat").read_bytes() == payload[:length]
    for index in range(length // PAGE):
        assert copy[index] == Block(source[1 + index].physical, shared=True), (index, copy, source)
    # One reflink for the whole blocks; copy_file_range only for a tail; never the bounce buffer.
    assert (counts["copy"], counts["read"]) == (1 + kernel_copies, 0), counts


@pytest.mark.usefixtures("clean_faults")
def test_store_commit_from_an_offloaded_payload_shares_its_blocks(reflink_dir: Path) -> None:
    payload = _pattern(PAYLOAD_LEN, 5)
    (reflink_dir / "k.dat").write_bytes(payload)

    _commit_from_file(reflink_dir, "k.dat", 0)

    counts = _rust._op_counts()
    backing, stored = block_map(reflink_dir / "k.dat"), block_map(reflink_dir / "k.npy")
    assert (reflink_dir / "k.npy").read_bytes()[PAGE:] == payload
    assert stored[0].shared is False, "the header block was not written in place"
    for index in range(PAYLOAD_LEN // PAGE):
        assert stored[1 + index] == Block(backing[index].physical, shared=True), (index, stored, backing)
    assert counts["read"] == 0, counts


def _assert_copied_not_shared(copy_path: Path, source_path: Path) -> None:
    copy, source = block_map(copy_path), block_map(source_path)
    assert copy, f"{copy_path} has no blocks"
    assert [index for index, block in copy.items() if block.shared] == [], copy
    assert [index for index, block in source.items() if block.shared] == [], source
    assert {block.physical for block in copy.values()}.isdisjoint(block.physical for block in source.values())


@pytest.mark.usefixtures("clean_faults")
@pytest.mark.parametrize("src_offset", [100, PAGE + 1])
def test_unaligned_copy_range_copies_the_bytes_without_sharing_blocks(reflink_dir: Path, src_offset: int) -> None:
    source = b"\xaa" * PAGE + _write_source(reflink_dir)
    length = 3 * PAGE

    _copy(reflink_dir, src_offset, length)

    counts = _rust._op_counts()
    assert (reflink_dir / "x.dat").read_bytes() == source[src_offset : src_offset + length]
    _assert_copied_not_shared(reflink_dir / "x.dat", reflink_dir / "src.npy")
    assert counts["read"] == 0, "copy_file_range did not copy the unaligned range"


@pytest.mark.usefixtures("clean_faults")
def test_store_commit_from_an_unaligned_payload_copies_without_sharing_blocks(reflink_dir: Path) -> None:
    payload = _pattern(PAYLOAD_LEN, 9)
    (reflink_dir / "k.dat").write_bytes(b"\xbb" * 100 + payload)

    _commit_from_file(reflink_dir, "k.dat", 100)

    assert (reflink_dir / "k.npy").read_bytes()[PAGE:] == payload
    _assert_copied_not_shared(reflink_dir / "k.npy", reflink_dir / "k.dat")
    assert _rust._op_counts()["read"] == 0, "copy_file_range did not copy the unaligned range"
