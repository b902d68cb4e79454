"""EIO at every step of a commit, a conversion and a materialisation, through the native fault seam.

For each operation of the core (create, reserve, write, copy, fsync, dir fsync, rename,
map) and each N up to the number of such calls a clean run makes, the N-th call fails with EIO.
Every failure must surface as that ``OSError`` with the file name; the file whose write or fsync
failed is never renamed into place; no fsync is retried after a failure; no temp stays behind;
each key reads as its old or its new value (in the order a group commit promises), never torn;
and the same call succeeds when retried. The syscall-level twin, through ``strace`` fault
injection, is ``test_syscall_faults.py``.
"""

import errno
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from crash_harness import report_counts
from fault_values import Age, age_of, new_value, old_value

from lazy_disk_cache import _rust
from lazy_disk_cache.disk_backed_ndarray import DiskBackedNDArray
from lazy_disk_cache.disk_backed_store import DiskBackedStore
from lazy_disk_cache.lazy_disk_cache import LazyDiskCacheConfig

Store = DiskBackedStore[DiskBackedNDArray]

# The core operations each write path performs (a path that stops making one fails the test).
# Unlink is not among them: a temp name is only unlinked when a stale temp is in the way, which
# tests/test_native_faults.py covers on its own.
_TEMP_OPS = ("create", "reserve", "write", "fsync", "rename", "dir_fsync")
PATH_OPS = {
    "group-commit-from-buffers": _TEMP_OPS,
    "group-commit-from-dat-files": (*_TEMP_OPS, "copy"),
    "conversion": (*_TEMP_OPS, "map"),
    # A reloaded entry's .dat is a working file (the committed pair is the value): no fsyncs.
    "materialisation": ("create", "reserve", "write", "rename", "map"),
}
KEYS = ("a", "b", "c")

POINTS: dict[str, int] = {}


def _make_store(directory: Path) -> Store:
    config = LazyDiskCacheConfig(cache_path=directory, enable_caching=True, purge_disk_on_gc=False)
    return DiskBackedStore[DiskBackedNDArray](config=config, factory=DiskBackedNDArray)


def _read_pair(directory: Path, key: str) -> str:
    """``old``/``new`` through a fresh store and through ``np.load`` (which must agree), else why not."""
    try:
        ours = np.asarray(_make_store(directory)[key]).tobytes()
        theirs = np.load(directory / f"{key}.npy", allow_pickle=False).tobytes()
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return age_of(key, ours) if ours == theirs else "np.load disagrees with the store"


def _read_dat(path: Path, key: str) -> str:
    return age_of(key, path.read_bytes()) if path.exists() else "absent"


@dataclass
class Scenario(ABC):
    """One write path: ``prepare`` (unfaulted), ``act`` (under the fault), ``judge`` (after it)."""

    directory: Path
    problems: list[str] = field(default_factory=list)

    @abstractmethod
    def prepare(self) -> None:
        """Set up the new values to write, with no fault armed."""

    @abstractmethod
    def act(self) -> None:
        """The write under test; the armed fault fires somewhere inside it."""

    @abstractmethod
    def judge(self, failure: OSError | None, op: str) -> None:
        """Record in ``problems`` every way the files or the entry break the guarantees."""

    def check_no_temps(self, context: str) -> None:
        temps = sorted(name for name in os.listdir(self.directory) if name.endswith(".tmp"))
        if temps:
            self.problems.append(f"{context}: temps left: {temps}")


