"""Child: a fork server for the crash and power-cut campaigns.

Usage: crash_zygote.py   (commands on stdin, one JSON object per line; events on stdout)

Importing NumPy, pydantic and the package takes longer than a whole crash cycle, so this process
imports them once and forks a fresh writer or verifier per command:

* ``{"cmd": "write", "dir", "ack", "run", "seed", "first_generation"}`` forks a writer that loops
  over store commits, group commits, reload-and-rewrite commits and ``.dat`` conversions until it
  is killed; it prints ``{"t": "forked", "pid"}`` and the writer streams ``B``/``E`` events around
  every write call.
* ``{"cmd": "reap", "pid"}`` waits for that writer and prints ``{"t": "reaped", "status"}``.
* ``{"cmd": "verify", "dir"}`` forks a verifier that opens a fresh store on the directory and
  prints ``{"t": "verified", ...}`` (what every key reads as); then ``{"t": "verify-exit", "status"}``.
* ``{"cmd": "exit"}`` ends the server.

Every line is one ``os.write`` of less than ``PIPE_BUF`` bytes, so lines from the server and from
its children never interleave. Run it with ``-X faulthandler`` so a crash of a child is visible.
"""

import functools
import json
import os
import pickle
import random
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from crash_values import (
    CONVERSION_KEYS,
    STORE_KEYS,
    AckLog,
    Layout,
    descr_of,
    digest,
    make_layout,
    make_value,
    stamp_of,
)

from lazy_disk_cache.disk_backed_ndarray import DiskBackedNDArray
from lazy_disk_cache.disk_backed_store import DiskBackedStore
from lazy_disk_cache.lazy_disk_cache import LazyDiskCacheConfig

Store = DiskBackedStore[DiskBackedNDArray]

_OPS = ("single", "group", "rewrite", "convert", "purge")
_OP_WEIGHTS = (4, 3, 2, 3, 1)
_WRITER_FAILED = 70


def emit(event: dict[str, Any]) -> None:
    os.write(1, (json.dumps(event, ensure_ascii=True) + "\n").encode("ascii"))


def open_store(directory: Path) -> Store:
    config = LazyDiskCacheConfig(cache_path=directory, enable_caching=True, purge_disk_on_gc=True)
    return DiskBackedStore[DiskBackedNDArray](config=config, factory=DiskBackedNDArray)


class Writer:
    """Writes known values forever, logging a begin record before and an ack record after each call."""

    def __init__(self, command: dict[str, Any]) -> None:
        self.directory = Path(command["dir"])
        self.run = int(command["run"])
        self.rng = random.Random(int(command["seed"]))
        self.generation = int(command["first_generation"])
        self.log = AckLog(Path(command["ack"]))
        self.store = open_store(self.directory)

    def next_generation(self) -> int:
        self.generation += 1
        return self.generation

    def source(self, value: NDArray[Any]) -> NDArray[Any]:
        """The value itself, or the same values as a strided or Fortran-ordered array."""
        pick = self.rng.random()
        if pick < 0.2:
            wide = np.empty((*value.shape, 2), dtype=value.dtype)
            wide[..., 0] = value
            return wide[..., 0]
        if pick < 0.35 and value.ndim == 2:
            return np.asfortranarray(value)
        return value

    def timed(self, op: str, items: list[dict[str, Any]], call: Callable[[], None]) -> None:
        self.log.record("begin", self.run, op, items)
        emit({"t": "B", "op": op})
        start = time.perf_counter()
        call()
        elapsed = time.perf_counter() - start
        self.log.record("ack", self.run, op, [{"key": item["key"], "gen": item["gen"]} for item in items])
        emit({"t": "E", "op": op, "s": elapsed})

    def item(self, key: str, generation: int, layout: Layout) -> dict[str, Any]:
        return {"key": key, "gen": generation, **layout.as_json()}

    def install(self, key: str, value: NDArray[Any]) -> None:
        if key in self.store:
            del self.store[key]
        self.store.add_data_to_store(key, self.source(value))

    def single(self) -> None:
        key = self.rng.choice(STORE_KEYS)
        generation = self.next_generation()
        layout = make_layout(key, generation)
        value = make_value(key, generation, layout)
        offload_first = self.rng.random() < 0.3

        def call() -> None:
            self.install(key, value)
            if offload_first:
                # The commit then copies the payload from the entry's .dat instead of its buffer.
                self.store.offload(key)
            self.store.offload(key, pickle_container=True)

        self.timed("single", [self.item(key, generation, layout)], call)

    def group(self) -> None:
        keys = self.rng.sample(STORE_KEYS, self.rng.randint(2, len(STORE_KEYS)))
        planned = []
        for key in keys:
            generation = self.next_generation()
            layout = make_layout(key, generation)
            planned.append((key, generation, layout, make_value(key, generation, layout)))

        by_pickling = self.rng.random() < 0.3

        def call() -> None:
            for key, _, _, value in planned:
                self.install(key, value)
            if by_pickling:
                # Pickling a caching store commits every cached entry in one group commit.
                pickle.dumps(self.store)
            else:
                self.store.offload(keys, pickle_container=True)

        self.timed("group", [self.item(key, gen, layout) for key, gen, layout, _ in planned], call)

    def purge(self) -> None:
        """Purge a key: afterwards it reads as absent; while purging, as its old value or absent."""
        key = self.rng.choice(STORE_KEYS)

        def call() -> None:
            try:
                self.store.purge(key)
            except KeyError:
                pass  # Neither tracked nor on disk: already absent.

        self.timed("purge", [{"key": key, "gen": None}], call)

    def rewrite(self) -> None:
        """Reload a key (a copy-on-write mapping of its .npy), overwrite it in place, commit it."""
        key = self.rng.choice(STORE_KEYS)
        try:
            entry = self.store[key]
        except KeyError:
            self.single()
            return
        live = entry.data
        layout = Layout(descr_of(live.dtype), tuple(live.shape))
        generation = self.next_generation()
        value = make_value(key, generation, layout)
        materialise_first = self.rng.random() < 0.5

        def call() -> None:
            live[...] = value
            if materialise_first:
                # Materialises <key>.dat from the written private pages, then commits from it.
                entry.offload()
            self.store.offload(key, pickle_container=True)

        self.timed("rewrite", [self.item(key, generation, layout)], call)

    def convert(self) -> None:
        name = self.rng.choice(CONVERSION_KEYS)
        generation = self.next_generation()
        layout = make_layout(name, generation)
        source = self.source(make_value(name, generation, layout))
        path = self.directory / name
        in_constructor = self.rng.random() < 0.5

        def call() -> None:
            if in_constructor:
                DiskBackedNDArray(source, cache_path=path, enable_caching=True, purge_disk_on_gc=False)
            else:
                DiskBackedNDArray(source, cache_path=path, purge_disk_on_gc=False).enable_caching()

        self.timed("convert", [self.item(name, generation, layout)], call)

    def loop(self) -> None:
        emit({"t": "ready"})
        operations = {
            "single": self.single,
            "group": self.group,
            "rewrite": self.rewrite,
            "convert": self.convert,
            "purge": self.purge,
        }
        while True:
            operations[self.rng.choices(_OPS, _OP_WEIGHTS)[0]]()


