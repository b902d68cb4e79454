"""Child: run commits and conversions with the disk full at every 4 KiB step; report JSON.

Usage: full_disk_steps.py DIRECTORY MODE VALUE_BYTES

MODE is ``fsize`` (RLIMIT_FSIZE lowered to each step; CPython ignores SIGXFSZ, so the limit
surfaces as EFBIG), ``tmpfs`` (DIRECTORY is a small tmpfs; a filler file leaves exactly each step
of free space) or ``inodes`` (DIRECTORY is a tmpfs with few inodes; filler files leave each
number of free inodes). For every operation (a single-key commit, a group commit, a ``.dat``
conversion, the materialisation of a reloaded entry's ``.dat``, a zero-filling ``load("w+")``) and
every step, the child checks:
the failure is an ``OSError`` with ENOSPC/EFBIG/EDQUOT and a filename naming the operation's
temp in DIRECTORY; no temp is left; the previous value and every other key are intact; the same
operation succeeds once the space is freed. A SIGBUS would kill the child, which the test sees.
"""

import errno
import json
import os
import resource
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from crash_values import Layout, descr_of, make_value

from lazy_disk_cache.disk_backed_ndarray import DiskBackedNDArray
from lazy_disk_cache.disk_backed_store import DiskBackedStore
from lazy_disk_cache.lazy_disk_cache import LazyDiskCacheConfig

PAGE = 4096
FULL_DISK_ERRNOS = frozenset({errno.ENOSPC, errno.EFBIG, errno.EDQUOT})
NEIGHBOURS = ("n1", "n2")
GROUP = ("g1", "g2", "g3")
# A commit creates two temps, a conversion one; a few more steps show the success side too.
INODE_STEPS = 5
FILLER = "filler.bin"

Store = DiskBackedStore[DiskBackedNDArray]


@dataclass
class OpReport:
    failures: int = 0
    successes: int = 0
    errnos: dict[str, int] = field(default_factory=dict)


