"""The process-wide memory budget: a ledger of entries' RAM, an LRU spill policy and its monitor.

Entries report to the ledger; the ledger decides *which* entry to spill and *when*, and the
entry's own offload code does the work under the entry's own lock. This module never imports an
entry class or the store.

What is measured
    The measured total is the process's ``RssAnon`` (``/proc/self/status``): every anonymous page
    it holds, managed or not. Entry buffers held in RAM are anonymous memory, so they are already
    part of ``RssAnon``; adding the ledger's bytes on top would count them twice. The ledger's
    *managed bytes* instead say which part of the total can be spilled, and
    ``unmanaged = max(0, RssAnon - managed)`` is everything else (interpreter, user arrays,
    libraries). ``VmRSS`` is never used: it includes file pages mapped from disk (offloaded and
    mapped entries), which the kernel drops on its own, so it would spill for nothing. Private
    copy-on-write pages written in a mapped entry are anonymous and do count. Where ``RssAnon``
    is unavailable the total falls back to the managed bytes.

Policy
    When the total passes ``spill`` x limit (default 0.7), least-recently-used unpinned entries
    are spilled until the total is at most ``target`` x limit (default 0.6). The limit is the
    effective memory limit (physical memory, cgroup v1/v2, ``RLIMIT_AS``; see
    :mod:`lazy_disk_cache._memory_limits`), re-read at most once a second, optionally scaled
    ("80%") or capped (bytes) by :func:`memory_budget`.

How entries report (the integration contract; see :class:`MemoryLedger` for each call)
    ``ledger.track(entry, nbytes)`` when the entry takes anonymous RAM, then ``ledger.check()``
    once its lock is released; ``ledger.untrack(entry)`` when that RAM is let go (offload,
    conversion to a mapping, spill); ``ledger.touch(entry)`` on each use, or, cheapest, a stamp
    of :data:`use_clock` kept in the entry itself (see :class:`UseClock`); ``ledger.pinned(entry)``
    around a use that must not see the buffer spilled while the entry's lock is released. Entries
    implement :class:`Spillable`.

Threads and locks
    The ledger's lock is only ever held for bookkeeping, never while calling into an entry, so
    the lock order is always entry lock -> ledger lock. Spilling snapshots candidates under the
    ledger lock, releases it, then calls ``spill()``, which must not block on the entry's lock.
    One thread spills at a time; a thread that asks for a spill while another spills waits for
    it (backpressure), then re-measures. A daemon monitor thread checks every 200 ms while any
    entry holds tracked RAM and exits once none has for a few seconds (starting a thread costs
    about as much as reloading a few keys, and programs drop and reload entries in bursts). A
    forked child starts with an empty ledger and no monitor thread.
"""

from __future__ import annotations

import atexit
import ctypes
import functools
import itertools
import logging
import math
import os
import threading
import time
import warnings
import weakref
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

from lazy_disk_cache._memory_limits import EffectiveLimit, MemoryProbe

__all__ = [
    "DEFAULT_SPILL",
    "DEFAULT_TARGET",
    "ENV_VAR",
    "BudgetSettings",
    "LedgerRecord",
    "MemoryBudgetWarning",
    "MemoryLedger",
    "MemoryStats",
    "PinGuard",
    "Spillable",
    "ledger",
    "memory_budget",
    "memory_stats",
    "parse_budget_limit",
]

logger = logging.getLogger(__name__)

ENV_VAR = "LAZY_DISK_CACHE_MEMORY_BUDGET"
DEFAULT_TARGET = 0.6  # dask.distributed's worker defaults: spill at 70 % of the limit, down to 60 %
DEFAULT_SPILL = 0.7

MONITOR_INTERVAL_SECONDS = 0.2
# The monitor exits after this many checks in a row found nothing tracked (5 s at 200 ms).
MONITOR_IDLE_CHECKS = 25
LIMIT_MAX_AGE_SECONDS = 1.0  # cgroup limits change rarely; reading them costs ~0.2 ms
# After a failed spill an entry is left alone for this long, doubling per failure up to the cap,
# so a full disk is not retried five times a second.
BACKOFF_FIRST_SECONDS = 1.0
BACKOFF_MAX_SECONDS = 60.0

LimitSpec = int | str | None


class MemoryBudgetWarning(RuntimeWarning):
    """The budget could not do its work (a spill failed, a setting was ignored); no data was lost."""