def observe_store_key(store: Store, directory: Path, key: str) -> dict[str, Any]:
    try:
        entry = store[key]
    except KeyError:
        return {"state": "absent"}
    except Exception as exc:
        return {"state": "error", "error": f"{type(exc).__name__}: {exc}"}
    array = np.ascontiguousarray(np.asarray(entry))
    raw = array.tobytes()
    observed: dict[str, Any] = {
        "state": "present",
        "descr": descr_of(array.dtype),
        "shape": list(array.shape),
        "nbytes": len(raw),
        "stamp": stamp_of(raw),
        "digest": digest(raw),
    }
    try:
        theirs = np.load(directory / f"{key}.npy", mmap_mode="r", allow_pickle=False)
        observed["numpy_agrees"] = (
            theirs.dtype == array.dtype
            and theirs.shape == array.shape
            and digest(np.ascontiguousarray(theirs).tobytes()) == observed["digest"]
        )
    except Exception as exc:
        observed["numpy_agrees"] = False
        observed["numpy_error"] = f"{type(exc).__name__}: {exc}"
    meta = json.loads((directory / f"{key}.meta.json").read_bytes())
    observed["stale_sidecar"] = meta.get("shape") != list(array.shape) or meta.get("dtype") != array.dtype.str
    return observed


def observe_dat(path: Path) -> dict[str, Any]:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return {"state": "absent"}
    return {"state": "present", "nbytes": len(raw), "stamp": stamp_of(raw), "digest": digest(raw)}


def verify(command: dict[str, Any]) -> None:
    directory = Path(command["dir"])
    store = open_store(directory)
    temps = sorted(name for name in os.listdir(directory) if name.endswith(".tmp"))
    keys = {key: observe_store_key(store, directory, key) for key in STORE_KEYS}
    keys.update({name: observe_dat(directory / f"{name}.dat") for name in CONVERSION_KEYS})
    emit({"t": "verified", "temps": temps, "keys": keys})


def write_forever(command: dict[str, Any]) -> None:
    Writer(command).loop()


def run_in_child(body: Callable[[], None], failure_event: str) -> int:
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid:
        return pid
    code = 0
    try:
        body()
    except BaseException:
        emit({"t": failure_event, "traceback": traceback.format_exc()[-3000:]})
        code = _WRITER_FAILED
    os._exit(code)


def main() -> None:
    for line in sys.stdin:
        command: dict[str, Any] = json.loads(line)
        name = command["cmd"]
        if name == "exit":
            return
        if name == "write":
            pid = run_in_child(functools.partial(write_forever, command), "writer-error")
            emit({"t": "forked", "pid": pid})
        elif name == "reap":
            _, status = os.waitpid(int(command["pid"]), 0)
            emit({"t": "reaped", "status": os.waitstatus_to_exitcode(status)})
        elif name == "verify":
            pid = run_in_child(functools.partial(verify, command), "verifier-error")
            _, status = os.waitpid(pid, 0)
            emit({"t": "verify-exit", "status": os.waitstatus_to_exitcode(status)})
        else:
            emit({"t": "unknown-command", "cmd": name})


if __name__ == "__main__":
    main()
