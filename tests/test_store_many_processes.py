"""Many processes, one store: random writes, purges and refreshes of shared keys under random SIGKILLs.

Each writer (``child/store_many_writers.py``) logs ``begin`` before and ``ack`` after every write or
purge. After the campaign a fresh store opens the directory and every key is judged: its pair is
one writer's complete value (never torn, never a mix of two writers unless the writer that renamed
the ``.npy`` was killed before its sidecar rename), that value could be the last one committed given
the acknowledgements, and no temp survives the open.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from lazy_disk_cache import DiskBackedNDArray, DiskBackedStore, LazyDiskCacheConfig
from lazy_disk_cache.paths import LOCK_FILE_NAME, is_our_temp_name

CHILD_DIR = Path(__file__).parent / "child"
sys.path.insert(0, str(CHILD_DIR))
from store_many_writers import KEYS, make_value, stamp_of  # noqa: E402

WRITERS = 3
CAMPAIGN_SECONDS = 8.0
KILL_INTERVAL = (0.2, 0.8)
# A writer is killed only once it had time to start working (imports take most of a second).
MIN_AGE_SECONDS = 1.0


@dataclass
class Event:
    op: str
    key: str
    writer: int
    generation: int | None
    begin: float
    ack: float | None = None


def _start(directory: Path, writer: int, log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, str(CHILD_DIR / "store_many_writers.py"), str(directory), str(writer), str(writer), str(log)],
        env={**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"},
    )


def _events(log: Path) -> tuple[list[Event], list[str], int]:
    events: dict[tuple[Any, ...], Event] = {}
    errors: list[str] = []
    starts = 0
    for line in log.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if record["t"] == "error":
            errors.append(record["text"])
        elif record["t"] == "started":
            starts += 1
        else:
            begin = (record["op"], record["key"], record["w"], record.get("g"))
            if record["t"] == "begin":
                events[(*begin, len(events))] = Event(*begin, begin=record["time"])
            else:
                pending = [event for marker, event in events.items() if marker[:4] == begin and event.ack is None]
                pending[-1].ack = record["time"]
    return list(events.values()), errors, starts


def _allowed(events: list[Event], key: str) -> list[Event]:
    """Events of ``key`` that may be the last committed: none acknowledged began after they were."""
    mine = [event for event in events if event.key == key]
    return [
        event
        for event in mine
        if not any(other.ack is not None and event.ack is not None and other.begin > event.ack for other in mine)
    ]


def _judge(directory: Path, key: str, events: list[Event]) -> str | None:
    """``None`` when ``key`` reads as an allowed, complete value; else what is wrong."""
    allowed = _allowed(events, key)
    npy, meta = directory / f"{key}.npy", directory / f"{key}.meta.json"
    ever_written = any(event.key == key for event in events)
    if not (npy.exists() and meta.exists()):
        absent_allowed = not ever_written or any(event.op == "purge" or event.ack is None for event in allowed)
        return None if absent_allowed else f"{key!r} is absent; allowed {allowed}"
    array = np.load(npy)
    writer, generation = stamp_of(array)
    expected = make_value(writer, generation)
    if (array.dtype, array.shape, array.tobytes()) != (expected.dtype, expected.shape, expected.tobytes()):
        return f"{key!r} is torn: stamp ({writer}, {generation}) but other bytes or layout"
    match = [
        event for event in allowed if event.op == "write" and (event.writer, event.generation) == (writer, generation)
    ]
    if not match:
        return f"{key!r} holds ({writer}, {generation}), which is not an allowed last value"
    sidecar = json.loads(meta.read_text())
    if (sidecar["shape"], sidecar["dtype"]) != (list(array.shape), array.dtype.str) and match[0].ack is not None:
        return f"{key!r}: acknowledged ({writer}, {generation}) sits with another write's sidecar {sidecar}"
    return None


@pytest.mark.timeout(120)
def test_acknowledged_commits_survive_many_writers_and_random_sigkills(tmp_path: Path) -> None:
    directory = tmp_path / "store"
    directory.mkdir()
    log = tmp_path / "log.jsonl"
    rng = random.Random(20260815)
    writers = {index: _start(directory, index, log) for index in range(1, WRITERS + 1)}
    born = dict.fromkeys(writers, time.monotonic())
    next_writer = WRITERS + 1
    kills = 0
    deadline = time.monotonic() + CAMPAIGN_SECONDS
    try:
        while time.monotonic() < deadline:
            time.sleep(rng.uniform(*KILL_INTERVAL))
            grown = [index for index in writers if time.monotonic() - born[index] >= MIN_AGE_SECONDS]
            if not grown:
                continue
            victim = rng.choice(grown)
            writers[victim].send_signal(signal.SIGKILL)
            writers[victim].wait(timeout=30)
            kills += 1
            del writers[victim]
            writers[next_writer] = _start(directory, next_writer, log)
            born[next_writer] = time.monotonic()
            next_writer += 1
    finally:
        for process in writers.values():
            process.send_signal(signal.SIGKILL)
            process.wait(timeout=30)

    events, errors, starts = _events(log)
    store = DiskBackedStore(
        config=LazyDiskCacheConfig(enable_caching=True, cache_path=directory), factory=DiskBackedNDArray
    )
    temps = [name for name in os.listdir(directory) if is_our_temp_name(name)]
    problems = [problem for key in KEYS if (problem := _judge(directory, key, events)) is not None]
    acknowledged = sum(1 for event in events if event.ack is not None and event.op == "write")

    assert errors == [], errors[:3]
    assert temps == []
    assert problems == []
    assert kills >= 5 and starts > WRITERS, f"{kills} kills, {starts} writers started"
    assert acknowledged >= 50, f"the campaign acknowledged only {acknowledged} writes"
    assert sorted(store.keys()) == sorted(key for key in KEYS if (directory / f"{key}.npy").exists()), (
        "the reopened store lists exactly the stored keys"
    )
    assert LOCK_FILE_NAME not in store.keys()