class Spillable(Protocol):
    """What an entry implements so that the budget can spill it."""

    def spill(self) -> int | None:
        """Offload this entry's RAM buffer now, without waiting for anything but the disk.

        Called from any thread (often the monitor), never with the ledger's lock held. It must
        not block on the entry's own lock: try-acquire it and return ``None`` when it is held,
        or when ``ledger.is_pinned(self)`` is true once the lock is held (the entry is in use).
        On success it calls ``ledger.untrack(self)`` (as every offload does) and returns the
        bytes of RAM let go (0 when it held none). A failure raises ``OSError`` and leaves the
        entry in RAM with its data intact.
        """
        ...


@dataclass(frozen=True, slots=True)
class BudgetSettings:
    """A budget request: off, or a fraction of the detected limit, optionally capped in bytes."""

    enabled: bool = True
    fraction: float = 1.0
    cap_bytes: int | None = None
    target: float = DEFAULT_TARGET
    spill: float = DEFAULT_SPILL

    def describe(self) -> str:
        if not self.enabled:
            return "off"
        if self.cap_bytes is not None:
            return f"{self.cap_bytes} bytes"
        return "auto" if self.fraction == 1.0 else f"{self.fraction * 100:g}%"


@dataclass(frozen=True, slots=True)
class MemoryStats:
    """A snapshot of the memory budget (all sizes in bytes).

    ``limit`` is what the budget works against (the detected effective limit, scaled or capped
    by the settings; reported even when the budget is off), ``limit_source`` what imposes it.
    ``managed_bytes`` are entry buffers in anonymous RAM, ``unmanaged_bytes`` the rest of the
    process's ``RssAnon``. ``spilled_*`` and ``spill_failures`` count since the process (or the
    forked child) started; ``last_spill_seconds`` is the duration of the last spill batch.
    """

    enabled: bool
    limit: int
    limit_source: str
    spill_threshold: int
    target_threshold: int
    managed_bytes: int
    unmanaged_bytes: int
    tracked_entries: int
    spilled_count: int
    spilled_bytes: int
    spill_failures: int
    last_spill_seconds: float | None


# One sequence of stamps for every ledger, so that stamps taken anywhere compare.
_TICKS = itertools.count()


class UseClock:
    """The stamp an entry copies into itself on each use, for the cheapest LRU bookkeeping there is.

    On its hot path an entry stores ``use_clock.now`` in one of its own attributes (one load and
    one store, no call, no lock) and hands ``track()`` a ``use_stamp`` function that reads it back.
    The ledger reads that stamp only when it orders spill candidates. Measured over 10,000 small
    entries accessed round robin, ``record.touch()`` cost 12-30 % of an ``entry[i]`` (the record
    is one more object per access, and rarely in the CPU cache), this store 0-3 %.

    ``now`` advances with every stamp the ledgers take (tracking an entry, ``touch()``) and on each
    of the monitor's checks, so stamps order uses to that precision: two uses between the same
    two ticks look alike (ties go to the entry tracked first).
    """

    __slots__ = ("now",)

    def __init__(self) -> None:
        self.now = next(_TICKS)


use_clock = UseClock()
"""The process's use clock (see :class:`UseClock`)."""


def _tick() -> int:
    """A fresh stamp, published on the use clock."""
    stamp = next(_TICKS)
    use_clock.now = stamp
    return stamp


class LedgerRecord:
    """What the ledger knows about one tracked entry (held weakly); :meth:`MemoryLedger.track` returns it.

    An entry may keep it and call :meth:`touch` on its hot paths: that skips the ledger's lookup
    by id (an entry that stamps itself from :data:`use_clock` needs neither). After the entry is
    untracked the record is detached, and touching it does nothing anyone reads; the next
    ``track()`` returns a fresh one. The other attributes belong to the ledger.
    """

    __slots__ = ("backoff_until", "failures", "last_use", "nbytes", "ref", "use_stamp")

    def __init__(
        self,
        ref: Callable[[], Spillable | None],
        nbytes: int,
        use_stamp: Callable[[Spillable], int] | None = None,
    ) -> None:
        self.ref = ref
        self.nbytes = nbytes
        self.use_stamp = use_stamp
        self.last_use = _tick()  # a larger stamp is a more recent use
        self.failures = 0
        self.backoff_until = -math.inf

    def touch(self) -> None:
        """Mark the entry most recently used: one attribute write, no lock, no system call."""
        self.last_use = _tick()

    def recency(self) -> int:
        """The entry's most recent use: the later of this record's stamp and the entry's own."""
        read = self.use_stamp
        entry = self.ref() if read is not None else None
        if read is None or entry is None:
            return self.last_use
        return max(self.last_use, read(entry))


