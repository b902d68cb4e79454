"""The dtype a ``.npy`` header's ``descr`` names: parsed once per distinct text, safely, as ``np.load`` does."""

import ast
import functools
from typing import Any

import numpy as np

__all__ = ["dtype_of_descr"]


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
