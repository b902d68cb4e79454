"""Parent side of the crash and power-cut campaigns: drive the fork server, interrupt, judge.

A campaign runs cycles. Each cycle forks a writer on the store directory, interrupts it at a
random instant (most often inside a write call: after a ``B`` event, a random fraction of that
operation's measured duration), optionally does something to the filesystem (a power cut,
unmount and remount), then forks a verifier that opens a fresh store on the directory. The
verifier's observations are judged against the acknowledgement log:

* every key reads as its last acknowledged generation or one that was being written when the
  writer was interrupted (anything older, or absent, is a *lost* value);
* every value is exactly the generation it claims to be, in layout and bytes, and NumPy's own
  reader agrees (anything else is a *torn* value);
* no temp remains after the open.

After each verification the observed generation becomes the known state of the key.
"""

from __future__ import annotations

import json
import os
import random
import select
import signal
import statistics
import subprocess
import sys
import time
from collections import defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from crash_values import CONVERSION_KEYS, STORE_KEYS, Layout, digest, parse_ack_records, payload_bytes

__all__ = ["Campaign", "CampaignCounts", "Zygote", "report_counts"]

ZYGOTE: Final = Path(__file__).parent / "child" / "crash_zygote.py"
_GENERATIONS_PER_RUN: Final = 1_000_000
_EVENT_TIMEOUT_SECONDS: Final = 60.0
# Share of interruptions aimed at a random instant rather than inside a write call, so start-up,
# the temp sweep and the acknowledgement bookkeeping get interrupted too.
_UNAIMED_SHARE: Final = 0.15
_UNAIMED_MAX_SECONDS: Final = 0.05
_DEFAULT_OP_SECONDS: Final = 0.01
_MAX_DETAILS: Final = 20


