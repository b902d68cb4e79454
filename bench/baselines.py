"""Hand-written baselines: the physical limits and the NumPy recipes a careful user would write.

Each function performs exactly one operation on a path the caller chose, so the cases can time
it next to ours. Nothing here imports the package under test; the original package's venv uses
this module too.
"""

from __future__ import annotations

import json
import mmap
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "disk_usage",
    "fsync_dir",
    "group_commit",
    "memmap_assign",
    "np_save_durable",
    "per_key_durable",
    "raw_mmap_open",
    "readinto_file",
    "sidecar_bytes",
    "write_fresh",
]

# os.write transfers at most 0x7ffff000 bytes per call on Linux; stay below it.
_MAX_WRITE = 1 << 30


def write_fresh(path: Path, data: np.ndarray[Any, Any], *, fsync: bool, reserve: bool = False) -> None:
    """os.write a C-contiguous array's bytes into a new file (O_EXCL), optionally fsyncing it.

    ``reserve`` first allocates the whole size with ``posix_fallocate``: on ext4 the writes then
    skip the per-page delayed-allocation bookkeeping, which is measurably faster.
    """
    view = data.data.cast("B")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        if reserve and len(view):
            os.posix_fallocate(fd, 0, len(view))
        written = 0
        while written < len(view):
            written += os.write(fd, view[written : written + _MAX_WRITE])
        if fsync:
            os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    """Make renames and creations in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def memmap_assign(path: Path, data: np.ndarray[Any, Any]) -> None:
    """The classic recipe: ``np.memmap(mode="w+")``, assign, ``flush()`` (msync), drop."""
    target = np.memmap(path, dtype=data.dtype, mode="w+", shape=data.shape)
    target[...] = data
    target.flush()
    del target


def np_save_durable(path: Path, data: np.ndarray[Any, Any]) -> None:
    """``np.save`` to a temp, fsync, ``os.replace`` over the name, fsync the directory."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "xb") as handle:
        np.save(handle, data, allow_pickle=False)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def sidecar_bytes(data: np.ndarray[Any, Any]) -> bytes:
    """The same JSON sidecar the store writes next to each ``.npy`` (schema 1, same key order)."""
    meta = {
        "schema_version": 1,
        "lazy_disk_cache_class": "DiskBackedNDArray",
        "shape": list(data.shape),
        "dtype": data.dtype.str,
        "purge_disk_on_gc": True,
        "automatic_offloading": False,
        "enable_caching": True,
    }
    return json.dumps(meta, ensure_ascii=False).encode("utf-8")


def _write_synced(path: Path, payload: np.ndarray[Any, Any] | bytes, *, durable: bool = True) -> None:
    with open(path, "xb") as handle:
        if isinstance(payload, bytes):
            handle.write(payload)
        else:
            np.lib.format.write_array(handle, payload, allow_pickle=False)
        handle.flush()
        if durable:
            os.fsync(handle.fileno())


def _fsync_path(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def group_commit(
    directory: Path,
    items: Sequence[tuple[str, np.ndarray[Any, Any]]],
    *,
    durable: bool = True,
    fsync_threads: int = 1,
) -> None:
    """What the store promises, written by hand: the same artefacts, the same durability.

    For each key a ``<key>.npy`` (standard header) and a ``<key>.meta.json``, each written to a
    temp and fsynced; then every rename; then one directory fsync. With ``fsync_threads`` above 1
    the temps are all written first, then fsynced by that many threads at once (reopened by name),
    as a careful hand-written commit does. ``durable=False`` skips the fsyncs (for fixtures that
    only need the bytes on disk).
    """
    inline = durable and fsync_threads <= 1
    temps = []
    for key, data in items:
        for temp, payload in ((f"{key}.npy.tmp", data), (f"{key}.meta.json.tmp", sidecar_bytes(data))):
            _write_synced(directory / temp, payload, durable=inline)
            temps.append(directory / temp)
    if durable and not inline:
        with ThreadPoolExecutor(fsync_threads) as pool:
            list(pool.map(_fsync_path, temps))
    for key, _ in items:
        os.rename(directory / f"{key}.npy.tmp", directory / f"{key}.npy")
        os.rename(directory / f"{key}.meta.json.tmp", directory / f"{key}.meta.json")
    if durable:
        fsync_dir(directory)


def per_key_durable(directory: Path, items: Sequence[tuple[str, np.ndarray[Any, Any]]]) -> None:
    """The naive recipe: every key committed on its own (``np_save_durable`` for both files)."""
    for key, data in items:
        np_save_durable(directory / f"{key}.npy", data)
        meta = directory / f"{key}.meta.json"
        tmp = meta.with_name(meta.name + ".tmp")
        _write_synced(tmp, sidecar_bytes(data))
        os.replace(tmp, meta)
        fsync_dir(directory)


def disk_usage(directory: Path) -> int:
    """Bytes allocated on disk to the files directly in ``directory`` (``st_blocks``, not sizes)."""
    with os.scandir(directory) as listing:
        return sum(entry.stat(follow_symlinks=False).st_blocks * 512 for entry in listing)


def raw_mmap_open(path: Path) -> mmap.mmap:
    """The physical floor of ``load()``: open, mmap shared read-write (like mode ``r+``), close."""
    fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    try:
        return mmap.mmap(fd, 0, access=mmap.ACCESS_WRITE)
    finally:
        os.close(fd)


def readinto_file(path: Path, dest: np.ndarray[Any, Any], offset: int = 0) -> None:
    """Copy a file's bytes from the page cache into a pre-faulted buffer (unbuffered reads)."""
    view = dest.data.cast("B")
    with open(path, "rb", buffering=0) as handle:
        handle.seek(offset)
        filled = 0
        while filled < len(view):
            got = handle.readinto(view[filled:])
            if not got:
                raise EOFError(f"{path} ended after {filled} of {len(view)} bytes")
            filled += got
