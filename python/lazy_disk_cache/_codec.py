"""The on-disk form of a store entry: ``<key>.npy`` plus its ``<key>.meta.json`` sidecar.

The ``.npy`` header is the single source of truth for shape, dtype and memory order; the sidecar
names the entry class and carries the entry's flags (and informational copies of shape and
dtype). After those fields it records the checksum of the whole ``.npy`` file, which the core
computes while it writes the file (``"checksum": "xxh3-64:<16 hex digits>"``); the original package
ignores the field, and sidecars without it stay valid. This module builds and checks both files;
the native core moves every byte. Nothing here logs: the store reports what these helpers find, on
its own logger.
"""

from __future__ import annotations

import json
import math
import os
import stat
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from lazy_disk_cache._buffers import byte_view
from lazy_disk_cache._payload_layout import PayloadLayout, layout_of, payload_memmap
from lazy_disk_cache._progress import current_chunk_progress
from lazy_disk_cache._rust import CacheDir, CommitBatch, FileMapping
from lazy_disk_cache._store_payload import ram_copy_held_alone
from lazy_disk_cache.lazy_disk_cache import (
    LazyDiskCache,
    LazyDiskCacheConfig,
    LazyDiskCacheKw,
    StagedPayload,
    array_to_write,
    check_cacheable_array,
    check_cacheable_dtype,
    chunk_budget_bytes,
    copyable_file,
    entry_lock,
    shape_and_dtype,
)
from lazy_disk_cache.paths import StoreKey

__all__ = [
    "CHECKSUM_FIELD",
    "SCHEMA_VERSION",
    "decode_layout",
    "descr_text",
    "encode_sidecar",
    "parse_sidecar",
    "read_payload",
    "read_sidecar_bytes",
    "sidecar_flags",
    "sidecar_for",
    "sidecar_is_stale",
    "stage_entry",
]

SCHEMA_VERSION = 1
# The sidecar field holding the checksum of the whole .npy, written after every other field.
CHECKSUM_FIELD = "checksum"

# The sidecar's flag fields, in the order they are written.
_FLAG_FIELDS = ("purge_disk_on_gc", "automatic_offloading", "enable_caching")
_FLAG_DEFAULTS = LazyDiskCacheConfig()


# ---------------------------------------------------------------------------------------------
# Writing


def descr_text(dtype: np.dtype[Any]) -> str:
    """The ``descr`` literal of ``dtype`` as ``np.save`` writes it in a ``.npy`` header."""
    return repr(np.lib.format.dtype_to_descr(dtype))


def encode_sidecar(
    entry: LazyDiskCache, shape: tuple[int, ...], dtype: np.dtype[Any], checksum: str | None = None
) -> bytes:
    """The schema-1 sidecar of ``entry``: one line of UTF-8 JSON, keys in the documented order.

    ``checksum`` (the payload file's, from the core), when given, is the last field.
    """
    flags = LazyDiskCacheKw(
        purge_disk_on_gc=entry.purge_disk_on_gc,
        automatic_offloading=entry.automatic_offloading,
        enable_caching=entry.cache_enabled,
    )
    return sidecar_for(type(entry).__name__, shape, dtype, flags, checksum)


def sidecar_for(
    class_name: str,
    shape: tuple[int, ...],
    dtype: np.dtype[Any],
    flags: LazyDiskCacheKw,
    checksum: str | None = None,
) -> bytes:
    """The schema-1 sidecar of an entry of ``class_name`` with ``flags`` (all three required).

    ``checksum`` (the payload file's, from the core), when given, is the last field.
    """
    meta: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "lazy_disk_cache_class": class_name,
        "shape": list(shape),
        "dtype": dtype.str,
        **{field: flags[field] for field in _FLAG_FIELDS},  # type: ignore[literal-required]
    }
    if checksum is not None:
        meta[CHECKSUM_FIELD] = checksum
    return json.dumps(meta, ensure_ascii=False).encode("utf-8")


def stage_entry(batch: CommitBatch, cache_dir: Path, key: StoreKey, entry: LazyDiskCache) -> StagedPayload:
    """Write ``entry`` to the temps of ``key`` in ``batch`` (renamed into place by ``commit()``).

    The payload is the entry's live buffer (1 copy; the core gathers a strided buffer into C order
    through a bounce buffer within the chunk budget, never a full temporary copy) or, for an
    offloaded entry, its backing file (copied by the core without a user-space copy when that
    file lies directly in ``cache_dir``, else read through a read-only mapping). The core hashes
    the ``.npy`` as it writes it; the sidecar, written once the payload is written, records the
    checksum. Object dtypes and masked arrays raise ``TypeError`` before anything is written; I/O
    failures raise ``OSError``. The payload bytes are reported to the progress meter of the
    current context. Returns where the payload starts in the ``.npy`` and the file's checksum.
    Blocks on disk.
    """
    with entry_lock(entry):
        shape, dtype = shape_and_dtype(entry)
        check_cacheable_dtype(dtype)
        nbytes = math.prod(shape) * dtype.itemsize
        descr = descr_text(dtype)

        def meta(checksum: str | None) -> bytes:
            return encode_sidecar(entry, shape, dtype, checksum)

        # Asked before this function takes a reference to the array itself.
        droppable = ram_copy_held_alone(entry)
        copyable = copyable_file(entry)
        buffer: memoryview | None = None
        if copyable is None or not _lies_directly_in(copyable.path, cache_dir):
            live = array_to_write(entry)
            check_cacheable_array(live)
            buffer, copyable = byte_view(np.asarray(live)), None
        offset, checksum, identity = batch.add_npy(
            key,
            descr=descr,
            fortran_order=False,
            shape=shape,
            nbytes=nbytes,
            meta=meta,
            progress=current_chunk_progress(),
            source=buffer,
            source_file=None if copyable is None else copyable.path.name,
            source_offset=0 if copyable is None else copyable.offset,
        )
        return StagedPayload(offset, checksum, identity, droppable)


