"""The old and new values of the fault-injection tests, shared with their child script.

Each name has a distinct old value and a distinct new one, so a file read back after a failure
tells which of the two it holds (or that it holds neither, i.e. it is torn).
"""

from typing import Final, Literal

import numpy as np
from numpy.typing import NDArray

__all__ = ["ELEMENTS", "Age", "age_of", "new_value", "old_value"]

ELEMENTS: Final = 3000

Age = Literal["old", "new"]


def old_value(name: str) -> NDArray[np.int64]:
    return np.arange(ELEMENTS, dtype=np.int64) + 1000 * ord(name[0])


def new_value(name: str) -> NDArray[np.int64]:
    return -old_value(name) - 7


def age_of(name: str, raw: bytes) -> str:
    """``old`` or ``new`` if ``raw`` is exactly one of the two values of ``name``, else ``torn``."""
    if raw == old_value(name).tobytes():
        return "old"
    if raw == new_value(name).tobytes():
        return "new"
    return "torn"
