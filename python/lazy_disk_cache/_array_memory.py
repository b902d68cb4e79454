"""The memory behind an array: who owns it, who else holds it, and how much of a mapping is private.

The memory budget needs three facts about an entry's buffer that NumPy does not state directly:

* whether it is anonymous RAM that dropping the buffer would give back (an ndarray that owns its
  data at the end of its ``base`` chain) or something else (a file mapping, ``bytes``, a foreign
  buffer);
* whether anything besides the entry references it: a view, a buffer export or the caller's own
  variable keep the memory alive, so spilling would free nothing and later writes through them
  would miss the entry. NumPy collapses view chains to the array that owns the memory, so every
  view raises the reference count of the buffer or of an ndarray in its ``base`` chain;
* how many bytes of a copy-on-write file mapping were written, i.e. are private anonymous pages
  (``/proc/self/pagemap``).
"""

from __future__ import annotations

import mmap
import os
import sys
from typing import Any

import numpy as np
from numpy.typing import NDArray

__all__ = ["anonymous_nbytes", "held_elsewhere", "private_bytes"]

PAGEMAP = "/proc/self/pagemap"
_PAGEMAP_ENTRY_BYTES = 8
_PRESENT = np.uint64(1 << 63)
_SWAPPED = np.uint64(1 << 62)
_FILE_OR_SHARED = np.uint64(1 << 61)


def _references(obj: object) -> int:
    return sys.getrefcount(obj)


def _call_overhead() -> int:
    """What ``_references`` adds to the count of an object one local variable holds (its own argument)."""
    probe = object()
    return _references(probe) - 1


_CALL_OVERHEAD = _call_overhead()


def _root(array: NDArray[Any]) -> object:
    """The end of ``array``'s ``base`` chain: the ndarray that owns the memory, or a non-array exporter."""
    base: object = array
    while isinstance(base, np.ndarray) and base.base is not None:
        base = base.base
    return base


def anonymous_nbytes(array: object) -> int:
    """``array.nbytes`` if its memory is anonymous RAM owned by an ndarray, else 0.

    0 for a file mapping (``np.memmap``, a native mapping), an array over ``bytes`` or another
    foreign buffer, an array of Python objects (never written to disk) and a non-array.
    """
    if not isinstance(array, np.ndarray) or array.dtype.hasobject:
        return 0
    root = _root(array)
    if not isinstance(root, np.ndarray) or isinstance(root, np.memmap) or not root.flags.owndata:
        return 0
    return int(array.nbytes)


def held_elsewhere(array: NDArray[Any], known: int) -> bool:
    """Whether anything beyond ``known`` references holds ``array`` or the arrays its memory comes from.

    ``known`` counts the references the caller accounts for, including the caller's own local
    variable that it passes in. Each ndarray further down the ``base`` chain must be held by its
    child alone. O(length of the chain); no allocation.
    """
    if _references(array) - _CALL_OVERHEAD - 1 > known:  # 1: this function's own argument
        return True
    base = array.base
    while isinstance(base, np.ndarray):
        if _references(base) - _CALL_OVERHEAD > 2:  # the child's base pointer and this local
            return True
        base = base.base
    return False


def private_bytes(array: NDArray[Any]) -> int | None:
    """Bytes of ``array``'s pages that are private anonymous memory; ``None`` where unknown.

    For a copy-on-write file mapping these are the pages written since it was mapped: the
    kernel gave them their own anonymous copy. Reads one 8-byte ``/proc/self/pagemap`` entry per
    page (bit 63 present, bit 62 swapped, bit 61 file page or shared). ``None`` when pagemap
    cannot be read (no ``/proc``, a restricted kernel).
    """
    nbytes = int(array.nbytes)
    if nbytes == 0:
        return 0
    page = mmap.PAGESIZE
    address = int(array.__array_interface__["data"][0])
    first, last = address // page, (address + nbytes - 1) // page
    try:
        descriptor = os.open(PAGEMAP, os.O_RDONLY)
    except OSError:
        return None
    try:
        length = (last - first + 1) * _PAGEMAP_ENTRY_BYTES
        raw = os.pread(descriptor, length, first * _PAGEMAP_ENTRY_BYTES)
    except OSError:
        return None
    finally:
        os.close(descriptor)
    if len(raw) != length:
        return None
    entries = np.frombuffer(raw, dtype=np.uint64)
    resident = (entries & (_PRESENT | _SWAPPED)) != 0
    private = resident & ((entries & _FILE_OR_SHARED) == 0)
    return int(np.count_nonzero(private)) * page
