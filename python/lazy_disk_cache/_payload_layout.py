"""Where a ``.npy`` payload lies, as its header says, and its window as an ``np.memmap``.

One home for reading a header's ``descr``, checking the file holds the payload the header announces,
and cutting a mapping down to exactly that payload: the store's codec and the entry (which maps its
adopted payload by name) both use it.
"""

import ast
import functools
import math
from pathlib import Path
from typing import Any, Literal, NamedTuple

import numpy as np

from lazy_disk_cache._memmap import as_memmap
from lazy_disk_cache._rust import CacheDir, FileMapping, NpyHeader

__all__ = ["PayloadLayout", "TruncatedPayloadError", "dtype_of_descr", "layout_of", "payload_memmap"]


class TruncatedPayloadError(ValueError):
    """A ``.npy`` file shorter than its header announces."""


class PayloadLayout(NamedTuple):
    """Where and how a ``.npy`` payload lies in its file, as its header says."""

    shape: tuple[int, ...]
    dtype: np.dtype[Any]
    order: Literal["C", "F"]
    offset: int
    nbytes: int


@functools.lru_cache(maxsize=256)
def dtype_of_descr(descr: str) -> np.dtype[Any]:
    """The dtype the literal ``descr`` names; ``ValueError`` for text that names none.

    Cached: the keys of a store mostly share a few dtypes, and the parse is the costliest step of
    reading a header. A dtype is immutable, so sharing one is safe. The core has checked the
    literal's syntax, but accepts Python 2 spellings (``5L``) that ``ast`` refuses; whatever the
    parse or NumPy refuses is a ``ValueError`` here.
    """
    try:
        dtype: np.dtype[Any] = np.lib.format.descr_to_dtype(ast.literal_eval(descr))
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError) as exc:
        raise ValueError(f"invalid descr {descr}") from exc
    return dtype


def layout_of(header: NpyHeader, path: Path) -> PayloadLayout:
    """The payload layout the decoded ``.npy`` header of ``path`` announces, checked against the file.

    A header naming an invalid or object dtype, or announcing more payload than the file holds,
    raises ``ValueError`` naming the path; trailing bytes are ignored, as ``np.load`` does.
    """
    try:
        dtype = dtype_of_descr(header.descr)
    except ValueError as exc:
        raise ValueError(f"{str(path)!r}: the .npy header holds an invalid descr {header.descr}") from exc
    if dtype.hasobject:
        raise ValueError(f"{str(path)!r}: object arrays cannot be loaded (allow_pickle=False)")
    shape = tuple(header.shape)
    nbytes = math.prod(shape) * dtype.itemsize
    if header.file_len < header.data_offset + nbytes:
        raise TruncatedPayloadError(
            f"{str(path)!r} is shorter than its .npy header announces: {header.file_len} bytes, "
            f"expected at least {header.data_offset + nbytes}"
        )
    order: Literal["C", "F"] = "F" if header.fortran_order else "C"
    return PayloadLayout(shape, dtype, order, header.data_offset, nbytes)


def payload_memmap(
    directory: CacheDir, path: Path, mapping: FileMapping, layout: PayloadLayout
) -> np.memmap[Any, np.dtype[Any]]:
    """The payload at ``path`` as an ``np.memmap`` over ``mapping``, a window from its offset to the end of the file.

    ``layout_of`` has checked that the file holds the whole payload. A file with bytes past it (which
    are ignored, as ``np.load`` does) is mapped again with a window of exactly the payload; should
    another file have been renamed over the name meanwhile, that is a ``ValueError`` naming it,
    never a mix of two files. O(1).
    """
    if mapping.length != layout.nbytes:
        exact = FileMapping.open(directory, path.name, mode=mapping.mode, offset=layout.offset, length=layout.nbytes)
        if exact.identity != mapping.identity:
            raise ValueError(f"{str(path)!r} was replaced while it was being mapped; read it again")
        mapping = exact
    return as_memmap(mapping, layout.shape, layout.dtype, layout.order)
