"""The memory budget's policy over fake memory: what is spilled, in which order, and when not.

Limits are 1000 bytes, so the default thresholds spill above 700 bytes and stop at 600.
"""

from __future__ import annotations

import errno
import gc
import logging
import os
import threading
import time
import warnings
import weakref
from collections.abc import Callable, Iterator

import pytest

from budget_fakes import FakeClock, FakeEntry, FakeMemory, disk_full, make_ledger
from lazy_disk_cache._budget import BACKOFF_FIRST_SECONDS, MemoryBudgetWarning, MemoryLedger

LedgerFactory = Callable[..., tuple[MemoryLedger, FakeMemory]]

WAIT_SECONDS = 10.0


@pytest.fixture
def new_ledger() -> Iterator[LedgerFactory]:
    """Builds ledgers over fake memory and closes them (stopping their monitors) after the test."""
    made: list[MemoryLedger] = []

    def factory(*args: object, **kwargs: object) -> tuple[MemoryLedger, FakeMemory]:
        ledger, memory = make_ledger(*args, **kwargs)  # type: ignore[arg-type]
        made.append(ledger)
        return ledger, memory

    yield factory
    for ledger in made:
        ledger.close()


def _entries(ledger: MemoryLedger, memory: FakeMemory, sizes: list[int]) -> list[FakeEntry]:
    return [FakeEntry(ledger, memory, f"e{index}", size) for index, size in enumerate(sizes)]


def _spilled(entries: list[FakeEntry]) -> list[str]:
    return [entry.name for entry in entries if not entry.in_ram]


def _monitor_threads() -> set[threading.Thread]:
    return {thread for thread in threading.enumerate() if thread.name == "lazy_disk_cache-memory-monitor"}


def _wait_until(condition: Callable[[], bool]) -> bool:
    deadline = time.monotonic() + WAIT_SECONDS
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return condition()


def test_nothing_is_spilled_at_or_below_the_spill_threshold(new_ledger: LedgerFactory) -> None:
    ledger, memory = new_ledger()
    entries = _entries(ledger, memory, [100] * 7)

    ledger.check()

    assert _spilled(entries) == []
    assert ledger.stats().spilled_count == 0


def test_least_recently_tracked_entries_are_spilled_first(new_ledger: LedgerFactory) -> None:
    ledger, memory = new_ledger()
    entries = _entries(ledger, memory, [100] * 8)

    ledger.check()

    assert _spilled(entries) == ["e0", "e1"], "800 bytes: spill the two oldest to reach 600"


def test_touch_makes_an_entry_most_recently_used(new_ledger: LedgerFactory) -> None:
    ledger, memory = new_ledger()
    entries = _entries(ledger, memory, [100] * 8)
    ledger.touch(entries[0])
    ledger.touch(entries[2])

    ledger.check()

    assert _spilled(entries) == ["e1", "e3"]


def test_the_record_track_returns_marks_the_entry_used_when_touched(new_ledger: LedgerFactory) -> None:
    ledger, memory = new_ledger()
    first = FakeEntry(ledger, memory, "e0", 100)
    record = ledger.track(first, 100)
    entries = [first, *(FakeEntry(ledger, memory, f"e{index}", 100) for index in range(1, 8))]

    record.touch()
    ledger.check()

    assert _spilled(entries) == ["e1", "e2"]


def test_touching_a_record_after_untrack_changes_nothing(new_ledger: LedgerFactory) -> None:
    ledger, memory = new_ledger()
    entry = FakeEntry(ledger, memory, "gone", 100)
    record = ledger.track(entry, 100)
    ledger.untrack(entry)

    record.touch()
    fresh = ledger.track(entry, 100)

    assert fresh is not record
    stats = ledger.stats()
    assert (stats.tracked_entries, stats.managed_bytes) == (1, 100)


def test_spilling_stops_at_the_target_not_at_the_spill_threshold(new_ledger: LedgerFactory) -> None:
    ledger, memory = new_ledger()
    entries = _entries(ledger, memory, [50] * 16)  # 800 bytes

    ledger.check()

    assert len(_spilled(entries)) == 4
    assert memory.rss_anon() == 600