def _no_entry() -> None:
    """The entry reference of a detached record."""


class _SpillingFlag(threading.local):
    """Per thread: is this thread inside a spill? (A class default makes the read ~40 ns, not ~300.)"""

    active = False


class PinGuard:
    """``with guard:`` pins one entry for the block; re-entrant and reusable.

    It holds the entry's id, not the entry, so an entry can keep its own guard (made once, no
    reference cycle) and pin itself with no allocation per use.
    """

    __slots__ = ("_key", "_ledger")

    def __init__(self, ledger: MemoryLedger, entry: Spillable) -> None:
        self._ledger = ledger
        self._key = id(entry)

    def __enter__(self) -> None:
        self._ledger._pin_key(self._key)

    def __exit__(self, *exc_info: object) -> None:
        self._ledger._unpin_key(self._key, "entry")


def _parse_fraction_percent(text: str) -> float:
    number = text[:-1].strip()
    try:
        percent = float(number)
    except ValueError:
        raise ValueError(f"memory budget limit {text!r}: expected a percentage such as '80%'") from None
    if not 0 < percent <= 100 or math.isnan(percent):
        raise ValueError(f"memory budget limit {text!r}: the percentage must be in (0, 100]")
    return percent / 100


def parse_budget_limit(limit: object) -> BudgetSettings:
    """Turn a limit request into settings (default thresholds).

    ``"auto"``: the detected effective limit. ``"<n>%"``: that share of it. An ``int`` (or a
    string of digits, as the environment gives it): at most that many bytes, and never more than
    the detected limit. ``None`` or ``"off"``: no budget. Anything else is a ``TypeError``
    (wrong type) or ``ValueError`` (wrong value) that says what is accepted.
    """
    if limit is None:
        return BudgetSettings(enabled=False)
    if isinstance(limit, bool) or not isinstance(limit, int | str):
        raise TypeError(
            f"memory budget limit must be None, 'off', 'auto', bytes (int) or a percentage such as '80%', "
            f"not {type(limit).__name__}"
        )
    if isinstance(limit, str):
        text = limit.strip().lower()
        if text == "off":
            return BudgetSettings(enabled=False)
        if text == "auto":
            return BudgetSettings()
        if text.endswith("%"):
            return BudgetSettings(fraction=_parse_fraction_percent(text))
        if not text.isdigit():
            raise ValueError(
                f"memory budget limit {limit!r}: expected 'off', 'auto', a number of bytes "
                "or a percentage such as '80%'"
            )
        limit = int(text)
    if limit <= 0:
        raise ValueError(f"memory budget limit must be a positive number of bytes, not {limit}")
    return BudgetSettings(cap_bytes=limit)


def _check_threshold(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"memory budget {name} must be a number (a fraction of the limit), not {type(value).__name__}")
    return float(value)


def _with_thresholds(settings: BudgetSettings, target: object, spill: object) -> BudgetSettings:
    target_value, spill_value = _check_threshold("target", target), _check_threshold("spill", spill)
    if not 0 < target_value < spill_value <= 1:
        raise ValueError(
            f"memory budget thresholds must satisfy 0 < target < spill <= 1, got target={target!r}, spill={spill!r}"
        )
    return BudgetSettings(settings.enabled, settings.fraction, settings.cap_bytes, target_value, spill_value)


