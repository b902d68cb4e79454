"""Where a file's blocks live: a reflink probe and a ``FIEMAP`` reader.

A reflink is only proven when the destination's blocks are the source's blocks: the same
physical addresses, flagged shared. Byte equality alone would also hold for a plain copy.
"""

import errno
import fcntl
import os
import struct
from pathlib import Path
from typing import NamedTuple

__all__ = ["BLOCK", "Block", "block_map", "reflink_refusal"]

BLOCK = 4096
# _IOW(0x94, 9, int) from linux/fs.h: share a whole file's extents.
FICLONE = 0x40049409
REFLINK_REFUSALS = {errno.EOPNOTSUPP, errno.EXDEV, errno.EINVAL, errno.ENOTTY, errno.ENOSYS}

# _IOWR('f', 11, struct fiemap) from linux/fs.h, and its flags from linux/fiemap.h.
FS_IOC_FIEMAP = 0xC020660B
FIEMAP_FLAG_SYNC = 0x1
FIEMAP_EXTENT_LAST = 0x1
FIEMAP_EXTENT_UNKNOWN = 0x2
FIEMAP_EXTENT_SHARED = 0x2000
# struct fiemap: fm_start, fm_length, fm_flags, fm_mapped_extents, fm_extent_count, fm_reserved.
FIEMAP_HEADER = struct.Struct("=QQIIII")
# struct fiemap_extent: fe_logical, fe_physical, fe_length, fe_reserved64[2], fe_flags, fe_reserved[3].
FIEMAP_EXTENT = struct.Struct("=QQQ2QI3I")
EXTENTS_PER_CALL = 32


class Block(NamedTuple):
    """One mapped block of a file."""

    physical: int
    shared: bool


def reflink_refusal(directory: Path) -> str | None:
    """Why ``directory``'s filesystem cannot reflink (probed with ``FICLONE``), or ``None`` if it can."""
    source, clone = directory / "reflink-probe.src", directory / "reflink-probe.dst"
    source.write_bytes(b"\x01" * BLOCK)
    try:
        with open(source, "rb") as src, open(clone, "wb") as dst:
            fcntl.ioctl(dst.fileno(), FICLONE, src.fileno())
    except OSError as exc:
        if exc.errno not in REFLINK_REFUSALS:
            raise
        return f"the filesystem under {directory} cannot reflink (FICLONE: {errno.errorcode[exc.errno]})"
    finally:
        source.unlink()
        clone.unlink(missing_ok=True)
    return None


def _extents(descriptor: int, start: int) -> list[tuple[int, int, int, int]]:
    """``(logical, physical, length, flags)`` of the extents from byte ``start`` on, one call's worth."""
    request = bytearray(FIEMAP_HEADER.size + EXTENTS_PER_CALL * FIEMAP_EXTENT.size)
    FIEMAP_HEADER.pack_into(request, 0, start, (1 << 64) - 1 - start, FIEMAP_FLAG_SYNC, 0, EXTENTS_PER_CALL, 0)
    fcntl.ioctl(descriptor, FS_IOC_FIEMAP, request)
    mapped = FIEMAP_HEADER.unpack_from(request)[3]
    found = []
    for index in range(mapped):
        fields = FIEMAP_EXTENT.unpack_from(request, FIEMAP_HEADER.size + index * FIEMAP_EXTENT.size)
        found.append((fields[0], fields[1], fields[2], fields[5]))
    return found


def block_map(path: Path) -> dict[int, Block]:
    """Every mapped block of ``path`` (flushed first), by block index.

    Holes are absent; extents whose physical address the filesystem does not report are refused,
    since comparing them would prove nothing.
    """
    blocks: dict[int, Block] = {}
    descriptor = os.open(path, os.O_RDONLY)
    try:
        start = 0
        while True:
            extents = _extents(descriptor, start)
            for logical, physical, length, flags in extents:
                if flags & FIEMAP_EXTENT_UNKNOWN:
                    raise ValueError(f"{path}: the extent at byte {logical} has no known location")
                shared = bool(flags & FIEMAP_EXTENT_SHARED)
                for block in range(-(-length // BLOCK)):
                    blocks[logical // BLOCK + block] = Block(physical + block * BLOCK, shared)
            if not extents or extents[-1][3] & FIEMAP_EXTENT_LAST:
                return blocks
            start = extents[-1][0] + extents[-1][2]
    finally:
        os.close(descriptor)