def test_unmanaged_memory_counts_towards_the_total(new_ledger: LedgerFactory) -> None:
    ledger, memory = new_ledger()
    memory.unmanaged = 500
    entries = _entries(ledger, memory, [100] * 3)  # total 800

    ledger.check()

    assert _spilled(entries) == ["e0", "e1"]
    stats = ledger.stats()
    assert (stats.managed_bytes, stats.unmanaged_bytes) == (100, 500)


def test_pinned_entries_are_never_spilled(new_ledger: LedgerFactory) -> None:
    ledger, memory = new_ledger()
    entries = _entries(ledger, memory, [100] * 8)

    with ledger.pinned(entries[0]), ledger.pinned(entries[1]):
        ledger.check()

    assert _spilled(entries) == ["e2", "e3"]


def test_pins_nest_and_the_entry_stays_pinned_until_the_last_unpin(new_ledger: LedgerFactory) -> None:
    ledger, memory = new_ledger()
    entry = FakeEntry(ledger, memory, "only", 10)

    with ledger.pinned(entry):
        with ledger.pinned(entry):
            pass
        still_pinned = ledger.is_pinned(entry)

    assert still_pinned
    assert not ledger.is_pinned(entry)


def test_a_kept_pin_guard_pins_on_each_use_without_keeping_the_entry_alive(new_ledger: LedgerFactory) -> None:
    ledger, memory = new_ledger()
    entry = FakeEntry(ledger, memory, "guarded", 10)
    guard = ledger.pinned(entry)
    alive = weakref.ref(entry)

    states = []
    for _ in range(2):
        with guard:
            states.append(ledger.is_pinned(entry))
        states.append(ledger.is_pinned(entry))
    del entry
    gc.collect()

    assert states == [True, False, True, False]
    assert alive() is None


def test_unpin_without_pin_raises_valueerror(new_ledger: LedgerFactory) -> None:
    ledger, memory = new_ledger()
    entry = FakeEntry(ledger, memory, "only", 10)

    with pytest.raises(ValueError, match="not pinned"):
        ledger.unpin(entry)


def test_an_entry_pinned_after_the_candidates_were_chosen_is_not_spilled(new_ledger: LedgerFactory) -> None:
    ledger, memory = new_ledger()
    entries = _entries(ledger, memory, [100] * 9)
    entries[0].on_spill = lambda entry: ledger.pin(entries[1])

    ledger.check()

    assert entries[1].in_ram
    assert _spilled(entries) == ["e0", "e2", "e3"]


def test_an_entry_whose_lock_is_held_by_another_thread_is_skipped_not_waited_for(
    new_ledger: LedgerFactory,
) -> None:
    ledger, memory = new_ledger()
    entries = _entries(ledger, memory, [100] * 8)
    holding, release = threading.Event(), threading.Event()

    def hold_e0() -> None:
        with entries[0].lock:
            holding.set()
            release.wait(WAIT_SECONDS)

    holder = threading.Thread(target=hold_e0)
    holder.start()
    holding.wait(WAIT_SECONDS)
    try:
        ledger.check()
    finally:
        release.set()
        holder.join()

    assert _spilled(entries) == ["e1", "e2"]


def test_a_failed_spill_keeps_the_entry_in_ram_and_warns_once(new_ledger: LedgerFactory) -> None:
    ledger, memory = new_ledger()
    entries = _entries(ledger, memory, [100] * 9)
    for entry in entries[:2]:
        entry.fault = disk_full(entry.name)

    with pytest.warns(MemoryBudgetWarning, match="No space left on device") as caught:
        ledger.check()

    assert len(caught) == 1, [str(w.message) for w in caught]
    assert entries[0].in_ram and entries[1].in_ram
    assert _spilled(entries) == ["e2", "e3", "e4"]
    stats = ledger.stats()
    assert stats.spill_failures == 2
    assert stats.managed_bytes == 600, "the failed entries are still tracked"


