"""An entry in use is never spilled: mid-ufunc, mid-``__getitem__``, while its buffer is exported,
inside an ``ensure_loaded`` method, while pinned, and not by a spill started further down its own
thread's stack.

Each test holds the entry in use at the moment a spill runs: a hook that NumPy calls in the middle
of the operation lowers the limit, so that every entry is over it, and then spills, from another
thread (what the monitor does) and from the using thread itself (what an entry taking RAM inside
the operation does). The entry in use must be skipped, the others spilled.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray

from budget_fakes import InjectedLimit, injected_budget
from lazy_disk_cache import DiskBackedNDArray, LazyDiskCache
from lazy_disk_cache._budget import BudgetSettings, MemoryLedger

ELEMENTS = 1024
ENTRY_BYTES = ELEMENTS * 8
LIMIT = 100 * ENTRY_BYTES
TINY_LIMIT = ENTRY_BYTES  # below one entry: everything spillable is spilled
WAIT_SECONDS = 30.0


class Budget:
    """The test's ledger and its adjustable limit."""

    def __init__(self, ledger: MemoryLedger, probe: InjectedLimit) -> None:
        self.ledger = ledger
        self.probe = probe

    def squeeze(self) -> None:
        """Lower the limit below one entry and read it at once."""
        self.probe.limit = TINY_LIMIT
        self.ledger.configure(self.ledger.settings)


@pytest.fixture
def budget() -> Iterator[Budget]:
    probe = InjectedLimit(LIMIT)
    with injected_budget(probe) as ledger:
        yield Budget(ledger, probe)


def _in_another_thread(action: Callable[[], object]) -> object:
    """Run ``action`` in a fresh thread and return its result (bounded: a deadlock fails the test)."""
    results: list[object] = []
    thread = threading.Thread(target=lambda: results.append(action()), daemon=True)
    thread.start()
    thread.join(WAIT_SECONDS)
    assert not thread.is_alive(), "the spill waited for the entry in use"
    return results[0]


class Spills:
    """What a hook saw when it tried to spill ``entry`` in the middle of an operation on it."""

    def __init__(self, budget: Budget, entry: DiskBackedNDArray, others: list[DiskBackedNDArray]) -> None:
        self.budget = budget
        self.entry = entry
        self.others = others
        self.from_another_thread: object = "not run"
        self.from_this_thread: object = "not run"
        self.others_spilled_meanwhile = False

    def run(self) -> None:
        self.budget.squeeze()
        self.from_another_thread = _in_another_thread(self.entry.spill)
        self.from_this_thread = self.entry.spill()
        _in_another_thread(self.budget.ledger.check)
        self.budget.ledger.check()
        self.others_spilled_meanwhile = all(other.spilled for other in self.others)

    def assert_entry_kept(self) -> None:
        assert (self.from_another_thread, self.from_this_thread) == (None, None)
        assert self.others_spilled_meanwhile, "the check did spill the entries not in use"
        assert not self.entry.spilled


def _values(offset: int) -> NDArray[np.float64]:
    return np.arange(ELEMENTS, dtype=np.float64) + offset


def _setup(budget: Budget) -> tuple[DiskBackedNDArray, list[DiskBackedNDArray]]:
    entry = DiskBackedNDArray(_values(0))
    others = [DiskBackedNDArray(_values(index)) for index in range(1, 4)]
    return entry, others


class ConvertedMidUfunc:
    """An operand NumPy converts inside the ufunc, i.e. while the entry operands are locked."""

    def __init__(self, spills: Spills) -> None:
        self.spills = spills

    def __array__(self, dtype: Any = None, copy: Any = None) -> NDArray[np.float64]:
        self.spills.run()
        return np.ones(ELEMENTS)


class IndexMidGetitem:
    """An index NumPy converts inside ``entry[...]``, i.e. while the entry is locked."""

    def __init__(self, spills: Spills) -> None:
        self.spills = spills

    def __index__(self) -> int:
        self.spills.run()
        return 5


def test_an_entry_is_not_spilled_in_the_middle_of_a_ufunc(budget: Budget) -> None:
    entry, others = _setup(budget)
    spills = Spills(budget, entry, others)

    result = np.add(entry, ConvertedMidUfunc(spills))

    spills.assert_entry_kept()
    assert np.array_equal(result, _values(0) + 1)


def test_an_entry_is_not_spilled_in_the_middle_of_getitem(budget: Budget) -> None:
    entry, others = _setup(budget)
    spills = Spills(budget, entry, others)

    value = entry[IndexMidGetitem(spills)]

    spills.assert_entry_kept()
    assert value == 5.0


def test_an_entry_is_not_spilled_inside_an_ensure_loaded_method(budget: Budget) -> None:
    class WithMethod(DiskBackedNDArray):
        @LazyDiskCache.ensure_loaded
        def run(self, action: Callable[[], None]) -> float:
            action()
            return float(self._data.sum())

    entry = WithMethod(_values(0))
    others = [DiskBackedNDArray(_values(index)) for index in range(1, 4)]
    spills = Spills(budget, entry, others)

    total = entry.run(spills.run)

    spills.assert_entry_kept()
    assert total == float(_values(0).sum())


def test_an_entry_is_not_spilled_while_its_buffer_is_exported(budget: Budget) -> None:
    entry, others = _setup(budget)
    export = entry.data.data
    spills = Spills(budget, entry, others)

    spills.run()
    export.cast("B")[0:8] = np.float64(-1).tobytes()

    spills.assert_entry_kept()
    del export
    budget.ledger.check()
    assert entry.spilled, "once the export is released the entry is spilled"
    assert entry[0] == -1.0


def test_a_pinned_entry_is_not_spilled_until_unpinned(budget: Budget) -> None:
    entry, others = _setup(budget)
    spills = Spills(budget, entry, others)

    with budget.ledger.pinned(entry):
        spills.run()
        spills.assert_entry_kept()

    budget.ledger.check()
    assert entry.spilled
    assert np.array_equal(np.asarray(entry), _values(0))


def test_the_monitor_thread_never_spills_an_entry_mid_ufunc() -> None:
    with injected_budget(LIMIT, monitor_interval=0.005) as ledger:
        entry = DiskBackedNDArray(_values(0))
        other = DiskBackedNDArray(_values(1))
        spilled_meanwhile: list[bool] = []

        class WaitForTheMonitor:
            def __array__(self, dtype: Any = None, copy: Any = None) -> NDArray[np.float64]:
                ledger.configure(BudgetSettings(cap_bytes=TINY_LIMIT))
                deadline = time.monotonic() + WAIT_SECONDS
                while not other.spilled and time.monotonic() < deadline:
                    time.sleep(0.01)
                spilled_meanwhile.append(entry.spilled)
                return np.ones(ELEMENTS)

        result = np.multiply(entry, WaitForTheMonitor())

        assert other.spilled, "the monitor spilled the entry not in use"
        assert spilled_meanwhile == [False]
        assert np.array_equal(result, _values(0))
