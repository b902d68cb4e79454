"""Task bodies and child programs for the dask and many-process tests (importable by workers)."""

from __future__ import annotations

import os
import signal
from typing import Any

import numpy as np

__all__ = ["kill_own_process_at_block", "marked_block"]


def marked_block(block: np.ndarray[Any, Any], block_info: dict[Any, Any] | None = None) -> np.ndarray[Any, Any]:
    """``block`` plus its block index sum, so every block of the result differs from the input's."""
    index = 0 if block_info is None else sum(block_info[0]["chunk-location"])
    return block + index


def kill_own_process_at_block(
    block: np.ndarray[Any, Any], victim: int, block_info: dict[Any, Any] | None = None
) -> np.ndarray[Any, Any]:
    """``block`` unchanged, except that the process computing block number ``victim`` SIGKILLs itself."""
    if block_info is not None and block_info[0]["chunk-location"][0] == victim:
        os.kill(os.getpid(), signal.SIGKILL)
    return block