def test_a_failed_entry_is_left_alone_until_its_backoff_expires(new_ledger: LedgerFactory) -> None:
    clock = FakeClock()
    ledger, memory = new_ledger(clock=clock)
    failing = FakeEntry(ledger, memory, "full", 800)
    failing.fault = disk_full("full")
    with pytest.warns(MemoryBudgetWarning):
        ledger.check()

    ledger.check()
    calls_during_backoff = failing.spill_calls
    clock.advance(BACKOFF_FIRST_SECONDS + 0.01)
    failing.fault = None
    ledger.check()

    assert calls_during_backoff == 1
    assert failing.spill_calls == 2
    assert not failing.in_ram


def test_the_same_error_warns_once_per_process_and_another_error_warns_again(new_ledger: LedgerFactory) -> None:
    clock = FakeClock()
    ledger, memory = new_ledger(clock=clock)
    first = FakeEntry(ledger, memory, "first", 800)
    first.fault = disk_full("first")
    with pytest.warns(MemoryBudgetWarning):
        ledger.check()
    clock.advance(BACKOFF_FIRST_SECONDS + 0.01)
    first.fault = None
    ledger.check()  # succeeds
    second = FakeEntry(ledger, memory, "second", 800)
    second.fault = disk_full("second")
    ledger.check()  # no warning: filterwarnings=error would raise here
    third = FakeEntry(ledger, memory, "third", 800)
    third.fault = OSError(errno.EIO, "Input/output error", "/fake/third.dat")

    with pytest.warns(MemoryBudgetWarning, match="Input/output error") as caught:
        ledger.check()

    assert len(caught) == 1
    assert ledger.stats().spill_failures == 3