class MemoryLedger:
    """Tracks entries' anonymous RAM, keeps them in LRU order and spills them over the threshold.

    One instance, :data:`ledger`, serves the process; tests build their own with a fake
    ``probe`` (limit and ``RssAnon``) and ``clock``. Every method is thread-safe.

    Entries call, with ``entry`` the entry object itself:

    - :meth:`track` ``(entry, nbytes)``: the entry now holds ``nbytes`` of anonymous RAM (created
      or loaded in RAM, adopted, ``disable_caching``, written copy-on-write). May be called under
      the entry's lock. Then :meth:`check` once the lock is released.
    - :meth:`untrack` ``(entry)``: the entry let its RAM go (offload, conversion to a mapping,
      spill, purge). Idempotent; may be called under the entry's lock.
    - :meth:`touch` ``(entry)``: on every use (``__getitem__``, ufuncs, ``__array__``, ``data``).
      O(1), no lock, no system call. Cheaper still: keep the :class:`LedgerRecord` that
      ``track()`` returned and call its ``touch()``.
    - :meth:`pinned` ``(entry)``: context manager around a use that must not see the buffer
      spilled and does not hold the entry's lock throughout (a buffer export, an
      ``ensure_loaded`` block around user code). Re-entrant. An operation that holds the entry's
      lock from start to end (``__getitem__``, a ufunc) needs no pin, because ``spill()``
      try-acquires that lock; a pin costs two lock round trips, so it stays off such hot paths.
    - :meth:`check` ``()``: after taking RAM. One comparison while under the threshold. May spill
      other entries in the calling thread, so never call it while holding an unpinned entry's
      lock.
    """

    def __init__(
        self,
        probe: MemoryProbe | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        environ: Mapping[str, str] = os.environ,
        monitor_interval: float = MONITOR_INTERVAL_SECONDS,
    ) -> None:
        self._probe = probe if probe is not None else MemoryProbe()
        self._clock = clock
        self._environ = environ
        self._monitor_interval = monitor_interval
        self._settings: BudgetSettings | None = None
        self._reset_state()
        _LEDGERS.add(self)

    def _reset_state(self) -> None:
        """Everything but the settings: fresh at construction and in a forked child."""
        self._lock = threading.Lock()
        self._spill_lock = threading.Lock()
        self._spilling = _SpillingFlag()
        # Keyed by id() because entries need not be hashable; the weakref callback and the
        # record's own ref guard against id reuse. LRU order comes from the records' stamps.
        self._records: dict[int, LedgerRecord] = {}
        self._pins: dict[int, int] = {}
        # Weakref callbacks run wherever the collector runs, possibly inside `with self._lock`
        # on this very thread: they only queue the dead key, and the next locked call reaps it.
        self._dead: deque[tuple[int, weakref.ref[Spillable]]] = deque()
        self._managed = 0
        self._limit: EffectiveLimit | None = None
        self._limit_read_at = -math.inf
        self._spill_at = 0
        self._target_at = 0
        # check()'s fast path: while the managed bytes stay at or below this ceiling, the last
        # measured total plus what entries took since is still under the spill threshold.
        # -inf forces the first check() to measure; +inf means the budget is off.
        self._managed_ceiling = -math.inf
        self._spilled_count = 0
        self._spilled_bytes = 0
        self._spill_failures = 0
        self._last_spill_seconds: float | None = None
        # A full disk fails every spill, five times a second across entries: each errno warns once.
        self._warned_errnos: set[int | None] = set()
        self._monitor: threading.Thread | None = None
        self._monitor_stop = threading.Event()
        self._closed = False

    # -- settings ----------------------------------------------------------------------------

    @property
    def settings(self) -> BudgetSettings:
        """The settings in force; the first call reads ``LAZY_DISK_CACHE_MEMORY_BUDGET``."""
        settings = self._settings
        if settings is None:
            settings = self._settings_from_environment()
            with self._lock:
                if self._settings is None:
                    self._settings = settings
                settings = self._settings
        return settings

    def _settings_from_environment(self) -> BudgetSettings:
        raw = self._environ.get(ENV_VAR)
        if raw is None or not raw.strip():
            return BudgetSettings()
        try:
            return parse_budget_limit(raw)
        except (TypeError, ValueError) as err:
            message = f"ignoring {ENV_VAR}={raw!r} ({err}); the memory budget uses the detected limit"
            logger.warning("Ignoring %s=%r (%s); the memory budget uses the detected limit", ENV_VAR, raw, err)
            warnings.warn(message, MemoryBudgetWarning, stacklevel=2)
            return BudgetSettings()

    def configure(self, settings: BudgetSettings) -> None:
        """Put ``settings`` in force now: thresholds are recomputed, the monitor started or stopped."""
        with self._lock:
            self._settings = settings
            self._limit_read_at = -math.inf
            self._refresh_limit_locked()
            self._managed_ceiling = -math.inf if settings.enabled else math.inf
            if settings.enabled:
                self._start_monitor_locked()
            else:
                self._stop_monitor_locked()
        logger.info("Memory budget set to %s", settings.describe())

    def _refresh_limit_locked(self) -> None:
        now = self._clock()
        if now - self._limit_read_at < LIMIT_MAX_AGE_SECONDS and self._limit is not None:
            return
        settings = self._settings if self._settings is not None else BudgetSettings()
        detected = self._probe.effective_limit()
        nbytes, source = int(detected.nbytes * settings.fraction), detected.source
        if settings.fraction != 1.0:
            source = f"{settings.fraction * 100:g}% of {source}"
        if settings.cap_bytes is not None and settings.cap_bytes < nbytes:
            nbytes, source = settings.cap_bytes, "memory_budget() setting"
        limit = EffectiveLimit(nbytes, source)
        if limit != self._limit:
            logger.debug("Memory budget limit is %d bytes (%s)", nbytes, source)
        self._limit, self._limit_read_at = limit, now
        self._spill_at = int(nbytes * settings.spill)
        self._target_at = int(nbytes * settings.target)

    # -- what entries call -------------------------------------------------------------------

    def track(
        self, entry: Spillable, nbytes: int, *, use_stamp: Callable[[Spillable], int] | None = None
    ) -> LedgerRecord:
        """Record that ``entry`` holds ``nbytes`` of anonymous RAM and mark it most recently used.

        Replaces the entry's previous count (so a reload or a copy-on-write write just reports
        the new total). 0 bytes untracks (and returns a detached record). O(1); starts the
        monitor thread if it is not running. The returned record's ``touch()`` marks the entry
        used later; cheaper still, an entry that stamps itself with :data:`use_clock` passes
        ``use_stamp``, which reads that stamp back from the entry (the ledger keeps it, so it
        must not hold the entry: a shared getter such as ``operator.attrgetter``).
        """
        if isinstance(nbytes, bool) or not isinstance(nbytes, int):
            raise TypeError(f"tracked bytes must be an int, not {type(nbytes).__name__}")
        if nbytes < 0:
            raise ValueError(f"tracked bytes must not be negative, got {nbytes}")
        if nbytes == 0:
            self.untrack(entry)
            return LedgerRecord(_no_entry, 0)
        enabled = self.settings.enabled
        key = id(entry)
        with self._lock:
            self._reap_locked()
            record = self._records.get(key)
            if record is not None and record.ref() is entry:
                self._managed += nbytes - record.nbytes
                record.nbytes = nbytes
                record.use_stamp = use_stamp
                record.touch()
            else:
                if record is not None:
                    self._managed -= record.nbytes
                record = LedgerRecord(weakref.ref(entry, self._dead_callback(key)), nbytes, use_stamp)
                self._records[key] = record
                self._managed += nbytes
            if enabled:
                self._start_monitor_locked()
        return record

    def _dead_callback(self, key: int) -> Callable[[weakref.ref[Spillable]], None]:
        dead_keys = self._dead

        def queue_dead(ref: weakref.ref[Spillable]) -> None:
            dead_keys.append((key, ref))

        return queue_dead

    def untrack(self, entry: Spillable) -> None:
        """Forget ``entry``'s RAM (it let its buffer go). Idempotent; O(1)."""
        key = id(entry)
        with self._lock:
            record = self._records.get(key)
            if record is not None and record.ref() is entry:
                del self._records[key]
                self._managed -= record.nbytes

    def touch(self, entry: Spillable) -> None:
        """Mark ``entry`` most recently used. O(1), no lock, no system call: ~80 ns over a no-op call.

        ``LedgerRecord.touch()`` on the record ``track()`` returned does the same in ~40 ns, and an
        entry's own :data:`use_clock` stamp in a few (bench/bench_budget.py measures all three).

        Lock-free on purpose (bench/bench_budget.py measured a locked OrderedDict move at ~3x
        the cost, against a ~400 ns entry ``__getitem__``): it only stores a fresh stamp in the
        entry's record, a single attribute write. A record untracked meanwhile just gets a stamp
        nobody reads; two racing touches may land in either order, which LRU does not mind.
        """
        record = self._records.get(id(entry))
        if record is not None:
            record.last_use = _tick()

    def pin(self, entry: Spillable) -> None:
        """Forbid spilling ``entry`` until the matching :meth:`unpin`. Counts, so pins nest."""
        self._pin_key(id(entry))

    def unpin(self, entry: Spillable) -> None:
        """Undo one :meth:`pin`; ``ValueError`` for an entry that is not pinned."""
        self._unpin_key(id(entry), type(entry).__name__)

    def pinned(self, entry: Spillable) -> PinGuard:
        """``with ledger.pinned(entry):`` keeps ``entry`` from being spilled inside the block.

        The guard can be kept and reused (an entry may make its own once); see :class:`PinGuard`.
        """
        return PinGuard(self, entry)

    def _pin_key(self, key: int) -> None:
        with self._lock:
            self._pins[key] = self._pins.get(key, 0) + 1

    def _unpin_key(self, key: int, what: str) -> None:
        with self._lock:
            count = self._pins.pop(key, 0)
            if count > 1:
                self._pins[key] = count - 1
        if count == 0:
            raise ValueError(f"unpin of {what} that is not pinned")

    def is_pinned(self, entry: Spillable) -> bool:
        """Whether ``entry`` is pinned now (an entry's ``spill()`` asks this under its own lock)."""
        with self._lock:
            return id(entry) in self._pins

    def check(self) -> None:
        """Spill if entries' RAM pushed the total past the spill threshold; one comparison below it.

        The total is estimated as the last measured ``RssAnon`` plus the managed bytes added
        since: below the threshold that is a single unlocked comparison, with no system call.
        Past it, ``RssAnon`` is measured, and if the total really is over, entries are spilled in
        the calling thread (after waiting for a spill already running in another thread). Growth
        the entries do not report (the program's own arrays) is the monitor thread's to see.
        Does nothing when the budget is off or inside a spill.
        """
        if self._managed <= self._managed_ceiling:
            return
        if self._spilling.active:
            return
        self._spill_if_needed()

    @property
    def managed_bytes(self) -> int:
        """The anonymous RAM tracked entries report holding now. O(1), no lock."""
        return self._managed

    def has_room_for(self, nbytes: int) -> bool:
        """Whether ``nbytes`` more of managed RAM keep the total at or under the spill threshold.

        Always true when the budget is off. One unlocked comparison while the estimate (the last
        ``RssAnon`` plus the managed bytes added since) says so; otherwise ``RssAnon`` is measured.
        An entry that may choose between holding data in RAM and writing a file asks this first,
        so that its choice never makes the budget spill.
        """
        if self._managed + nbytes <= self._managed_ceiling or not self.settings.enabled:
            return True
        with self._lock:
            total = self._measure_locked()
            return total + nbytes <= self._spill_at

    # -- measuring and spilling --------------------------------------------------------------

    def _measure_locked(self) -> int:
        self._reap_locked()
        self._refresh_limit_locked()
        anon = self._probe.rss_anon()
        total = self._managed if anon is None else anon
        enabled = self._settings is None or self._settings.enabled
        self._managed_ceiling = self._spill_at - total + self._managed if enabled else math.inf
        return total

    def _spill_if_needed(self) -> None:
        if not self.settings.enabled:
            self._managed_ceiling = math.inf
            return
        with self._lock:
            total = self._measure_locked()
            if total <= self._spill_at:
                return
        with self._spill_lock:
            self._spilling.active = True
            try:
                self._spill_batch()
            finally:
                self._spilling.active = False

    def _candidates_locked(self, now: float) -> list[Callable[[], Spillable | None]]:
        """Spillable entries, least recently used first (weakly: a candidate may die before its turn).

        Sorting by stamp here, O(n log n) per spill batch, is what keeps :meth:`touch` O(1).
        """
        pins = self._pins
        ready = [record for key, record in self._records.items() if key not in pins and record.backoff_until <= now]
        ready.sort(key=LedgerRecord.recency)
        return [record.ref for record in ready]

    def _spill_batch(self) -> None:
        """Spill LRU entries until the total is at most the target. Holds the spill lock, not the ledger lock."""
        started = self._clock()
        with self._lock:
            total = self._measure_locked()  # again: a spill that ran while we waited may have done the work
            if total <= self._spill_at:
                return
            before, target_at = total, self._target_at
            candidates = self._candidates_locked(started)
        spilled, freed_total = 0, 0
        try:
            for ref in candidates:
                if total - freed_total <= target_at:
                    break
                entry = ref()
                if entry is None:
                    continue
                freed = self._spill_one(entry)
                del entry
                if freed:
                    spilled, freed_total = spilled + 1, freed_total + freed
        finally:
            if spilled:
                trim_heap()
            seconds = self._clock() - started
            with self._lock:
                self._spilled_count += spilled
                self._spilled_bytes += freed_total
                self._last_spill_seconds = seconds
                after = self._measure_locked()
                limit = self._limit
        if spilled:
            logger.info(
                "Spilled %d entries (%d bytes) in %.3f s: anonymous memory %d -> %d bytes, limit %d bytes (%s)",
                spilled,
                freed_total,
                seconds,
                before,
                after,
                limit.nbytes if limit else 0,
                limit.source if limit else "unknown",
            )
        else:
            logger.debug("Over the memory budget (%d bytes) but no entry could be spilled", before)

    def _spill_one(self, entry: Spillable) -> int:
        """Spill one entry; 0 when it is busy, pinned or failed (then backed off and reported)."""
        if self.is_pinned(entry):
            return 0
        try:
            freed = entry.spill()
        except OSError as err:
            # Its traceback holds the failed spill's frames and with them the entry's buffer: a log
            # handler keeping the record would keep the very RAM the spill was meant to free.
            err.__traceback__ = None
            self._spill_failed(entry, err)
            return 0
        except Exception:
            # A bug in an entry's spill must not take the monitor down; the entry stays in RAM.
            logger.exception("Spilling %s failed unexpectedly; it stays in RAM", type(entry).__name__)
            self._back_off(entry)
            return 0
        if freed is None:
            return 0
        with self._lock:
            record = self._records.get(id(entry))
            if record is not None and record.ref() is entry:
                record.failures, record.backoff_until = 0, -math.inf
        return freed

    def _back_off(self, entry: Spillable) -> None:
        with self._lock:
            self._spill_failures += 1
            record = self._records.get(id(entry))
            if record is not None and record.ref() is entry:
                delay = min(BACKOFF_FIRST_SECONDS * 2**record.failures, BACKOFF_MAX_SECONDS)
                record.failures += 1
                record.backoff_until = self._clock() + delay

    def _spill_failed(self, entry: Spillable, err: OSError) -> None:
        self._back_off(entry)
        name = type(entry).__name__
        with self._lock:
            first = err.errno not in self._warned_errnos
            self._warned_errnos.add(err.errno)
        if not first:
            logger.debug("Spilling %s failed again (%s); it stays in RAM", name, err)
            return
        logger.warning("Could not spill %s to disk (%s); it stays in RAM and nothing is lost", name, err)
        warnings.warn(
            f"could not spill {name} to disk ({err}); it stays in RAM and nothing is lost. "
            "Further failures with the same error are logged at DEBUG.",
            MemoryBudgetWarning,
            stacklevel=2,
        )

    def _reap_locked(self) -> None:
        while self._dead:
            key, dead = self._dead.popleft()
            record = self._records.get(key)
            if record is not None and record.ref is dead:
                del self._records[key]
                self._managed -= record.nbytes
                self._pins.pop(key, None)

    # -- the monitor thread ------------------------------------------------------------------

    @property
    def monitor_running(self) -> bool:
        """Whether the monitor thread is alive (while some entry holds tracked RAM, and a few seconds after)."""
        monitor = self._monitor
        return monitor is not None and monitor.is_alive()

    def _start_monitor_locked(self) -> None:
        if self._monitor is not None or self._closed or self._managed == 0:
            return
        self._monitor_stop = threading.Event()
        self._monitor = threading.Thread(
            target=self._monitor_loop,
            args=(self._monitor_stop,),
            name="lazy_disk_cache-memory-monitor",
            daemon=True,
        )
        self._monitor.start()

    def _stop_monitor_locked(self) -> threading.Thread | None:
        monitor, self._monitor = self._monitor, None
        self._monitor_stop.set()
        return monitor

    def _monitor_loop(self, stop: threading.Event) -> None:
        idle_checks = 0
        while not stop.wait(self._monitor_interval):
            _tick()  # uses from now on are newer than those before
            with self._lock:
                self._reap_locked()
                idle_checks = idle_checks + 1 if self._managed == 0 else 0
                if idle_checks >= MONITOR_IDLE_CHECKS or stop.is_set():
                    if self._monitor is threading.current_thread():
                        self._monitor = None
                    return
                if idle_checks:
                    continue
            try:
                self._spill_if_needed()
            except Exception:
                logger.exception("The memory monitor failed to check the budget; it keeps running")

    def close(self) -> None:
        """Stop the monitor for good and wait for it (at interpreter exit, or a test's teardown)."""
        with self._lock:
            self._closed = True
            monitor = self._stop_monitor_locked()
        if monitor is not None and monitor is not threading.current_thread():
            monitor.join(timeout=10 * self._monitor_interval + 5)

    def _after_fork_in_child(self) -> None:
        settings = self._settings
        self._reset_state()
        self._settings = settings

    # -- reporting ---------------------------------------------------------------------------

    def stats(self) -> MemoryStats:
        """A fresh snapshot (reads ``RssAnon`` once, and the limit when it is over a second old)."""
        settings = self.settings
        with self._lock:
            total = self._measure_locked()
            limit = self._limit if self._limit is not None else EffectiveLimit(0, "unknown")
            return MemoryStats(
                enabled=settings.enabled,
                limit=limit.nbytes,
                limit_source=limit.source,
                spill_threshold=self._spill_at,
                target_threshold=self._target_at,
                managed_bytes=self._managed,
                unmanaged_bytes=max(0, total - self._managed),
                tracked_entries=len(self._records),
                spilled_count=self._spilled_count,
                spilled_bytes=self._spilled_bytes,
                spill_failures=self._spill_failures,
                last_spill_seconds=self._last_spill_seconds,
            )


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``, or ``None`` under another C library (or no loadable one)."""
    try:
        libc = ctypes.CDLL(None)
    except OSError:
        return None
    if not hasattr(libc, "gnu_get_libc_version") or not hasattr(libc, "malloc_trim"):
        return None
    trim: Callable[[int], int] = libc.malloc_trim
    trim.argtypes = [ctypes.c_size_t]  # type: ignore[attr-defined]
    trim.restype = ctypes.c_int  # type: ignore[attr-defined]
    return trim


def trim_heap() -> None:
    """Hand the free pages inside glibc's malloc heap back to the kernel (``malloc_trim(0)``).

    Buffers of a few hundred KiB and less come from malloc's heap, and freeing them does not
    lower ``RssAnon`` until the heap is trimmed: measured, spilling 384 MiB of 64 KiB entries
    lowered it by 0 bytes, then by 378 MiB after the trim (107 ms, the GIL released). Large
    buffers are unmapped at once, and the trim then costs well under a millisecond. A no-op
    outside glibc.
    """
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


_LEDGERS: weakref.WeakSet[MemoryLedger] = weakref.WeakSet()


def _reset_ledgers_in_child() -> None:
    for each in list(_LEDGERS):
        each._after_fork_in_child()


os.register_at_fork(after_in_child=_reset_ledgers_in_child)

ledger = MemoryLedger()
"""The process's ledger: entries report to it, :func:`memory_budget` configures it."""

atexit.register(ledger.close)


def memory_budget(limit: LimitSpec = "auto", target: float = DEFAULT_TARGET, spill: float = DEFAULT_SPILL) -> None:
    """Set the process's memory budget, or turn it off.

    ``limit``: ``"auto"`` (the default) works against the detected effective limit (physical
    memory, the process's cgroup v1/v2 limits, ``RLIMIT_AS``); ``"80%"`` against that share of
    it; an ``int`` against at most that many bytes (never more than the detected limit);
    ``None`` or ``"off"`` turns the budget off. When the process's anonymous memory passes
    ``spill`` x limit, least-recently-used entries are spilled to disk until it is at most
    ``target`` x limit. Requires ``0 < target < spill <= 1``.

    Raises ``TypeError`` for a wrong type and ``ValueError`` for a wrong value; the settings in
    force are unchanged then. Overrides ``LAZY_DISK_CACHE_MEMORY_BUDGET``.
    """
    ledger.configure(_with_thresholds(parse_budget_limit(limit), target, spill))


def memory_stats() -> MemoryStats:
    """The memory budget's limit, managed and unmanaged bytes and spill counts (see :class:`MemoryStats`)."""
    return ledger.stats()
