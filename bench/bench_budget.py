"""The memory budget's cost on hot paths: ``touch()`` and ``check()`` per call, against a no-op.

Run alone: ``.venv/bin/python bench/bench_budget.py [--quick] [--entries N]``.

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
import statistics
import sys
import time
from collections.abc import Callable

import numpy as np

from lazy_disk_cache._budget import BudgetSettings, MemoryLedger

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
    return 0


if __name__ == "__main__":
    sys.exit(main())
