"""Turning the memory budget on, off and to a size: memory_budget(), the environment, memory_stats()."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import pytest

import lazy_disk_cache
from budget_fakes import FakeClock, FakeEntry, make_ledger
from lazy_disk_cache._budget import (
    ENV_VAR,
    LIMIT_MAX_AGE_SECONDS,
    BudgetSettings,
    MemoryBudgetWarning,
    ledger,
    parse_budget_limit,
)


@pytest.fixture
def restore_budget() -> Iterator[None]:
    """Put the process's budget settings back after a test changes them."""
    previous = ledger.settings
    yield
    ledger.configure(previous)


@pytest.mark.parametrize(
    ("limit", "expected"),
    [
        ("auto", BudgetSettings()),
        (" Auto ", BudgetSettings()),
        ("80%", BudgetSettings(fraction=0.8)),
        ("12.5 %", BudgetSettings(fraction=0.125)),
        ("100%", BudgetSettings(fraction=1.0)),
        (4096, BudgetSettings(cap_bytes=4096)),
        ("4096", BudgetSettings(cap_bytes=4096)),
        (None, BudgetSettings(enabled=False)),
        ("off", BudgetSettings(enabled=False)),
        ("OFF", BudgetSettings(enabled=False)),
    ],
)
def test_limit_requests_parse_to_settings(limit: object, expected: BudgetSettings) -> None:
    assert parse_budget_limit(limit) == expected


@pytest.mark.parametrize(
    ("limit", "error", "message"),
    [
        ("0%", ValueError, r"\(0, 100\]"),
        ("101%", ValueError, r"\(0, 100\]"),
        ("nan%", ValueError, r"\(0, 100\]"),
        ("lots%", ValueError, "percentage"),
        ("4 GiB", ValueError, "number of bytes"),
        ("-5", ValueError, "number of bytes"),
        (0, ValueError, "positive"),
        (-1, ValueError, "positive"),
        (True, TypeError, "bool"),
        (1.5, TypeError, "float"),
        (b"off", TypeError, "bytes"),
    ],
)
def test_bad_limit_requests_raise_with_what_is_accepted(limit: object, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        parse_budget_limit(limit)


@pytest.mark.parametrize(
    ("target", "spill", "error"),
    [
        (0.7, 0.7, ValueError),
        (0.8, 0.7, ValueError),
        (0.6, 1.1, ValueError),
        (0.0, 0.7, ValueError),
        (-0.1, 0.7, ValueError),
        ("0.6", 0.7, TypeError),
        (0.6, None, TypeError),
        (False, 0.7, TypeError),
    ],
)
def test_bad_thresholds_raise_and_keep_the_settings_in_force(
    restore_budget: None, target: object, spill: object, error: type[Exception]
) -> None:
    before = ledger.settings

    with pytest.raises(error):
        lazy_disk_cache.memory_budget("auto", target, spill)  # type: ignore[arg-type]

    assert ledger.settings == before


def test_memory_budget_none_turns_the_budget_off(restore_budget: None) -> None:
    lazy_disk_cache.memory_budget(None)

    assert lazy_disk_cache.memory_stats().enabled is False


def test_memory_budget_without_arguments_turns_it_on_with_the_defaults(restore_budget: None) -> None:
    lazy_disk_cache.memory_budget(None)

    lazy_disk_cache.memory_budget()

    stats = lazy_disk_cache.memory_stats()
    assert stats.enabled is True
    assert stats.spill_threshold == int(stats.limit * 0.7)
    assert stats.target_threshold == int(stats.limit * 0.6)


def test_memory_budget_accepts_thresholds_within_bounds(restore_budget: None) -> None:
    lazy_disk_cache.memory_budget("50%", target=0.25, spill=1)

    assert ledger.settings == BudgetSettings(fraction=0.5, target=0.25, spill=1.0)


def test_memory_stats_is_a_frozen_snapshot(restore_budget: None) -> None:
    stats = lazy_disk_cache.memory_stats()

    with pytest.raises(dataclasses.FrozenInstanceError):
        stats.limit = 1  # type: ignore[misc]
    assert stats.limit > 0
    assert stats.unmanaged_bytes > 0, "this interpreter holds anonymous memory of its own"


def test_a_percentage_scales_the_detected_limit() -> None:
    budget, _ = make_ledger(limit=1000, environ={ENV_VAR: "50%"})

    stats = budget.stats()

    assert (stats.limit, stats.spill_threshold, stats.target_threshold) == (500, 350, 300)
    assert stats.limit_source == "50% of test limit"


def test_a_byte_limit_caps_the_detected_limit_but_never_raises_it() -> None:
    below, _ = make_ledger(limit=1000, environ={ENV_VAR: "800"})
    above, _ = make_ledger(limit=1000, environ={ENV_VAR: "5000"})

    assert below.stats().limit == 800
    assert above.stats().limit == 1000


def test_the_environment_turns_the_budget_off() -> None:
    budget, memory = make_ledger(environ={ENV_VAR: "off"})
    entries = [FakeEntry(budget, memory, f"e{index}", 100) for index in range(9)]

    budget.check()

    assert budget.stats().enabled is False
    assert all(entry.in_ram for entry in entries)


def test_a_bad_environment_value_warns_and_keeps_the_default() -> None:
    budget, _ = make_ledger(environ={ENV_VAR: "lots"})

    with pytest.warns(MemoryBudgetWarning, match=ENV_VAR):
        settings = budget.settings

    assert settings == BudgetSettings()


def test_memory_budget_overrides_the_environment_which_is_then_never_read() -> None:
    environ = {ENV_VAR: "not a limit"}
    budget, _ = make_ledger(environ=environ)

    budget.configure(parse_budget_limit("40%"))

    assert budget.settings == BudgetSettings(fraction=0.4)  # no warning about the bad value


def test_the_limit_is_read_again_at_most_once_a_second() -> None:
    clock = FakeClock()
    budget, memory = make_ledger(limit=1000, clock=clock)
    budget.stats()
    reads = memory.limit_reads
    memory.limit = 2000

    unchanged_clock = budget.stats().limit
    clock.advance(LIMIT_MAX_AGE_SECONDS)
    one_second = budget.stats().limit

    assert (unchanged_clock, one_second) == (1000, 2000)
    assert memory.limit_reads == reads + 1
