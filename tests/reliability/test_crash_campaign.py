"""SIGKILL at random instants, mostly inside write calls: nothing torn, nothing lost, no temp left.

A writer child commits generation-stamped values (small and large arrays, several keys, single and
grouped ``offload(pickle_container=True)``, reload-and-rewrite commits and ``.dat`` conversions
with a fixed ``cache_path``) and acknowledges each call in a log outside the store after it
returns. The test kills it with SIGKILL, then a fresh store opens the directory and every key must
read as its last acknowledged value or the one being written. ``LDC_CRASH_ITERATIONS`` sets the
number of kills (default 100; ``scripts/stress.sh`` runs 500), ``LDC_RELIABILITY_SEED`` replays a
campaign.
"""

import os
import random
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from crash_harness import Campaign, Zygote, report_counts

KILLS = int(os.environ.get("LDC_CRASH_ITERATIONS", "100"))


@pytest.fixture
def zygote(tmp_path: Path) -> Iterator[Zygote]:
    server = Zygote(tmp_path / "zygote.stderr")
    yield server
    server.close()


def _seed() -> int:
    return int(os.environ.get("LDC_RELIABILITY_SEED", random.SystemRandom().getrandbits(32)))


def _sigkill(pid: int) -> None:
    os.kill(pid, signal.SIGKILL)


@pytest.mark.slow
@pytest.mark.timeout(max(300, KILLS * 3))
def test_sigkill_at_random_instants_never_tears_or_loses_an_acknowledged_value(tmp_path: Path, zygote: Zygote) -> None:
    seed = _seed()
    campaign = Campaign(zygote, tmp_path / "store", tmp_path / "acks.jsonl", seed)

    for _ in range(KILLS):
        campaign.cycle(_sigkill)

    counts = campaign.counts
    report_counts("sigkill", counts.summary())
    context = f"seed {seed}, counts {counts.summary()}:\n" + "\n".join(counts.details)
    assert counts.details == [], context
    assert (counts.torn, counts.lost, counts.temps_left) == (0, 0, 0), context
    assert counts.interruptions == KILLS, context
    assert counts.inside_write * 2 >= KILLS, context
    assert counts.acknowledged_writes * 4 >= KILLS, context