class Stepper:
    def __init__(self, directory: Path, mode: str, value_bytes: int) -> None:
        self.directory = directory
        self.mode = mode
        self.layout = Layout(descr_of(np.dtype("<f8")), (value_bytes // 8,))
        self.generation = 0
        self.violations: list[str] = []
        self.reports: dict[str, OpReport] = {}
        self.store = self.fresh_store()
        self.expected: dict[str, bytes] = {}
        for key in (*NEIGHBOURS, "victim", *GROUP, "reloaded"):
            self.commit_new([key])
        self.conversion_entry = self.convert_new()

    # -- values --------------------------------------------------------------------------------

    def fresh_store(self) -> Store:
        config = LazyDiskCacheConfig(cache_path=self.directory, enable_caching=True, purge_disk_on_gc=False)
        return DiskBackedStore[DiskBackedNDArray](config=config, factory=DiskBackedNDArray)

    def value(self, key: str) -> NDArray[Any]:
        self.generation += 1
        return make_value(key, self.generation, self.layout)

    def stage(self, keys: list[str]) -> dict[str, bytes]:
        staged = {}
        for key in keys:
            value = self.value(key)
            if key in self.store:
                del self.store[key]
            self.store.add_data_to_store(key, value)
            staged[key] = value.tobytes()
        return staged

    def commit_new(self, keys: list[str]) -> None:
        staged = self.stage(keys)
        self.store.offload(keys, pickle_container=True)
        self.expected.update(staged)

    def convert_new(self) -> DiskBackedNDArray:
        value = self.value("conv")
        entry = DiskBackedNDArray(
            value, cache_path=self.directory / "conv", enable_caching=True, purge_disk_on_gc=False
        )
        self.expected["conv.dat"] = value.tobytes()
        return entry

    # -- checks --------------------------------------------------------------------------------

    def check_everything(self, context: str) -> None:
        temps = sorted(name for name in os.listdir(self.directory) if name.endswith(".tmp"))
        if temps:
            self.violations.append(f"{context}: temps left behind: {temps}")
        for name, expected in self.expected.items():
            path = self.directory / name if name.endswith(".dat") else self.directory / f"{name}.npy"
            try:
                actual = path.read_bytes() if name.endswith(".dat") else np.load(path, allow_pickle=False).tobytes()
                if not name.endswith(".dat"):
                    json.loads((self.directory / f"{name}.meta.json").read_bytes())
            except Exception as exc:
                self.violations.append(f"{context}: {name} does not load: {type(exc).__name__}: {exc}")
                continue
            if actual != expected:
                self.violations.append(f"{context}: {name} changed")

    def judge_failure(self, op: str, step: int, exc: BaseException, temps_of: tuple[str, ...]) -> None:
        report = self.reports.setdefault(op, OpReport())
        report.failures += 1
        if not isinstance(exc, OSError):
            self.violations.append(f"{op} step {step}: {type(exc).__name__} instead of OSError: {exc}")
            return
        name = errno.errorcode.get(exc.errno or 0, str(exc.errno))
        report.errnos[name] = report.errnos.get(name, 0) + 1
        if exc.errno not in FULL_DISK_ERRNOS:
            self.violations.append(f"{op} step {step}: errno {name}: {exc}")
        filename = Path(str(exc.filename)) if exc.filename else None
        names_a_temp = (
            filename is not None
            and filename.parent == self.directory
            and filename.name.endswith(".tmp")
            and any(filename.name.startswith(f"{name}.") for name in temps_of)
        )
        if not names_a_temp:
            self.violations.append(f"{op} step {step}: filename {exc.filename!r} names no temp of {temps_of}")

    # -- limits --------------------------------------------------------------------------------

    @contextmanager
    def full(self, step: int) -> Iterator[None]:
        """Leave exactly ``step`` pages (``fsize``/``tmpfs``) or inodes (``inodes``) for the operation."""
        if self.mode == "fsize":
            soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
            resource.setrlimit(resource.RLIMIT_FSIZE, (step * PAGE, hard))
            try:
                yield
            finally:
                resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
            return
        fillers = self.fill(step)
        try:
            yield
        finally:
            for filler in fillers:
                filler.unlink()

    def fill(self, step: int) -> list[Path]:
        info = os.statvfs(self.directory)
        if self.mode == "tmpfs":
            filler = self.directory / FILLER
            spare = info.f_bavail * info.f_frsize - step * PAGE
            with filler.open("wb") as handle:
                if spare > 0:
                    os.posix_fallocate(handle.fileno(), 0, spare)
            left = os.statvfs(self.directory).f_bavail * info.f_frsize
            if left != step * PAGE:
                self.violations.append(f"filler left {left} bytes instead of {step * PAGE}")
            return [filler]
        fillers = [self.directory / f"{FILLER}.{index}" for index in range(max(0, info.f_favail - step))]
        for filler in fillers:
            filler.touch()
        return fillers

    # -- operations ----------------------------------------------------------------------------

    def steps(self, needed_bytes: int, needed_inodes: int) -> range:
        if self.mode == "inodes":
            return range(needed_inodes + 2)
        return range(-(-needed_bytes // PAGE) + 2)

    def run(
        self,
        op: str,
        needs: tuple[int, int],
        prepare: Callable[[], Any],
        attempt: Callable[[Any], None],
        temps_of: tuple[str, ...],
    ) -> None:
        """Step ``op`` through every limit; ``prepare`` runs unlimited, ``attempt(prepared)`` under it.

        ``needs`` is the operation's (bytes, inodes); ``temps_of`` the names whose temps may fail.
        """
        for step in self.steps(*needs):
            prepared = prepare()
            try:
                with self.full(step):
                    attempt(prepared)
            except Exception as exc:
                self.judge_failure(op, step, exc, temps_of)
                self.settle_partial(op, prepared, exc)
                self.check_everything(f"{op} step {step} after the failure")
                try:
                    attempt(prepared)
                except Exception as retry_exc:
                    self.violations.append(f"{op} step {step}: the retry failed: {retry_exc!r}")
                    continue
            else:
                self.reports.setdefault(op, OpReport()).successes += 1
            self.settle(op, prepared)
            self.check_everything(f"{op} step {step} after success")

    def settle_partial(self, op: str, prepared: Any, exc: BaseException) -> None:
        """A group commit that fails at key k has committed the keys before k (and only those)."""
        if op != "group" or not isinstance(exc, OSError) or not exc.filename:
            return
        failed = Path(str(exc.filename)).name
        keys = list(prepared)
        failing = next((index for index, key in enumerate(keys) if failed.startswith(f"{key}.")), None)
        if failing is None:
            self.violations.append(f"group: cannot tell which key {failed!r} belongs to")
            return
        self.expected.update({key: prepared[key] for key in keys[:failing]})

    def settle(self, op: str, prepared: Any) -> None:
        if op in ("commit", "group"):
            self.expected.update(prepared)
        elif op == "convert":
            self.expected["conv.dat"] = prepared.tobytes()
        elif op == "zero-fill":
            self.expected["zero.dat"] = bytes(self.layout.nbytes)

    def commit(self) -> None:
        pair_bytes = PAGE + self.layout.nbytes + PAGE

        def attempt(staged: dict[str, bytes]) -> None:
            self.store.offload(list(staged), pickle_container=True)

        self.run("commit", (pair_bytes, 2), lambda: self.stage(["victim"]), attempt, ("victim",))
        group_needs = (len(GROUP) * pair_bytes, 2 * len(GROUP))
        self.run("group", group_needs, lambda: self.stage(list(GROUP)), attempt, GROUP)

    def convert(self) -> None:
        def attempt(value: NDArray[Any]) -> None:
            DiskBackedNDArray(value, cache_path=self.directory / "conv", enable_caching=True, purge_disk_on_gc=False)

        self.run("convert", (self.layout.nbytes, 1), lambda: self.value("conv"), attempt, ("conv",))

    def zero_fill(self) -> None:
        """``load("w+")`` replaces the .dat with a reserved, zeroed file of the same size."""

        def prepare() -> DiskBackedNDArray:
            value = self.value("zero")
            entry = DiskBackedNDArray(value, cache_path=self.directory / "zero", enable_caching=True)
            entry.offload()
            self.expected["zero.dat"] = value.tobytes()
            return entry

        def attempt(entry: DiskBackedNDArray) -> None:
            if entry.offloaded:
                entry.load("w+")

        self.run("zero-fill", (self.layout.nbytes, 1), prepare, attempt, ("zero",))

    def materialise(self) -> None:
        """A reloaded entry maps its .npy copy-on-write; its first offload writes <key>.dat."""
        for step in self.steps(self.layout.nbytes, 1):
            entry = self.fresh_store()["reloaded"]
            entry.data[...] = self.value("reloaded")
            written = np.array(entry.data).tobytes()
            try:
                with self.full(step):
                    entry.offload()
            except Exception as exc:
                self.judge_failure("materialise", step, exc, ("reloaded",))
                if entry.offloaded or np.array(entry.data).tobytes() != written:
                    self.violations.append(f"materialise step {step}: the failed entry lost its buffer")
                self.check_everything(f"materialise step {step} after the failure")
                try:
                    entry.offload()
                except Exception as retry_exc:
                    self.violations.append(f"materialise step {step}: the retry failed: {retry_exc!r}")
                    continue
            else:
                self.reports.setdefault("materialise", OpReport()).successes += 1
            if not entry.offloaded or (self.directory / "reloaded.dat").read_bytes() != written:
                self.violations.append(f"materialise step {step}: reloaded.dat does not hold the written value")

    def write_through_mappings_when_full(self) -> None:
        """Pages of a converted .dat were reserved up front: storing into them on a full disk is safe."""
        entry = DiskBackedNDArray(self.value("mapped"), cache_path=self.directory / "mapped", enable_caching=True)
        mapped = entry.data
        assert isinstance(mapped, np.memmap)
        with self.full(0):
            mapped[...] = self.value("mapped")
            mapped.flush()


def main() -> None:
    directory, mode, value_bytes = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    stepper = Stepper(directory, mode, value_bytes)
    stepper.commit()
    stepper.convert()
    stepper.materialise()
    stepper.zero_fill()
    if mode != "fsize":
        stepper.write_through_mappings_when_full()
    report = {
        "ops": {op: report.__dict__ for op, report in stepper.reports.items()},
        "violations": stepper.violations[:50],
    }
    sys.stdout.write(json.dumps(report))


if __name__ == "__main__":
    main()
