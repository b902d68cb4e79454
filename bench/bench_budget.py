"""The memory budget's cost on hot paths: ``touch()`` and ``check()`` per call, against a no-op.

Run alone: ``.venv/bin/python bench/bench_budget.py [--quick] [--entries N]``.

Second part, real entries: ``entry[i]`` over many small entries in RAM (caching off), round
robin, with the budget on (the default), with it off (``memory_budget(None)``), and through a
``__getitem__`` written as it was before entries reported to the budget (no ``touch()``, the
baseline the budget's cost is judged against). Target: at most 5 % over either. For the record,
one more variant touches a ledger record kept by the entry, the design entries moved away from
(the entry's own use stamp costs far less, see ``_budget.UseClock``).

Entries mark themselves used on every access (``ledger.touch(entry)``, or ``record.touch()`` on
the record ``track()`` returned), call ``ledger.check()`` whenever they take RAM, and pin
themselves around uses that outlive their lock. This measures those calls on a ledger
holding ``--entries`` tracked entries, far below its spill threshold (the common case), against
a no-op method call with the same arguments: that ratio is the budget's own cost. A 1-element
``ndarray.__getitem__`` is printed beside it for scale, since that is the cheapest access an entry
wraps. Variants are interleaved within each repetition, starting with a different one each time;
the figures are medians over repetitions of per-call nanoseconds and of the per-repetition ratio
against the no-op.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import sys
import time
import weakref
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from lazy_disk_cache import DiskBackedNDArray, memory_budget
from lazy_disk_cache._budget import BudgetSettings, LedgerRecord, MemoryLedger

KIB = 1024


class _Entry:
    """The smallest thing the ledger tracks: it never needs spilling here."""

    def spill(self) -> int | None:
        return None


class _NoOpLedger:
    """The baseline: method calls of the same shape that do nothing."""

    def touch(self, entry: object) -> None:
        pass

    def check(self) -> None:
        pass


def _loop(body: Callable[[int], None], calls: int) -> float:
    """Nanoseconds per call of ``body`` over ``calls`` calls (the loop's own cost included in all)."""
    started = time.perf_counter_ns()
    body(calls)
    return (time.perf_counter_ns() - started) / calls


def _variants(ledger: MemoryLedger, entries: list[_Entry]) -> dict[str, Callable[[int], None]]:
    noop = _NoOpLedger()
    entry = entries[len(entries) // 2]
    small = np.arange(16, dtype=np.float64)

    def no_op(calls: int) -> None:
        for _ in range(calls):
            noop.touch(entry)
            noop.check()

    def touch(calls: int) -> None:
        for _ in range(calls):
            ledger.touch(entry)
            noop.check()

    def check(calls: int) -> None:
        for _ in range(calls):
            noop.touch(entry)
            ledger.check()

    def touch_and_check(calls: int) -> None:
        for _ in range(calls):
            ledger.touch(entry)
            ledger.check()

    def getitem(calls: int) -> None:
        for _ in range(calls):
            small[3]
            noop.check()

    return {
        "no-op touch() + check()": no_op,
        "touch()": touch,
        "check()": check,
        "touch() + check()": touch_and_check,
        **_handle_variants(ledger, entry, noop),
        "ndarray[i] (for scale)": getitem,
    }


def _handle_variants(ledger: MemoryLedger, entry: _Entry, noop: _NoOpLedger) -> dict[str, Callable[[int], None]]:
    """The calls an entry can make through handles it keeps: its ledger record and a pin guard."""
    record = ledger.track(entry, KIB)
    guard = ledger.pinned(entry)

    def record_touch(calls: int) -> None:
        for _ in range(calls):
            record.touch()
            noop.check()

    def pinned(calls: int) -> None:
        for _ in range(calls):
            with ledger.pinned(entry):
                noop.check()

    def kept_guard(calls: int) -> None:
        for _ in range(calls):
            with guard:
                noop.check()

    return {
        "record.touch() (a kept record)": record_touch,
        "with pinned(entry):": pinned,
        "with guard: (a kept PinGuard)": kept_guard,
    }


def measure(*, entries: int, calls: int, reps: int) -> dict[str, tuple[float, float]]:
    """Per variant: (median ns per call, median ratio against the no-op)."""
    ledger = MemoryLedger(environ={})
    ledger.configure(BudgetSettings())
    tracked = [_Entry() for _ in range(entries)]
    for entry in tracked:
        ledger.track(entry, KIB)
    ledger.check()  # the first check reads RssAnon and the limit; later ones are the hot path
    variants = _variants(ledger, tracked)
    names = list(variants)
    per_call: dict[str, list[float]] = {name: [] for name in names}
    ratios: dict[str, list[float]] = {name: [] for name in names}
    try:
        for body in variants.values():
            body(calls // 10)  # warm-up
        for rep in range(reps):
            order = names[rep % len(names) :] + names[: rep % len(names)]
            this_rep = {name: _loop(variants[name], calls) for name in order}
            for name in names:
                per_call[name].append(this_rep[name])
                ratios[name].append(this_rep[name] / this_rep[names[0]])
    finally:
        ledger.close()
    return {name: (statistics.median(per_call[name]), statistics.median(ratios[name])) for name in names}


def _ensure_loaded_before_the_budget(func: Callable[..., Any], *, touch: bool = False) -> Callable[..., Any]:
    """``LazyDiskCache.ensure_loaded`` as it was before entries reported to the budget.

    With ``touch``, it calls ``record.touch()`` on a kept ledger record instead of the entry's
    own use stamp: the design the entries do not use.
    """

    @functools.wraps(func)
    def wrapper(self: Any, /, *args: Any, **kwargs: Any) -> Any:
        with self._lock:
            if touch:
                self.bench_record.touch()
            was_offloaded = not self._in_memory
            if was_offloaded:
                self.load(self._reload_mode())
            try:
                return func(self, *args, **kwargs)
            finally:
                if was_offloaded and self._automatic_offloading:
                    self.offload()

    return wrapper


class _PreBudgetEntry(DiskBackedNDArray):
    """``DiskBackedNDArray.__getitem__`` as it was before entries reported to the budget."""

    @_ensure_loaded_before_the_budget
    def __getitem__(self, key: Any) -> Any:
        return self._data[key]


class _RecordTouchEntry(DiskBackedNDArray):
    """``__getitem__`` touching a ledger record kept by the entry (one more object per access)."""

    bench_record: LedgerRecord

    @functools.partial(_ensure_loaded_before_the_budget, touch=True)
    def __getitem__(self, key: Any) -> Any:
        return self._data[key]


def _sweep(entries: Sequence[DiskBackedNDArray], calls: int) -> float:
    """Nanoseconds per ``entry[3]``, round robin over ``entries``, ``calls`` accesses in all."""
    rounds = max(1, calls // len(entries))
    started = time.perf_counter_ns()
    for _ in range(rounds):
        for entry in entries:
            entry[3]
    return (time.perf_counter_ns() - started) / (rounds * len(entries))


def measure_entries(*, entries: int, calls: int, reps: int) -> dict[str, tuple[float, float, float]]:
    """Per variant: (median ns per access, median ratio to budget off, median ratio to no budget calls)."""
    with_budget = [DiskBackedNDArray(np.arange(16, dtype=np.float64)) for _ in range(entries)]
    without = [_PreBudgetEntry(np.arange(16, dtype=np.float64)) for _ in range(entries)]
    touching = [_RecordTouchEntry(np.arange(16, dtype=np.float64)) for _ in range(entries)]
    for entry in touching:
        entry.bench_record = LedgerRecord(weakref.ref(entry), 128)

    def on(calls: int) -> float:
        memory_budget()
        return _sweep(with_budget, calls)

    def off(calls: int) -> float:
        memory_budget(None)
        return _sweep(with_budget, calls)

    def no_calls(calls: int) -> float:
        memory_budget(None)
        return _sweep(without, calls)

    def record_touch(calls: int) -> float:
        memory_budget()
        return _sweep(touching, calls)

    variants: dict[str, Callable[[int], float]] = {
        "budget on (default)": on,
        "budget off": off,
        "no budget calls (before)": no_calls,
        "record.touch() instead": record_touch,
    }
    names = list(variants)
    per_call: dict[str, list[float]] = {name: [] for name in names}
    try:
        for body in variants.values():
            body(calls // 10)  # warm-up
        for rep in range(reps):
            for name in names[rep % len(names) :] + names[: rep % len(names)]:
                per_call[name].append(variants[name](calls))
    finally:
        memory_budget()
    results = {}
    for name in names:
        to_off = [a / b for a, b in zip(per_call[name], per_call["budget off"], strict=True)]
        to_none = [a / b for a, b in zip(per_call[name], per_call["no budget calls (before)"], strict=True)]
        results[name] = (statistics.median(per_call[name]), statistics.median(to_off), statistics.median(to_none))
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="few calls and repetitions (a smoke run)")
    parser.add_argument("--entries", type=int, default=10_000, help="tracked entries in the ledger")
    args = parser.parse_args(argv)
    calls, reps = (20_000, 3) if args.quick else (500_000, 9)

    results = measure(entries=args.entries, calls=calls, reps=reps)

    print(f"memory budget hot-path cost: {args.entries} tracked entries, {reps} reps x {calls} calls, medians")
    for name, (nanoseconds, ratio) in results.items():
        print(f"  {name:<32} {nanoseconds:8.1f} ns/call  {ratio:6.2f}x no-op")
    baseline = results["no-op touch() + check()"][0]
    overhead = results["touch() + check()"][0] - baseline
    print(f"  budget overhead per access (touch + check - no-op): {overhead:.1f} ns")

    entry_count = min(args.entries, 10_000)
    entries = measure_entries(entries=entry_count, calls=calls, reps=reps)
    print(f"entry[3] round robin over {entry_count} entries of 128 bytes in RAM, {reps} reps x {calls}, medians")
    for name, (nanoseconds, to_off, to_none) in entries.items():
        print(f"  {name:<26} {nanoseconds:8.1f} ns/access  {to_off:6.3f}x budget off  {to_none:6.3f}x no budget calls")
    worst = max(entries["budget on (default)"][1:])
    verdict = "met" if worst <= 1.05 else "NOT met"
    print(f"  target: budget on <= 1.05x budget off and no budget calls: {worst:.3f}x, {verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
