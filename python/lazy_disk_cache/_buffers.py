"""Arrays as byte buffers for the native core, which reads and writes bytes through the buffer protocol.

A C-contiguous array is handed over as one flat view of its own memory (no copy). Any other layout
is handed over as it is, with its shape and strides; the core gathers it into C order through a
bounce buffer within the chunk budget, so a strided or Fortran-ordered source never needs a full
temporary copy.
"""

from typing import Any

import numpy as np
from numpy.typing import NDArray

__all__ = ["byte_view"]


def byte_view(array: NDArray[Any]) -> memoryview:
    """The bytes of ``array`` as a buffer the core reads in C order (no copy; writable if the array is).

    A C-contiguous array becomes a flat byte buffer. Any other layout keeps its shape and strides
    with opaque items of the same size (some dtypes, such as datetimes, cannot be exported as they
    are).
    """
    if array.nbytes == 0:
        return memoryview(b"")
    if array.flags.c_contiguous:
        return array.reshape(-1).view(np.uint8).data
    return array.view(np.dtype((np.void, array.dtype.itemsize))).data