class GroupCommit(Scenario):
    """``offload(["a", "b", "c"], pickle_container=True)`` over committed old pairs."""

    def __init__(self, directory: Path, *, from_dat: bool) -> None:
        super().__init__(directory)
        self.from_dat = from_dat
        self.store = _make_store(directory)
        for key in KEYS:
            self.store.add_data_to_store(key, old_value(key))
        self.store.offload(list(KEYS), pickle_container=True)

    def prepare(self) -> None:
        for key in KEYS:
            if key in self.store:
                del self.store[key]
            self.store.add_data_to_store(key, new_value(key))
            if self.from_dat:
                # An offloaded entry is committed by copying its .dat inside the core.
                self.store.offload(key)

    def act(self) -> None:
        self.store.offload(list(KEYS), pickle_container=True)

    def expected_ages(self, failure: OSError | None, op: str) -> dict[str, Age]:
        if failure is None or op == "dir_fsync":
            return dict.fromkeys(KEYS, "new")
        name = Path(str(failure.filename)).name
        failing = next((index for index, key in enumerate(KEYS) if name.startswith(f"{key}.")), None)
        if failing is None:
            self.problems.append(f"group commit, {op}: the error names {name!r}, no file of {KEYS}")
            return {}
        ages: dict[str, Age] = {}
        for index, key in enumerate(KEYS):
            # A failed sidecar rename leaves the new payload, whose header is the truth.
            renamed = op == "rename" and index == failing and name == f"{key}.meta.json.tmp"
            ages[key] = "new" if index < failing or renamed else "old"
        return ages

    def judge(self, failure: OSError | None, op: str) -> None:
        self.check_no_temps(f"group commit, {op}")
        for key, age in self.expected_ages(failure, op).items():
            seen = _read_pair(self.directory, key)
            if seen != age:
                self.problems.append(f"group commit, {op} failed at {_name(failure)}: {key!r} reads {seen}, not {age}")


class Conversion(Scenario):
    """A durable ``enable_caching()`` over an existing ``e.dat`` holding the old value."""

    def __init__(self, directory: Path) -> None:
        super().__init__(directory)
        self.keep = DiskBackedNDArray(
            old_value("e"), cache_path=directory / "e", enable_caching=True, purge_disk_on_gc=False
        )
        self.entry: DiskBackedNDArray | None = None
        self.source = new_value("e")

    def prepare(self) -> None:
        self.entry = DiskBackedNDArray(self.source, cache_path=self.directory / "e", purge_disk_on_gc=False)

    def act(self) -> None:
        assert self.entry is not None
        self.entry.enable_caching()

    def judge(self, failure: OSError | None, op: str) -> None:
        self.check_no_temps(f"conversion, {op}")
        seen = _read_dat(self.directory / "e.dat", "e")
        # The .dat is replaced by the rename; only failures after it (dir fsync, map) see the new one.
        allowed: set[str] = {"new"} if failure is None else {"old"}
        if failure is not None and op in ("dir_fsync", "map"):
            allowed = {"old", "new"}
        if seen not in allowed:
            self.problems.append(f"conversion, {op} failed at {_name(failure)}: e.dat reads {seen}, not {allowed}")
        entry = self.entry
        assert entry is not None
        if failure is not None and (entry.cache_enabled or entry.data is not self.source):
            self.problems.append(f"conversion, {op}: the failed entry left RAM or lost its buffer")


class Materialisation(Scenario):
    """The first ``offload()`` of a reloaded, modified entry writes its ``m.dat`` (a working file)."""

    def __init__(self, directory: Path) -> None:
        super().__init__(directory)
        store = _make_store(directory)
        store.add_data_to_store("m", old_value("m"))
        store.offload("m", pickle_container=True)
        self.entry: DiskBackedNDArray | None = None

    def prepare(self) -> None:
        self.entry = _make_store(self.directory)["m"]
        self.entry.data[...] = new_value("m")

    def act(self) -> None:
        assert self.entry is not None
        self.entry.offload()

    def judge(self, failure: OSError | None, op: str) -> None:
        self.check_no_temps(f"materialisation, {op}")
        entry = self.entry
        assert entry is not None
        if _read_pair(self.directory, "m") != "old":
            self.problems.append(f"materialisation, {op}: m.npy changed")
        if failure is None:
            if not entry.offloaded or _read_dat(self.directory / "m.dat", "m") != "new":
                self.problems.append(f"materialisation, {op}: the retry did not offload the new value")
            return
        if entry.offloaded or not np.array_equal(entry.data, new_value("m")):
            self.problems.append(f"materialisation, {op} failed at {_name(failure)}: the entry lost its buffer")
        seen = _read_dat(self.directory / "m.dat", "m")
        # The commit released the add's working m.dat; only a failure after the rename sees one.
        allowed = {"absent", "new"} if op == "map" else {"absent"}
        if seen not in allowed:
            self.problems.append(f"materialisation, {op} failed at {_name(failure)}: m.dat reads {seen}")


