"""dask bridges: entries and stored keys as dask arrays, and dask arrays written into a store.

Optional: this module needs the ``dask`` extra (``pip install 'lazy_disk_cache[dask]'``) and is
imported only by ``DiskBackedNDArray.to_dask``, ``DiskBackedStore.to_dask`` and
``DiskBackedStore.store_dask``; ``import lazy_disk_cache`` never imports dask.

Reading: every task carries the directory, the file name, the payload offset, shape, dtype and
order, and its block's slices (:class:`FileArray`), a few hundred bytes. It maps the file
read-only through the native core, copies its block and drops the mapping, so no task holds an
entry or the whole array, and any process that sees the file can run it.

Writing: the caller owns the commit. It becomes the key's writer and reserves ``<key>.npy.tmp``
(header, space and a nonce), every task writes its block at its own offset through the core (the
GIL released, partial rows as one run each), and only when all of them succeeded does the caller
fsync, write the sidecar and rename the pair with one directory fsync. Any failure removes the
temp; a killed caller leaves a temp whose key is no longer locked, which the next store open
sweeps.
"""

from __future__ import annotations

import math
import os
import secrets
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, NamedTuple

import numpy as np

try:
    import dask.array as da
    from dask.base import compute, tokenize
    from dask.delayed import Delayed, delayed
except ImportError as exc:  # pragma: no cover - exercised in a subprocess without dask
    raise ImportError(
        "lazy_disk_cache's dask bridges need dask; install the extra: pip install 'lazy_disk_cache[dask]'"
    ) from exc

from lazy_disk_cache._buffers import byte_view
from lazy_disk_cache._codec import decode_layout, descr_text, sidecar_for
from lazy_disk_cache._directories import open_directory
from lazy_disk_cache._rust import FileMapping
from lazy_disk_cache.lazy_disk_cache import (
    LazyDiskCache,
    LazyDiskCacheKw,
    check_cacheable_dtype,
    readable_file,
    shape_and_dtype,
)
from lazy_disk_cache.paths import StoreKey, get_npy_path

__all__ = [
    "TARGET_CHUNK_BYTES",
    "FileArray",
    "RegionSpec",
    "default_chunks",
    "entry_to_dask",
    "file_to_dask",
    "read_block",
    "store_array",
    "stored_key_to_dask",
    "write_block",
]

TARGET_CHUNK_BYTES = 128 * 1024**2
"""Size of a default chunk: large enough that per-task overhead vanishes next to the I/O."""

_PAGE_BYTES = 4096
# The class a stored dask array reloads as.
_STORED_CLASS = "DiskBackedNDArray"


class FileArray(NamedTuple):
    """An array lying in a file: what a read task needs, and all it holds."""

    directory: str
    name: str
    offset: int
    shape: tuple[int, ...]
    dtype: np.dtype[Any]
    order: Literal["C", "F"]


# ---------------------------------------------------------------------------------------------
# Reading