class Zygote:
    """The fork server child: one JSON command per line in, JSON events out."""

    def __init__(self, stderr_path: Path) -> None:
        self.stderr_path = stderr_path
        env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
        with stderr_path.open("wb") as stderr:
            self._process = subprocess.Popen(
                [sys.executable, "-X", "faulthandler", str(ZYGOTE)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=stderr,
                env=env,
            )
        self._pending = b""

    def send(self, command: dict[str, Any]) -> None:
        stdin = self._process.stdin
        assert stdin is not None
        stdin.write((json.dumps(command) + "\n").encode())
        stdin.flush()

    def event(self, timeout: float = _EVENT_TIMEOUT_SECONDS) -> dict[str, Any]:
        """The next event; ``RuntimeError`` (with the server's stderr) if none arrives in time."""
        stdout = self._process.stdout
        assert stdout is not None
        deadline = time.monotonic() + timeout
        while b"\n" not in self._pending:
            remaining = deadline - time.monotonic()
            ready, _, _ = select.select([stdout], [], [], max(0.0, remaining))
            chunk = os.read(stdout.fileno(), 65536) if ready else b""
            if not chunk:
                raise RuntimeError(f"the fork server stopped talking; its stderr:\n{self.stderr()}")
            self._pending += chunk
        line, _, self._pending = self._pending.partition(b"\n")
        event: dict[str, Any] = json.loads(line)
        return event

    def wait_for(self, kind: str, on_other: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
        while True:
            event = self.event()
            if event["t"] == kind:
                return event
            on_other(event)

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")[-4000:]

    def close(self) -> None:
        if self._process.poll() is None:
            try:
                self.send({"cmd": "exit"})
                self._process.wait(timeout=30)
            except (OSError, subprocess.TimeoutExpired):
                self._process.kill()
                self._process.wait()
        for pipe in (self._process.stdin, self._process.stdout):
            if pipe is not None:
                pipe.close()


@dataclass
class CampaignCounts:
    """What a campaign did and found. Every finding beyond the first few is only counted."""

    interruptions: int = 0
    inside_write: int = 0
    acknowledged_writes: int = 0
    keys_checked: int = 0
    torn: int = 0
    lost: int = 0
    temps_left: int = 0
    numpy_disagreements: int = 0
    stale_sidecars_seen: int = 0
    in_flight_values_seen: int = 0
    partial_ack_lines: int = 0
    writer_errors: int = 0
    verifier_crashes: int = 0
    acknowledged_by_op: dict[str, int] = field(default_factory=dict)
    details: list[str] = field(default_factory=list)

    def problem(self, text: str) -> None:
        if len(self.details) < _MAX_DETAILS:
            self.details.append(text)

    def summary(self) -> dict[str, Any]:
        return {name: value for name, value in self.__dict__.items() if name != "details"}


def report_counts(name: str, counts: dict[str, Any]) -> None:
    """Append a campaign's counts to ``$LDC_RELIABILITY_REPORT`` (JSON lines) when it is set."""
    target = os.environ.get("LDC_RELIABILITY_REPORT")
    if target:
        with open(target, "a", encoding="utf-8") as handle:
            handle.write(json.dumps({"campaign": name, **counts}) + "\n")


class _KeyModel:
    """What each key may read as, from the acknowledgement log and the last verification."""

    def __init__(self) -> None:
        self.layouts: dict[tuple[str, int], Layout] = {}
        self.possible: dict[str, set[int | None]] = {key: {None} for key in (*STORE_KEYS, *CONVERSION_KEYS)}
        self.in_flight: dict[str, set[int | None]] = defaultdict(set)

    def apply(self, record: dict[str, Any]) -> None:
        """Fold one log record in; a ``None`` generation is a purge (the key becomes absent)."""
        for item in record["items"]:
            key = item["key"]
            generation = None if item["gen"] is None else int(item["gen"])
            if record["t"] == "begin":
                if generation is not None:
                    self.layouts[key, generation] = Layout.from_json(item)
                self.in_flight[key].add(generation)
            else:
                self.possible[key] = {generation}
                self.in_flight[key].clear()

    def allowed(self, key: str) -> set[int | None]:
        return self.possible[key] | self.in_flight[key]

    def settle(self, key: str, generation: int | None) -> None:
        self.possible[key] = {generation}
        self.in_flight[key].clear()


class Campaign:
    """Repeated write-interrupt-verify cycles on one directory (see the module docstring)."""

    def __init__(
        self,
        zygote: Zygote,
        directory: Path,
        ack_path: Path,
        seed: int,
        aim_at_call: tuple[int, int] = (1, 3),
    ) -> None:
        """``aim_at_call``: the aimed interruption hits the n-th write call of a run, n drawn in this range."""
        self.zygote = zygote
        self.aim_at_call = aim_at_call
        self.directory = directory
        self.ack_path = ack_path
        self.rng = random.Random(seed)
        self.counts = CampaignCounts()
        self.model = _KeyModel()
        self._durations: dict[str, deque[float]] = defaultdict(lambda: deque(maxlen=25))
        self._ack_offset = 0
        self._run = 0

    def cycle(self, interrupt: Callable[[int], None], after_interrupt: Callable[[], None] | None = None) -> None:
        """One cycle: fork a writer, interrupt it with ``interrupt(pid)``, then verify."""
        self._run += 1
        self.zygote.send(
            {
                "cmd": "write",
                "dir": str(self.directory),
                "ack": str(self.ack_path),
                "run": self._run,
                "seed": self.rng.getrandbits(32),
                "first_generation": self._run * _GENERATIONS_PER_RUN,
            }
        )
        pid = int(self.zygote.wait_for("forked", self._on_writer_event)["pid"])
        self._wait_for_the_moment()
        interrupt(pid)
        self.zygote.send({"cmd": "reap", "pid": pid})
        status = int(self.zygote.wait_for("reaped", self._on_writer_event)["status"])
        self.counts.interruptions += 1
        if status != -signal.SIGKILL:
            self.counts.problem(f"run {self._run}: the writer ended with status {status}, not SIGKILL")
        self._absorb_acks()
        if after_interrupt is not None:
            after_interrupt()
        self._verify()

    def _wait_for_the_moment(self) -> None:
        if self.rng.random() < _UNAIMED_SHARE:
            time.sleep(self.rng.uniform(0.0, _UNAIMED_MAX_SECONDS))
            return
        target = self.rng.randint(*self.aim_at_call)
        begun = 0
        while True:
            event = self.zygote.event()
            self._on_writer_event(event)
            if event["t"] == "B":
                begun += 1
                if begun == target:
                    time.sleep(self.rng.random() * self._expected_seconds(event["op"]))
                    return
            elif event["t"] == "writer-error":
                return

    def _expected_seconds(self, op: str) -> float:
        seen = self._durations[op]
        return statistics.median(seen) if seen else _DEFAULT_OP_SECONDS

    def _on_writer_event(self, event: dict[str, Any]) -> None:
        if event["t"] == "E":
            self._durations[event["op"]].append(float(event["s"]))
        elif event["t"] == "writer-error":
            self.counts.writer_errors += 1
            self.counts.problem(f"run {self._run}: the writer raised:\n{event['traceback']}")

    def _absorb_acks(self) -> None:
        with self.ack_path.open("rb") as handle:
            handle.seek(self._ack_offset)
            fresh = handle.read()
        complete = fresh[: fresh.rfind(b"\n") + 1]
        self._ack_offset += len(complete)
        records, partial = parse_ack_records(complete)
        self.counts.partial_ack_lines += partial
        run_records = [record for record in records if record["run"] == self._run]
        for record in run_records:
            self.model.apply(record)
            if record["t"] == "ack":
                self.counts.acknowledged_writes += 1
                by_op = self.counts.acknowledged_by_op
                by_op[record["op"]] = by_op.get(record["op"], 0) + 1
        if run_records and run_records[-1]["t"] == "begin":
            self.counts.inside_write += 1

    def _verify(self) -> None:
        self.zygote.send({"cmd": "verify", "dir": str(self.directory)})
        verified: dict[str, Any] | None = None
        while True:
            event = self.zygote.event()
            if event["t"] == "verified":
                verified = event
            elif event["t"] == "verifier-error":
                self.counts.problem(f"run {self._run}: the verifier raised:\n{event['traceback']}")
            elif event["t"] == "verify-exit":
                if event["status"] != 0:
                    self.counts.verifier_crashes += 1
                    self.counts.problem(f"run {self._run}: the verifier ended with status {event['status']}")
                break
        if verified is None:
            return
        if verified["temps"]:
            self.counts.temps_left += len(verified["temps"])
            self.counts.problem(f"run {self._run}: temps left after the open: {verified['temps']}")
        for key, observed in verified["keys"].items():
            self._judge(key, observed)

    def _judge(self, key: str, observed: dict[str, Any]) -> None:
        self.counts.keys_checked += 1
        allowed = self.model.allowed(key)
        if observed["state"] == "error":
            self.counts.torn += 1
            self.counts.problem(f"run {self._run}: {key!r} failed to load: {observed['error']}")
            return
        generation = None if observed["state"] == "absent" else observed["stamp"]
        if generation is not None and not self._is_exactly(key, generation, observed):
            self.counts.torn += 1
            self.counts.problem(f"run {self._run}: {key!r} is not any generation's complete value: {observed}")
            return
        if generation not in allowed:
            self.counts.lost += 1
            self.counts.problem(f"run {self._run}: {key!r} reads as {generation}; allowed {sorted(allowed, key=str)}")
        elif generation not in self.model.possible[key]:
            self.counts.in_flight_values_seen += 1
        if observed.get("numpy_agrees") is False:
            self.counts.numpy_disagreements += 1
            self.counts.problem(f"run {self._run}: np.load disagrees on {key!r}: {observed}")
        if observed.get("stale_sidecar"):
            self.counts.stale_sidecars_seen += 1
        self.model.settle(key, generation)

    def _is_exactly(self, key: str, generation: int, observed: dict[str, Any]) -> bool:
        layout = self.model.layouts.get((key, generation))
        if layout is None:
            return False
        if "descr" in observed and (observed["descr"], tuple(observed["shape"])) != (layout.descr, layout.shape):
            return False
        if observed["nbytes"] != layout.nbytes:
            return False
        return bool(observed["digest"] == digest(payload_bytes(key, generation, layout.nbytes)))