SCENARIOS: dict[str, Callable[[Path], Scenario]] = {
    "group-commit-from-buffers": lambda directory: GroupCommit(directory, from_dat=False),
    "group-commit-from-dat-files": lambda directory: GroupCommit(directory, from_dat=True),
    "conversion": Conversion,
    "materialisation": Materialisation,
}


def _name(failure: OSError | None) -> str:
    return "nothing" if failure is None else repr(Path(str(failure.filename)).name)


@pytest.fixture(autouse=True)
def _clean_seam() -> Iterator[None]:
    _rust._clear_faults()
    yield
    _rust._clear_faults()


@pytest.fixture(scope="module", autouse=True)
def _report_points() -> Iterator[None]:
    yield
    report_counts("io-faults", {"failure_points": sum(POINTS.values()), "per_case": dict(POINTS)})


def _calls_in_a_clean_run(make: Callable[[Path], Scenario], directory: Path, op: str) -> int:
    scenario = make(directory)
    scenario.prepare()
    _rust._clear_faults()
    scenario.act()
    return _rust._op_counts().get(op, 0)


def _fails_with_eio(scenario: Scenario, op: str, nth: int) -> tuple[OSError | None, dict[str, int]]:
    """Run ``act`` with the ``nth`` call of ``op`` failing; return the error and the call counts."""
    scenario.prepare()
    _rust._clear_faults()
    _rust._inject_fault(op, nth, errno.EIO)
    failure: OSError | None = None
    try:
        scenario.act()
    except OSError as exc:
        failure = exc
    counts = _rust._op_counts()
    _rust._clear_faults()
    if failure is None:
        scenario.problems.append(f"{op} #{nth}: the injected EIO was swallowed ({op} ran {counts.get(op, 0)} times)")
    return failure, counts


@pytest.mark.slow
@pytest.mark.parametrize(("case", "op"), [(case, op) for case, ops in PATH_OPS.items() for op in ops])
def test_eio_at_every_call_surfaces_cleanly_and_keeps_old_or_new(tmp_path: Path, case: str, op: str) -> None:
    make = SCENARIOS[case]
    try:
        _rust._inject_fault(op, 1, errno.EIO)
    except ValueError:
        pytest.skip(f"this build of the native seam cannot fail {op!r}")
    _rust._clear_faults()
    calls = _calls_in_a_clean_run(make, tmp_path / "dry-run", op)
    assert calls > 0, f"the {case} path no longer makes a {op!r} call"
    problems: list[str] = []

    for nth in range(1, calls + 1):
        scenario = make(tmp_path / f"{op}-{nth}")
        failure, _ = _fails_with_eio(scenario, op, nth)
        if failure is not None:
            if failure.errno != errno.EIO or not failure.filename:
                scenario.problems.append(f"{op} #{nth}: surfaced as {failure!r} (filename {failure.filename!r})")
            scenario.judge(failure, op)
            _rust._clear_faults()
            scenario.act()
            scenario.judge(None, op)
        problems.extend(scenario.problems)

    POINTS[f"{case}/{op}"] = calls
    assert problems == [], "\n".join(problems)


@pytest.mark.parametrize("case", list(SCENARIOS))
def test_a_failed_fsync_is_final_and_its_file_never_renamed_into_place(tmp_path: Path, case: str) -> None:
    make = SCENARIOS[case]
    calls = _calls_in_a_clean_run(make, tmp_path / "dry-run", "fsync")
    problems: list[str] = []

    for nth in range(1, calls + 1):
        scenario = make(tmp_path / f"fsync-{nth}")
        failure, counts = _fails_with_eio(scenario, "fsync", nth)

        # A retry would add an fsync beyond the clean run's. (A group commit still fsyncs the temps of
        # the keys staged after a failed one, on its fsync threads: they are dropped, not renamed.)
        if counts["fsync"] > calls:
            problems.append(f"fsync #{nth} failed, yet {counts['fsync']} of {calls} fsyncs ran: one was retried")
        if failure is not None:
            scenario.judge(failure, "fsync")
            if Path(str(failure.filename)).exists():
                problems.append(f"fsync #{nth}: the temp {failure.filename} survived")
        problems.extend(scenario.problems)

    assert problems == [], "\n".join(problems)
