"""A full disk while spilling: the entry stays in RAM with its data, the budget warns once, nothing is left.

In this process the native fault seam fails the spill file's space reservation with ENOSPC; in a
child process ``RLIMIT_FSIZE`` makes every real write fail (EFBIG), for entries without caching
(spill files) and for entries reopened from a store with written pages (their ``.dat``).
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from budget_fakes import FakeClock, InjectedLimit, injected_budget
from lazy_disk_cache import DiskBackedNDArray, _rust
from lazy_disk_cache._budget import BACKOFF_FIRST_SECONDS, MemoryBudgetWarning
from lazy_disk_cache._spill_dir import current_spill_dir

CHILD = Path(__file__).parent / "child" / "budget_full_disk.py"
ELEMENTS = 4096
ENTRY_BYTES = ELEMENTS * 8


pytestmark = pytest.mark.usefixtures("clean_faults")


def test_a_spill_into_a_full_disk_keeps_the_entry_in_ram_and_warns_once() -> None:
    limit, clock = InjectedLimit(100 * ENTRY_BYTES), FakeClock()
    with injected_budget(limit, clock=clock) as ledger:
        entries = [DiskBackedNDArray(np.full(ELEMENTS, index, dtype=np.float64)) for index in range(4)]
        limit.limit = 5 * ENTRY_BYTES  # 4 of 5 entries' worth: over the 70 % threshold, down to 3
        ledger.configure(ledger.settings)
        _rust._inject_fault("reserve", 1, errno.ENOSPC)
        _rust._inject_fault("reserve", 2, errno.ENOSPC)

        with pytest.warns(MemoryBudgetWarning, match="No space left on device") as caught:
            ledger.check()

        assert len(caught) == 1, "the second failure with the same errno is logged, not warned"
        assert [entry.spilled for entry in entries] == [False, False, True, False]
        assert ledger.stats().spill_failures == 2
        for index, entry in enumerate(entries):
            assert np.array_equal(entry.data, np.full(ELEMENTS, index))
        spill_dir = current_spill_dir()
        assert spill_dir is not None
        assert [name for name in os.listdir(spill_dir) if name.endswith(".tmp")] == []

        clock.advance(BACKOFF_FIRST_SECONDS * 1.1)
        limit.limit = 4 * ENTRY_BYTES  # the 3 left in RAM are over again: one more must go
        ledger.configure(ledger.settings)
        ledger.check()

        # Retried after its backoff: the logged failure (kept by pytest's log capture) holds no buffer.
        assert [entry.spilled for entry in entries] == [True, False, True, False]
        assert np.array_equal(np.asarray(entries[0]), np.zeros(ELEMENTS))


def test_every_spill_under_rlimit_fsize_fails_cleanly_and_succeeds_once_lifted(tmp_path: Path) -> None:
    child = subprocess.run(
        [sys.executable, "-X", "faulthandler", str(CHILD), str(tmp_path / "stores")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "TMPDIR": str(tmp_path)},
    )

    assert child.returncode == 0, child.stderr
    report: dict[str, dict[str, Any]] = json.loads(child.stdout)
    for kind, outcome in report.items():
        assert len(outcome["warnings"]) == 1, (kind, outcome)
        assert "File too large" in outcome["warnings"][0]
        assert outcome["spill_failures"] == 16, "8 entries, tried again after the backoff"
        assert outcome["spilled_while_full"] == 0
        assert outcome["all_in_memory"] and outcome["data_intact"], (kind, outcome)
        assert outcome["managed_bytes"] == 8 * 2**20
        assert outcome["left_in_spill_dir"] == [] and outcome["dat_files"] == [], (kind, outcome)
        assert outcome["spilled_after"] == 2 and outcome["data_after"], (kind, outcome)
    assert [path.name for path in tmp_path.iterdir() if path.name.startswith("lazy_disk_cache-spill-")] == [], (
        "the child removed its spill directory at exit"
    )
