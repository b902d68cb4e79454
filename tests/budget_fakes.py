"""Fake memory and fake entries for testing the memory budget without real RAM pressure.

:class:`FakeMemory` is a :class:`MemoryProbe` whose limit is set by the test and whose
``RssAnon`` is the unmanaged bytes the test sets plus the bytes of every :class:`FakeEntry` still
in RAM, so spilling lowers the measured total the way freeing a buffer lowers ``RssAnon``.
:class:`FakeEntry` implements the :class:`Spillable` protocol the way a real entry must: it
try-acquires its own lock, refuses while pinned, untracks itself on success and raises
whatever ``fault`` it is given (``OSError`` for a full disk), staying in RAM.

:func:`injected_budget` makes real entries report to a fresh ledger over an
:class:`InjectedLimit`: a limit the test chooses and no ``RssAnon``, so the measured total is the
bytes the entries themselves report, whatever else the test process holds.
"""

from __future__ import annotations

import contextlib
import errno
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from types import SimpleNamespace

from lazy_disk_cache import _budget
from lazy_disk_cache._budget import MemoryLedger
from lazy_disk_cache._memory_limits import EffectiveLimit, MemoryProbe

__all__ = [
    "FakeClock",
    "FakeEntry",
    "FakeMemory",
    "InjectedLimit",
    "disk_full",
    "fake_psutil",
    "injected_budget",
    "make_ledger",
]


class FakeClock:
    """A monotonic clock the test advances by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class FakeMemory(MemoryProbe):
    """A limit and an ``RssAnon`` under the test's control; counts how often each is read."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit
        self.unmanaged = 0
        self.entries: weakref.WeakSet[FakeEntry] = weakref.WeakSet()
        self.limit_reads = 0
        self.anon_reads = 0

    def effective_limit(self) -> EffectiveLimit:
        self.limit_reads += 1
        return EffectiveLimit(self.limit, "test limit")

    def rss_anon(self) -> int | None:
        self.anon_reads += 1
        return self.unmanaged + sum(entry.nbytes for entry in list(self.entries) if entry.in_ram)


class FakeEntry:
    """An entry holding ``nbytes`` of pretend RAM that spills like a real one."""

    def __init__(self, ledger: MemoryLedger, memory: FakeMemory, name: str, nbytes: int) -> None:
        self.ledger = ledger
        self.name = name
        self.nbytes = nbytes
        self.in_ram = True
        self.fault: Exception | None = None
        self.lock = threading.RLock()
        self.on_spill: Callable[[FakeEntry], None] | None = None
        self.spill_calls = 0
        with self.lock:
            memory.entries.add(self)
            ledger.track(self, nbytes)

    def spill(self) -> int | None:
        if not self.lock.acquire(blocking=False):
            return None
        try:
            self.spill_calls += 1
            if self.ledger.is_pinned(self):
                return None
            if not self.in_ram:
                return 0
            if self.fault is not None:
                raise self.fault
            self.in_ram = False
            self.ledger.untrack(self)
            if self.on_spill is not None:
                self.on_spill(self)
            return self.nbytes
        finally:
            self.lock.release()

    def load(self) -> None:
        """Come back to RAM, as a real entry does on its next touch."""
        with self.lock:
            self.in_ram = True
            self.ledger.track(self, self.nbytes)
        self.ledger.check()

    def __repr__(self) -> str:
        return f"FakeEntry({self.name!r})"


def disk_full(name: str) -> OSError:
    """The error a spill raises when the disk is full."""
    return OSError(errno.ENOSPC, "No space left on device", f"/fake/{name}.dat")


def make_ledger(
    limit: int = 1000,
    *,
    clock: Callable[[], float] | None = None,
    environ: dict[str, str] | None = None,
    monitor_interval: float = 3600.0,
) -> tuple[MemoryLedger, FakeMemory]:
    """A ledger over fake memory with the default thresholds (spill above 70 %, down to 60 %).

    The monitor interval is an hour by default, so only the test's own ``check()`` calls spill.
    """
    memory = FakeMemory(limit)
    ledger = MemoryLedger(
        memory,
        clock=clock if clock is not None else FakeClock(),
        environ=environ if environ is not None else {},
        monitor_interval=monitor_interval,
    )
    return ledger, memory


class InjectedLimit(MemoryProbe):
    """A limit chosen by the test and no ``RssAnon``: the ledger then counts the tracked bytes alone."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit

    def effective_limit(self) -> EffectiveLimit:
        return EffectiveLimit(self.limit, "injected test limit")

    def rss_anon(self) -> int | None:
        return None


@contextlib.contextmanager
def injected_budget(
    limit: int | InjectedLimit, *, monitor_interval: float = 3600.0, clock: Callable[[], float] | None = None
) -> Iterator[MemoryLedger]:
    """Real entries report to a fresh ledger working against ``limit`` tracked bytes inside the block.

    Default thresholds: spill above 70 % of ``limit``, down to 60 %. Pass an :class:`InjectedLimit`
    to change the limit later (then ``ledger.configure(ledger.settings)`` to read it at once). The
    monitor checks every ``monitor_interval`` seconds (an hour by default: only the entries' own
    checks spill). ``clock`` replaces the ledger's monotonic clock (a :class:`FakeClock` lets a test
    step past a failed entry's backoff). The process's ledger is put back, and the test's closed,
    afterwards.
    """
    probe = limit if isinstance(limit, InjectedLimit) else InjectedLimit(limit)
    test_ledger = MemoryLedger(
        probe, environ={}, monitor_interval=monitor_interval, clock=clock if clock is not None else time.monotonic
    )
    previous = _budget.ledger
    _budget.ledger = test_ledger
    try:
        yield test_ledger
    finally:
        _budget.ledger = previous
        test_ledger.close()


def fake_psutil(available: int) -> SimpleNamespace:
    """A stand-in for ``psutil`` that reports ``available`` bytes of memory (the write chunk is 10 % of it)."""
    return SimpleNamespace(virtual_memory=lambda: SimpleNamespace(available=available))
