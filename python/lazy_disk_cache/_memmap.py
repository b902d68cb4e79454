"""``np.memmap`` instances over native file mappings.

NumPy never opens the file here: the array is built directly over a ``FileMapping`` (which checks
the file size, keeps errno on failure and cannot be closed under a live view), and then given the
attributes ``np.memmap`` expects. Every view of the result keeps the mapping alive through
``.base``, slices stay ``np.memmap`` and ``np.memmap.flush()`` reaches ``FileMapping.flush()``.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from numpy.typing import DTypeLike

from lazy_disk_cache._rust import CacheDir, FileMapping

if TYPE_CHECKING:
    from lazy_disk_cache._rust import MappingMode

__all__ = ["as_memmap", "mapping_of", "open_memmap"]

_new_array = np.ndarray.__new__


def as_memmap(
    mapping: FileMapping,
    shape: tuple[int, ...],
    dtype: DTypeLike,
    order: Literal["C", "F"] = "C",
    *,
    filename: str | None = None,
) -> np.memmap[Any, np.dtype[Any]]:
    """Return an ``np.memmap`` of ``shape``/``dtype`` over the whole window of ``mapping``.

    O(1): no data is read and no file is opened. The array is read-only when the mapping is.
    ``filename`` defaults to the mapping's path.
    """
    # Positional arguments: keyword parsing in ndarray.__new__ costs more than the rest of this
    # function, and this runs on every load(). NumPy's stubs list concrete buffer types only;
    # FileMapping exports through the buffer protocol.
    array: np.memmap[Any, np.dtype[Any]] = _new_array(
        np.memmap,
        shape,
        dtype,
        mapping,  # type: ignore[arg-type]
        0,
        None,
        order,
    )
    # Without `_mmap`, np.memmap.__array_finalize__ would make every slice decay to ndarray.
    array._mmap = mapping  # type: ignore[attr-defined]
    array.filename = mapping.path if filename is None else filename
    array.offset = mapping.offset
    array.mode = mapping.mode
    return array


def open_memmap(
    directory: CacheDir,
    name: str,
    shape: tuple[int, ...],
    dtype: DTypeLike,
    *,
    mode: MappingMode,
    offset: int = 0,
    order: Literal["C", "F"] = "C",
    filename: str | None = None,
) -> np.memmap[Any, np.dtype[Any]]:
    """Map ``name`` in ``directory`` at ``offset`` as an ``np.memmap`` of ``shape``/``dtype``.

    O(1): open, fstat, mmap; reads no data. Only the array's bytes are mapped, so a longer file's
    tail is ignored. A missing file raises ``FileNotFoundError`` and a short one ``ValueError``.
    """
    nbytes = math.prod(shape) * np.dtype(dtype).itemsize
    mapping = FileMapping.open(directory, name, mode=mode, offset=offset, length=nbytes)
    return as_memmap(mapping, shape, dtype, order, filename=filename)


def mapping_of(array: object) -> FileMapping | None:
    """Return the ``FileMapping`` whose memory ``array`` (or the array it views) uses, else ``None``."""
    base = array
    while isinstance(base, np.ndarray):
        base = base.base
    return base if isinstance(base, FileMapping) else None