def _lies_directly_in(path: Path, cache_dir: Path) -> bool:
    """Whether ``path`` is a regular file (not a link) directly inside ``cache_dir``."""
    try:
        return stat.S_ISREG(os.lstat(path).st_mode) and os.path.samefile(path.parent, cache_dir)
    except OSError:
        return False


# ---------------------------------------------------------------------------------------------
# Reading


def read_sidecar_bytes(directory: CacheDir, path: Path) -> bytes:
    """Read the whole sidecar at ``path`` (in ``directory``). Blocks on disk."""
    return directory.read_file(path.name)


def parse_sidecar(raw: bytes, key: str, path: Path) -> tuple[dict[str, Any], str]:
    """Check the sidecar ``raw`` read from ``path``, up to its class name; return the object and the class name.

    Raises ``ValueError`` for anything but a JSON object with the integer ``schema_version`` 1 and a
    string ``lazy_disk_cache_class``; bytes that are not UTF-8 JSON at all raise one naming the key
    and the file (``json.JSONDecodeError``, with its position, for invalid JSON).
    """
    not_an_object = f"Unsupported lazy_disk_cache sidecar for key {key!r}: expected a JSON object with schema_version 1"
    corrupt = f"Corrupt lazy_disk_cache sidecar {str(path)!r} for key {key!r}"
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{corrupt}, not valid UTF-8: {exc}") from exc
    try:
        meta = json.loads(text)
    except json.JSONDecodeError as exc:
        # The same type and position, with a message that says which file of which key is broken.
        raise json.JSONDecodeError(f"{corrupt}, not valid JSON: {exc.msg}", exc.doc, exc.pos) from None
    except RecursionError as exc:
        # json gives up on deep nesting with RecursionError; such a file is no schema-1 object.
        raise ValueError(not_an_object) from exc
    if not isinstance(meta, dict):
        raise ValueError(not_an_object)
    version = meta.get("schema_version")
    # JSON true and 1.0 compare equal to 1 in Python; only the integer itself is schema 1.
    if type(version) is not int or version != SCHEMA_VERSION:
        raise ValueError(f"Unsupported lazy_disk_cache schema_version {version!r}; expected 1")
    name = meta.get("lazy_disk_cache_class")
    if not isinstance(name, str):
        raise ValueError(f"lazy_disk_cache sidecar for key {key!r} has no valid lazy_disk_cache_class")
    return meta, name


def decode_layout(directory: CacheDir, path: Path) -> PayloadLayout:
    """Decode the ``.npy`` header at ``path`` and check the file holds the whole payload (see ``layout_of``).

    One small read.
    """
    return layout_of(directory.read_header(path.name), path)


def sidecar_is_stale(meta: dict[str, Any], layout: PayloadLayout) -> bool:
    """Whether the sidecar's informational shape or dtype disagree with the ``.npy`` header."""
    shape_differs = "shape" in meta and meta["shape"] != list(layout.shape)
    dtype_differs = "dtype" in meta and meta["dtype"] != layout.dtype.str
    return shape_differs or dtype_differs


def sidecar_flags(meta: dict[str, Any], key: str) -> LazyDiskCacheKw:
    """The entry flags a sidecar records; absent ones take the ``LazyDiskCacheConfig`` defaults.

    Raises ``ValueError`` naming the field when a present flag is not a JSON boolean.
    """
    flags: dict[str, bool] = {}
    for field in _FLAG_FIELDS:
        value = meta.get(field, getattr(_FLAG_DEFAULTS, field))
        if type(value) is not bool:
            raise ValueError(
                f"lazy_disk_cache sidecar for key {key!r} has a non-boolean {field!r}: {value!r}; "
                "expected true or false"
            )
        flags[field] = value
    return LazyDiskCacheKw(
        purge_disk_on_gc=flags["purge_disk_on_gc"],
        automatic_offloading=flags["automatic_offloading"],
        enable_caching=flags["enable_caching"],
    )


def read_payload(
    directory: CacheDir, path: Path, layout: PayloadLayout, mapping: FileMapping | None = None
) -> NDArray[Any]:
    """Read the payload at ``path`` into a new array (1 copy). Blocks on disk.

    With ``mapping`` (of ``path``'s payload, made by the open that read its header) the bytes are
    copied from it, so that a commit renaming another file over the name meanwhile cannot mix two
    files; without, they are read from the file (GIL released).
    """
    if mapping is not None and layout.nbytes:
        return np.array(payload_memmap(directory, path, mapping, layout), order="K")
    array = np.empty(layout.shape, dtype=layout.dtype, order=layout.order)
    if layout.nbytes:
        # A Fortran-ordered array's transpose is C-contiguous over the same bytes.
        target = array.T if layout.order == "F" else array
        directory.read_into(path.name, layout.offset, byte_view(target), chunk_bytes=chunk_budget_bytes())
    return array