def default_chunks(shape: tuple[int, ...], dtype: np.dtype[Any]) -> tuple[tuple[int, ...], ...]:
    """Whole rows, about :data:`TARGET_CHUNK_BYTES` per chunk, a whole number of pages where rows allow.

    A row larger than the target is split along its own axes by dask's ``auto`` rule.
    """
    if not shape:
        return ()
    row_bytes = math.prod(shape[1:]) * dtype.itemsize
    if row_bytes > TARGET_CHUNK_BYTES:
        return da.core.normalize_chunks(  # type: ignore[no-any-return]
            (1, *("auto",) * (len(shape) - 1)), shape, limit=TARGET_CHUNK_BYTES, dtype=dtype
        )
    rows = max(1, TARGET_CHUNK_BYTES // max(row_bytes, 1))
    # Rows per page-aligned step: a chunk of a multiple of this many rows starts on a page.
    step = _PAGE_BYTES // math.gcd(row_bytes, _PAGE_BYTES) if row_bytes else 1
    if rows >= step:
        rows -= rows % step
    rows = min(rows, max(shape[0], 1))
    return da.core.normalize_chunks((rows, *shape[1:]), shape, dtype=dtype)  # type: ignore[no-any-return]


def read_block(source: FileArray, index: tuple[slice, ...]) -> np.ndarray[Any, Any]:
    """Task body: map ``source`` read-only, copy the block at ``index``, drop the mapping.

    One ``open``/``mmap`` and the pages of the block are read; the result owns its memory.
    """
    directory = open_directory(Path(source.directory))
    nbytes = math.prod(source.shape) * source.dtype.itemsize
    mapping = FileMapping.open(directory, source.name, mode="r", offset=source.offset, length=nbytes)
    whole: np.ndarray[Any, Any] = np.ndarray(source.shape, source.dtype, mapping, 0, None, source.order)  # type: ignore[arg-type]
    return np.array(whole[index], copy=True)


def file_to_dask(source: FileArray, chunks: Any, identity: object) -> da.Array:
    """A dask array of ``source`` in ``chunks`` (``"auto"``: :func:`default_chunks`), named from ``identity``."""
    if isinstance(chunks, str) and chunks == "auto":
        normalized = default_chunks(source.shape, source.dtype)
    else:
        normalized = da.core.normalize_chunks(chunks, source.shape, dtype=source.dtype)
    name = "lazy-disk-cache-" + tokenize(identity, source, normalized)
    graph: dict[tuple[Any, ...], Any] = {}
    for block_id, index in zip(_block_ids(normalized), da.core.slices_from_chunks(normalized), strict=True):
        graph[(name, *block_id)] = (read_block, source, tuple(index))
    meta = np.empty((0,) * len(source.shape), dtype=source.dtype)
    return da.Array(graph, name, normalized, meta=meta)


def _block_ids(chunks: tuple[tuple[int, ...], ...]) -> list[tuple[int, ...]]:
    return [tuple(block) for block in np.ndindex(*(len(axis) for axis in chunks))]


def _file_identity(path: Path) -> tuple[object, ...]:
    """Which file ``path`` is now (device, inode, size, modification time); reads no data."""
    info = os.stat(path)
    return (str(path), info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns)


def entry_to_dask(entry: LazyDiskCache, chunks: Any = "auto") -> da.Array:
    """``entry.to_dask(chunks)``: the entry's value read from its file (see ``readable_file``)."""
    located = readable_file(entry)
    shape, dtype = shape_and_dtype(entry)
    source = FileArray(str(located.path.parent), located.path.name, located.offset, shape, dtype, located.order)
    return file_to_dask(source, chunks, _file_identity(located.path))


def stored_key_to_dask(cache_dir: Path, key: StoreKey, chunks: Any = "auto") -> da.Array:
    """The committed payload of ``key`` in ``cache_dir``; ``FileNotFoundError`` when it has none."""
    npy = get_npy_path(cache_dir, key)
    layout = decode_layout(open_directory(cache_dir), npy)
    source = FileArray(str(cache_dir), npy.name, layout.offset, layout.shape, layout.dtype, layout.order)
    return file_to_dask(source, chunks, _file_identity(npy))


# ---------------------------------------------------------------------------------------------
# Writing


class RegionSpec(NamedTuple):
    """What a write task needs to put its block into a reserved temp, and all it holds."""

    directory: str
    temp: str
    nonce: int
    data_offset: int
    nbytes: int
    shape: tuple[int, ...]
    dtype: np.dtype[Any]


class _StoreTarget(NamedTuple):
    cache_dir: str
    key: str
    flags: LazyDiskCacheKw


class _Opaque:
    """Hides a dask array from ``dask.delayed``, which would otherwise compute it as an argument."""

    def __init__(self, array: da.Array) -> None:
        self.array = array


def write_block(spec: RegionSpec, block: np.ndarray[Any, Any], start: Sequence[int]) -> None:
    """Task body: write ``block``, whose first element is at index ``start``, into the reserved temp.

    Any layout; the core writes it in C order, GIL released. ``OSError(ESTALE)`` when the
    reservation is gone or was replaced.
    """
    array = np.asarray(block)
    if array.dtype != spec.dtype:
        array = array.astype(spec.dtype)
    if array.size == 0:
        return
    directory = open_directory(Path(spec.directory))
    directory.write_block(
        spec.temp,
        byte_view(array),
        nonce=spec.nonce,
        data_offset=spec.data_offset,
        nbytes=spec.nbytes,
        shape=spec.shape,
        start=[int(first) for first in start],
        extent=array.shape,
        itemsize=spec.dtype.itemsize,
    )


def store_array(cache_dir: Path, key: StoreKey, array: Any, flags: LazyDiskCacheKw, *, compute: bool) -> Delayed | None:
    """``DiskBackedStore.store_dask``: write ``array`` as ``key``'s pair in one crash-safe commit.

    With ``compute`` the caller reserves, the current scheduler runs the block writes, and the
    caller commits; otherwise a ``Delayed`` does all of that in whichever process runs it.
    """
    dask_array = da.asarray(array)
    check_cacheable_dtype(dask_array.dtype)
    if any(math.isnan(extent) for extent in dask_array.shape):
        raise ValueError("store_dask needs an array of known shape; call compute_chunk_sizes() first")
    target = _StoreTarget(str(cache_dir), key, flags)
    if compute:
        _store_now(target, _Opaque(dask_array))
        return None
    stored: Delayed = delayed(_store_now, pure=False)(target, _Opaque(dask_array))
    return stored


def _store_now(target: _StoreTarget, hidden: _Opaque) -> None:
    array = hidden.array
    shape = tuple(int(extent) for extent in array.shape)
    dtype = np.dtype(array.dtype)
    nbytes = math.prod(shape) * dtype.itemsize
    directory = open_directory(Path(target.cache_dir))
    with directory.reserve_region(
        target.key,
        descr=descr_text(dtype),
        fortran_order=False,
        shape=shape,
        nbytes=nbytes,
        nonce=secrets.randbits(64),
    ) as region:
        spec = RegionSpec(
            target.cache_dir, region.temp_name, region.nonce, region.data_offset, region.nbytes, shape, dtype
        )
        starts = [tuple(int(axis[0]) for axis in index) for index in _block_starts(array.chunks)]
        blocks = array.to_delayed().ravel()
        writes = [
            delayed(write_block, pure=False)(spec, block, start) for block, start in zip(blocks, starts, strict=True)
        ]
        _compute_all(writes)
        region.commit(sidecar_for(_STORED_CLASS, shape, dtype, target.flags))


def _block_starts(chunks: tuple[tuple[int, ...], ...]) -> list[tuple[tuple[int, ...], ...]]:
    """For each block in C order, the per-axis ``(start,)`` of its first element."""
    offsets = [np.concatenate(([0], np.cumsum(axis)[:-1])).astype(int) for axis in chunks]
    return [
        tuple((int(offsets[axis][index]),) for axis, index in enumerate(block_id)) for block_id in _block_ids(chunks)
    ]


def _compute_all(tasks: list[Delayed]) -> None:
    """Run ``tasks`` on the current scheduler; inside a distributed worker, on its cluster."""
    try:
        from distributed import get_worker, worker_client
    except ImportError:
        compute(*tasks)
        return
    try:
        get_worker()
    except ValueError:
        compute(*tasks)
        return
    with worker_client() as client:
        client.gather(client.compute(tasks))