def test_an_unexpected_error_in_spill_is_logged_and_the_entry_kept(
    new_ledger: LedgerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    ledger, memory = new_ledger()
    entries = _entries(ledger, memory, [100] * 8)
    entries[0].fault = RuntimeError("bug in spill")

    with caplog.at_level(logging.ERROR, logger="lazy_disk_cache._budget"):
        ledger.check()

    assert entries[0].in_ram
    assert _spilled(entries) == ["e1", "e2"]
    assert any("bug in spill" in (record.exc_text or "") for record in caplog.records)


def test_the_ledger_does_not_keep_entries_alive(new_ledger: LedgerFactory) -> None:
    ledger, memory = new_ledger()
    entry = FakeEntry(ledger, memory, "gone", 300)
    alive = weakref.ref(entry)

    del entry
    gc.collect()

    assert alive() is None
    stats = ledger.stats()
    assert (stats.tracked_entries, stats.managed_bytes) == (0, 0)


def test_track_replaces_the_entry_s_previous_byte_count(new_ledger: LedgerFactory) -> None:
    ledger, memory = new_ledger()
    entry = FakeEntry(ledger, memory, "grows", 100)

    ledger.track(entry, 250)

    stats = ledger.stats()
    assert (stats.tracked_entries, stats.managed_bytes) == (1, 250)


def test_untrack_is_idempotent_and_track_zero_untracks(new_ledger: LedgerFactory) -> None:
    ledger, memory = new_ledger()
    first = FakeEntry(ledger, memory, "first", 100)
    second = FakeEntry(ledger, memory, "second", 100)

    ledger.untrack(first)
    ledger.untrack(first)
    ledger.track(second, 0)

    stats = ledger.stats()
    assert (stats.tracked_entries, stats.managed_bytes) == (0, 0)


@pytest.mark.parametrize(("nbytes", "error"), [(-1, ValueError), (1.5, TypeError), (True, TypeError)])
def test_track_rejects_sizes_that_are_not_non_negative_ints(
    new_ledger: LedgerFactory, nbytes: object, error: type[Exception]
) -> None:
    ledger, memory = new_ledger()
    entry = FakeEntry(ledger, memory, "bad", 1)

    with pytest.raises(error):
        ledger.track(entry, nbytes)  # type: ignore[arg-type]


def test_check_does_not_measure_while_the_estimate_stays_below_the_threshold(new_ledger: LedgerFactory) -> None:
    ledger, memory = new_ledger()
    FakeEntry(ledger, memory, "first", 100)
    ledger.check()
    reads_after_first = memory.anon_reads

    for _ in range(100):
        ledger.check()

    assert memory.anon_reads == reads_after_first


def test_check_measures_again_once_tracked_bytes_push_the_estimate_over(new_ledger: LedgerFactory) -> None:
    ledger, memory = new_ledger()
    entries = _entries(ledger, memory, [100] * 7)
    ledger.check()
    reads_before = memory.anon_reads

    entries.append(FakeEntry(ledger, memory, "e7", 100))
    ledger.check()

    assert memory.anon_reads > reads_before
    assert _spilled(entries) == ["e0", "e1"]


def test_a_spill_batch_logs_its_bytes_and_seconds_at_info(
    new_ledger: LedgerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    ledger, memory = new_ledger()
    entries = _entries(ledger, memory, [100] * 8)

    with caplog.at_level(logging.INFO, logger="lazy_disk_cache._budget"):
        ledger.check()

    assert len(_spilled(entries)) == 2
    batches = [r for r in caplog.records if r.levelno == logging.INFO and r.msg.startswith("Spilled")]
    assert len(batches) == 1
    args = batches[0].args
    assert isinstance(args, tuple)
    count, nbytes, seconds = args[:3]
    assert (count, nbytes) == (2, 200)
    assert isinstance(seconds, float)


def test_stats_count_spilled_entries_and_bytes(new_ledger: LedgerFactory) -> None:
    ledger, memory = new_ledger()
    entries = _entries(ledger, memory, [100] * 8)

    ledger.check()

    stats = ledger.stats()
    assert _spilled(entries) == ["e0", "e1"]
    assert (stats.spilled_count, stats.spilled_bytes, stats.managed_bytes) == (2, 200, 600)
    assert stats.last_spill_seconds is not None
    assert (stats.limit, stats.spill_threshold, stats.target_threshold) == (1000, 700, 600)


def test_a_check_from_inside_a_spill_does_not_spill_again(new_ledger: LedgerFactory) -> None:
    ledger, memory = new_ledger()
    entries = _entries(ledger, memory, [100] * 8)
    entries[0].on_spill = lambda entry: ledger.check()

    ledger.check()

    assert _spilled(entries) == ["e0", "e1"]


def test_check_is_a_no_op_when_the_budget_is_off(new_ledger: LedgerFactory) -> None:
    ledger, memory = new_ledger(environ={"LAZY_DISK_CACHE_MEMORY_BUDGET": "off"})
    entries = _entries(ledger, memory, [100] * 9)

    ledger.check()

    assert _spilled(entries) == []
    assert not ledger.monitor_running


def test_the_monitor_starts_with_the_first_tracked_entry_and_stops_when_none_is_left(
    new_ledger: LedgerFactory,
) -> None:
    ledger, memory = new_ledger(clock=time.monotonic, monitor_interval=0.01)
    idle_before = ledger.monitor_running

    entry = FakeEntry(ledger, memory, "only", 10)
    running_while_tracked = ledger.monitor_running
    ledger.untrack(entry)

    assert not idle_before
    assert running_while_tracked
    assert _wait_until(lambda: not ledger.monitor_running), "the monitor kept running with nothing tracked"


def test_the_monitor_lingers_through_a_short_gap_so_a_burst_of_reloads_reuses_it(
    new_ledger: LedgerFactory,
) -> None:
    ledger, memory = new_ledger(clock=time.monotonic, monitor_interval=0.01)
    first = FakeEntry(ledger, memory, "first", 10)
    monitors = _monitor_threads()
    ledger.untrack(first)
    time.sleep(0.05)  # five idle checks, fewer than MONITOR_IDLE_CHECKS

    still_running = ledger.monitor_running
    second = FakeEntry(ledger, memory, "second", 10)

    assert still_running
    assert _monitor_threads() == monitors, "a new monitor thread was started for the next entry"
    ledger.untrack(second)
    assert _wait_until(lambda: not ledger.monitor_running)


def test_the_monitor_spills_when_unmanaged_memory_grows(new_ledger: LedgerFactory) -> None:
    ledger, memory = new_ledger(clock=time.monotonic, monitor_interval=0.01)
    entries = _entries(ledger, memory, [100] * 3)
    ledger.check()

    memory.unmanaged = 500

    assert _wait_until(lambda: _spilled(entries) == ["e0", "e1"]), _spilled(entries)


def test_turning_the_budget_off_stops_the_monitor(new_ledger: LedgerFactory) -> None:
    ledger, memory = new_ledger(clock=time.monotonic, monitor_interval=0.01)
    FakeEntry(ledger, memory, "only", 10)
    settings = ledger.settings

    ledger.configure(type(settings)(enabled=False))

    assert _wait_until(lambda: not ledger.monitor_running)


def test_a_forked_child_starts_with_an_empty_ledger_and_no_monitor(new_ledger: LedgerFactory) -> None:
    ledger, memory = new_ledger(clock=time.monotonic, monitor_interval=0.01)
    entry = FakeEntry(ledger, memory, "parent", 100)
    read_end, write_end = os.pipe()

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # fork in a threaded process (3.12+)
        pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through the pipe
        try:
            stats = ledger.stats()
            report = f"{stats.tracked_entries} {stats.managed_bytes} {int(ledger.monitor_running)}"
            os.write(write_end, report.encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end) as pipe:
        report = pipe.read()
    _, status = os.waitpid(pid, 0)

    assert os.waitstatus_to_exitcode(status) == 0
    assert report == "0 0 0"
    assert ledger.stats().tracked_entries == 1, "the parent's ledger is untouched"
    del entry


def test_threads_tracking_touching_and_checking_while_the_monitor_spills_lose_nothing(
    new_ledger: LedgerFactory,
) -> None:
    ledger, memory = new_ledger(limit=100_000, clock=time.monotonic, monitor_interval=0.001)
    workers, rounds, size = 4, 300, 1000
    start = threading.Barrier(workers)
    created: list[list[FakeEntry]] = [[] for _ in range(workers)]

    def work(index: int) -> None:
        start.wait()
        mine = created[index]
        for round_number in range(rounds):
            entry = FakeEntry(ledger, memory, f"w{index}-{round_number}", size)
            mine.append(entry)
            with ledger.pinned(entry):
                ledger.touch(entry)
            ledger.check()
            if round_number % 7 == 0 and not mine[0].in_ram:
                mine[0].load()

    threads = [threading.Thread(target=work, args=(index,)) for index in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    stuck = [thread.name for thread in threads if thread.is_alive()]
    ledger.close()  # the monitor stops: the entries' states and the ledger can be read together
    ledger.check()

    assert not stuck, f"workers stuck (deadlock): {stuck}"
    everything = [entry for mine in created for entry in mine]
    in_ram = sum(entry.nbytes for entry in everything if entry.in_ram)
    stats = ledger.stats()
    assert stats.spilled_count > 0
    assert stats.managed_bytes == in_ram, "the ledger's bytes drifted from the entries' state"
    assert stats.tracked_entries == sum(entry.in_ram for entry in everything)
    assert in_ram <= 70_000, f"{in_ram} bytes left in RAM over a 70 000-byte spill threshold"


def test_has_room_for_answers_whether_more_ram_stays_under_the_spill_threshold(new_ledger: LedgerFactory) -> None:
    ledger, memory = new_ledger(1000)  # spills above 700 bytes
    entries = _entries(ledger, memory, [300])
    memory.unmanaged = 200

    assert ledger.has_room_for(200)
    assert not ledger.has_room_for(201)
    assert _spilled(entries) == [], "asking spills nothing"
    settings = ledger.settings
    ledger.configure(type(settings)(enabled=False))
    assert ledger.has_room_for(10**12), "with the budget off there is always room"
