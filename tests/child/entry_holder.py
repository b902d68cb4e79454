"""A process that holds entries on the working files of stored keys until told to let go.

Usage: ``python entry_holder.py DIR MODE KEY [KEY ...]``. Each key's value comes from its committed
``<key>.npy``, so the ``.dat`` each entry writes holds exactly its pair's payload.

``store``: a store on DIR reloads each key, and its entry writes its own ``.dat`` (caching turned
off and on again): a live store entry per key whose data lives in its ``.dat``.
``fork``: standalone entries (purge off) on each key's ``.dat``, then a forked child that copies the
first entry, drops every entry it inherited and exits through the normal interpreter shutdown (its
exit status is printed as ``child exited N``).

Then it prints ``holding`` and waits for a line on stdin before it exits. Bounded: it gives up after
60 seconds without a line.
"""

import copy
import gc
import os
import select
import sys
from pathlib import Path

import numpy as np

from lazy_disk_cache import DiskBackedNDArray, DiskBackedStore, LazyDiskCacheConfig

TIMEOUT_SECONDS = 60.0


def hold_store_entries(directory: Path, keys: list[str]) -> object:
    config = LazyDiskCacheConfig(enable_caching=True, cache_path=directory, purge_disk_on_gc=False)
    store = DiskBackedStore[DiskBackedNDArray](config=config, factory=DiskBackedNDArray)
    for key in keys:
        # Through RAM and back: the entry writes its own .dat, with exactly the stored bytes.
        store[key].disable_caching()
        store[key].enable_caching()
    return store


def hold_and_fork(directory: Path, keys: list[str]) -> object:
    entries = {
        key: DiskBackedNDArray(
            np.load(directory / f"{key}.npy"), cache_path=directory / key, enable_caching=True, purge_disk_on_gc=False
        )
        for key in keys
    }
    pid = os.fork()
    if pid == 0:
        twin = copy.copy(entries[keys[0]])
        del twin
        entries.clear()
        gc.collect()
        sys.exit(0)
    _, status = os.waitpid(pid, 0)
    print(f"child exited {os.waitstatus_to_exitcode(status)}", flush=True)
    return entries


def main(directory: Path, mode: str, keys: list[str]) -> None:
    held = hold_store_entries(directory, keys) if mode == "store" else hold_and_fork(directory, keys)
    print("holding", flush=True)
    ready, _, _ = select.select([sys.stdin], [], [], TIMEOUT_SECONDS)
    if not ready or not sys.stdin.readline():
        raise SystemExit("entry_holder: no word from the parent")
    del held


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2], sys.argv[3:])
