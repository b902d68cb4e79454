"""Threads create, write, read and copy entries while the monitor and their own checks spill them.

Four threads each own a set of entries without caching and a NumPy model of what each entry must
hold. They write single elements through ``entry.data`` (at once, or through the array kept across a
pause, while the others spill), add in place with ufuncs, read back, read
each other's entries, and replace entries by deep copies and pickle round trips (back in RAM, so
spilling never runs out of work). The limit holds about a fifth of the data and the monitor checks
every 2 ms. Every thread must finish (no deadlock) and every entry must end equal to its model (no
lost update), spilled or not.
"""

from __future__ import annotations

import copy
import pickle
import random
import threading
import time

import numpy as np
from numpy.typing import NDArray

from budget_fakes import injected_budget
from lazy_disk_cache import DiskBackedNDArray

THREADS = 4
ENTRIES_PER_THREAD = 12
ROUNDS = 150
ELEMENTS = 8192  # 64 KiB of float64
LIMIT = THREADS * ENTRIES_PER_THREAD * ELEMENTS * 8 // 5
JOIN_SECONDS = 120.0


class Worker:
    def __init__(self, index: int, everyone: list[Worker]) -> None:
        self.index = index
        self.everyone = everyone
        self.random = random.Random(index)
        self.entries: list[DiskBackedNDArray] = []
        self.models: list[NDArray[np.float64]] = []
        self.errors: list[BaseException] = []
        self.ready = threading.Event()

    def create(self) -> None:
        for number in range(ENTRIES_PER_THREAD):
            model = np.arange(ELEMENTS, dtype=np.float64) + 1000 * (self.index * ENTRIES_PER_THREAD + number)
            self.models.append(model)
            self.entries.append(DiskBackedNDArray(model.copy()))
        self.ready.set()

    def step(self, round_number: int) -> None:
        slot = self.random.randrange(ENTRIES_PER_THREAD)
        entry, model = self.entries[slot], self.models[slot]
        position = self.random.randrange(ELEMENTS)
        choice = self.random.random()
        if choice < 0.3:
            entry.data[position] = round_number
            model[position] = round_number
        elif choice < 0.45:
            kept = entry.data  # a reference kept across a pause, while others spill
            time.sleep(0.003)
            kept[position] = -round_number
            model[position] = -round_number
        elif choice < 0.6:
            np.add(entry, 1.0, out=entry)  # type: ignore[call-overload]
            model += 1.0
        elif choice < 0.7:
            self.entries[slot] = copy.deepcopy(entry)
        elif choice < 0.8:
            self.entries[slot] = pickle.loads(pickle.dumps(entry))
        else:
            other = self.random.choice(self.everyone)
            if other.ready.is_set():
                np.asarray(other.entries[self.random.randrange(ENTRIES_PER_THREAD)]).sum()
        if self.entries[slot][position] != model[position]:
            raise AssertionError(f"thread {self.index} entry {slot}[{position}] lost an update")

    def run(self, start: threading.Barrier) -> None:
        try:
            start.wait()
            self.create()
            for worker in self.everyone:
                worker.ready.wait(JOIN_SECONDS)
            for round_number in range(ROUNDS):
                self.step(round_number)
        except BaseException as error:
            self.errors.append(error)
            self.ready.set()


def test_threads_using_entries_while_the_monitor_spills_neither_deadlock_nor_lose_updates() -> None:
    with injected_budget(LIMIT, monitor_interval=0.002) as ledger:
        workers: list[Worker] = []
        workers.extend(Worker(index, workers) for index in range(THREADS))
        start = threading.Barrier(THREADS)
        threads = [threading.Thread(target=worker.run, args=(start,), daemon=True) for worker in workers]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(JOIN_SECONDS)

        assert not any(thread.is_alive() for thread in threads), "deadlock: a thread never finished"
        assert [error for worker in workers for error in worker.errors] == []
        for worker in workers:
            for entry, model in zip(worker.entries, worker.models, strict=True):
                assert np.array_equal(np.asarray(entry), model)
        stats = ledger.stats()
        assert stats.spilled_count >= THREADS * ENTRIES_PER_THREAD // 2, stats
        assert stats.spill_failures == 0
