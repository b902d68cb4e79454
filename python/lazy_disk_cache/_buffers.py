"""Arrays as byte buffers for the native core, which reads and writes bytes through the buffer protocol.

A C-contiguous array is handed over as one flat view of its own memory (no copy). Any other layout
is fed as bounded blocks in C order, so a strided or Fortran-ordered source never needs a full
temporary copy.
"""

from collections.abc import Iterator
from typing import Any

import numpy as np
from numpy.typing import NDArray

__all__ = ["MAX_BOUNCE_BYTES", "byte_view", "c_order_blocks"]

# Bounce blocks for non-contiguous sources. pwrite bandwidth saturates at a few MiB, and a block
# that is still in the CPU cache when pwrite copies it out writes faster than a 64 MiB one.
MAX_BOUNCE_BYTES = 4 * 1024**2


def byte_view(array: NDArray[Any]) -> memoryview:
    """The bytes of a C-contiguous array as a flat byte buffer (no copy; writable if the array is)."""
    if array.nbytes == 0:
        return memoryview(b"")
    return array.reshape(-1).view(np.uint8).data


def c_order_blocks(array: NDArray[Any], limit: int) -> Iterator[memoryview]:
    """Yield the bytes of ``array`` in C order as contiguous blocks of at most ``limit`` bytes.

    Only one block is materialised at a time, so a strided or Fortran-ordered source never needs
    a full temporary copy. Rows larger than ``limit`` are split along their own leading axis.
    """
    if array.ndim == 0 or array.nbytes <= limit:
        yield byte_view(np.ascontiguousarray(array))
        return
    row_bytes = array.nbytes // array.shape[0]
    if row_bytes <= limit or array.ndim == 1:
        rows = max(1, limit // max(1, row_bytes))
        for start in range(0, array.shape[0], rows):
            yield byte_view(np.ascontiguousarray(array[start : start + rows]))
        return
    for row in array:
        yield from c_order_blocks(row, limit)
