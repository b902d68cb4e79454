"""Progress of long operations: a user callback ``progress(done_bytes, total_bytes)``.

The native core reports the bytes it moved between chunks, from the working thread; this module is
the one place that turns those reports into calls of the user's callback, at most every
``MIN_INTERVAL_SECONDS`` plus one final call when the operation has completed. An exception raised
by the callback during the operation stops it (the core removes its temps) and propagates; one
raised by the final call propagates after the operation completed.

An operation that cannot pass the meter down explicitly (an entry's conversion, reached through
hooks subclasses may override) finds it through ``current_chunk_progress()``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

__all__ = ["MIN_INTERVAL_SECONDS", "ProgressCallback", "ProgressMeter", "current_chunk_progress", "reporting"]

ProgressCallback = Callable[[int, int], object]
"""``progress(done_bytes, total_bytes)``: called from the working thread."""

# About ten calls a second: often enough for a progress bar, rare enough to cost nothing.
MIN_INTERVAL_SECONDS = 0.1


class ProgressMeter:
    """Counts the bytes of one operation and calls ``callback`` at most every ``MIN_INTERVAL_SECONDS``."""

    def __init__(self, callback: ProgressCallback, total: int) -> None:
        self._callback = callback
        self._total = max(0, total)
        self._done = 0
        self._last_call = time.monotonic()

    @property
    def done(self) -> int:
        """The bytes counted so far (never more than the total)."""
        return self._done

    def advance(self, nbytes: int) -> None:
        """Count ``nbytes`` more; call the callback if the last call is old enough."""
        self.reach(self._done + nbytes)

    def reach(self, done: int) -> None:
        """Count up to ``done`` bytes in total (never backwards); call the callback if due."""
        self._done = min(max(self._done, done), self._total)
        now = time.monotonic()
        if now - self._last_call >= MIN_INTERVAL_SECONDS:
            self._last_call = now
            self._callback(self._done, self._total)

    def finish(self) -> None:
        """The final call: everything counted, ``(total, total)``."""
        self._done = self._total
        self._callback(self._total, self._total)


_current: ContextVar[ProgressMeter | None] = ContextVar("lazy_disk_cache_progress", default=None)


@contextmanager
def reporting(callback: ProgressCallback | None, total: int) -> Iterator[ProgressMeter | None]:
    """Meter an operation of ``total`` bytes for ``callback`` (``None``: no meter) in this context.

    Inside the block ``current_chunk_progress()`` counts into the meter; when the block completes
    without an exception the final call is made.
    """
    meter = None if callback is None else ProgressMeter(callback, total)
    token = _current.set(meter)
    try:
        yield meter
    finally:
        _current.reset(token)
    if meter is not None:
        meter.finish()


def current_chunk_progress() -> Callable[[int], None] | None:
    """What the core should report moved bytes to in the current context, or ``None``."""
    meter = _current.get()
    return None if meter is None else meter.advance
