"""One writer of the many-process store campaign: random writes, purges, refreshes and reads of shared keys.

Usage: ``store_many_writers.py DIRECTORY WRITER_ID SEED LOG``. Every operation is logged to ``LOG``
(JSON lines, one ``write`` each, so a SIGKILL never leaves half a line from this process): a
``begin`` record before the call and an ``ack`` record after it returned. Values carry their writer
and generation in their first 16 bytes. Unexpected exceptions are logged as ``error`` records.
"""

from __future__ import annotations

import json
import os
import random
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import dask
import dask.array as da
import numpy as np

from lazy_disk_cache import DiskBackedNDArray, DiskBackedStore, LazyDiskCacheConfig

KEYS = ("a", "b", "c", "d", "e")
DTYPES = ("<i8", "<f4", ">u2")
COLUMNS = 8


def make_value(writer: int, generation: int) -> np.ndarray[Any, Any]:
    """The value of (writer, generation): its shape and dtype vary, its first 16 bytes name it."""
    rows = 1 + (writer * 7 + generation) % 40
    dtype = np.dtype(DTYPES[(writer + generation) % len(DTYPES)])
    nbytes = rows * COLUMNS * dtype.itemsize
    raw = np.random.default_rng([writer, generation]).integers(0, 256, nbytes, dtype=np.uint8)
    raw[:16] = np.frombuffer(np.array([writer, generation], dtype="<u8").tobytes(), dtype=np.uint8)
    return raw.view(dtype).reshape(rows, COLUMNS)


def stamp_of(array: np.ndarray[Any, Any]) -> tuple[int, int]:
    head = np.ascontiguousarray(array).view(np.uint8).reshape(-1)[:16]
    writer, generation = np.frombuffer(head.tobytes(), dtype="<u8")
    return int(writer), int(generation)


class Log:
    def __init__(self, path: str) -> None:
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    def record(self, **fields: Any) -> None:
        os.write(self._fd, (json.dumps({**fields, "time": time.monotonic()}) + "\n").encode())


def main() -> None:
    directory, writer, seed, log_path = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    rng = random.Random(seed)
    log = Log(log_path)
    store = DiskBackedStore(
        config=LazyDiskCacheConfig(enable_caching=True, cache_path=Path(directory)), factory=DiskBackedNDArray
    )
    log.record(t="started", w=writer)
    generation = 0
    while True:
        key = rng.choice(KEYS)
        op = rng.choices(("write", "dask", "purge", "refresh"), weights=(6, 1, 2, 2))[0]
        try:
            if op in ("write", "dask"):
                generation += 1
                value = make_value(writer, generation)
                log.record(t="begin", op="write", key=key, w=writer, g=generation)
                if key in store:
                    del store[key]
                if op == "write":
                    store.add_data_to_store(key, value)
                    store.offload(key, pickle_container=True)
                else:
                    with dask.config.set(scheduler="threads"):
                        store.store_dask(key, da.from_array(value, chunks=(7, 5)))
                log.record(t="ack", op="write", key=key, w=writer, g=generation)
            elif op == "purge":
                log.record(t="begin", op="purge", key=key, w=writer)
                try:
                    store.purge(key)
                except KeyError:
                    pass
                log.record(t="ack", op="purge", key=key, w=writer)
            else:
                store.refresh()
                for tracked in store.keys():
                    try:
                        loaded = np.asarray(store[tracked])
                    except KeyError:
                        continue
                    expected = make_value(*stamp_of(loaded))
                    if (loaded.dtype, loaded.shape, loaded.tobytes()) != (
                        expected.dtype,
                        expected.shape,
                        expected.tobytes(),
                    ):
                        log.record(t="error", w=writer, text=f"torn read of {tracked!r}")
                    store.pop(tracked, None)
        except Exception:
            log.record(t="error", w=writer, text=traceback.format_exc())


if __name__ == "__main__":
    main()
