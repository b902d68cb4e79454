"""Child: pickle a purging entry, then exit in one of several situations; print the entry's file.

Usage: entry_handoff_exit.py CACHE_PATH unrevived|revived_then_kept|replaced

``unrevived``: the pickle is never loaded here. ``revived_then_kept``: a copy is loaded here, takes
the duty back, and gives it up with ``disable_purge()``. ``replaced``: after the pickle, a durable
entry without purge duty writes a new file at the same path.
"""

import pickle
import sys
from pathlib import Path

import numpy as np

from lazy_disk_cache.disk_backed_ndarray import DiskBackedNDArray

KEEP_ALIVE: list[object] = []


def main() -> None:
    cache_path, situation = Path(sys.argv[1]), sys.argv[2]
    entry = DiskBackedNDArray(np.arange(5), cache_path=cache_path, enable_caching=True)
    blob = pickle.dumps(entry)
    KEEP_ALIVE.extend((entry, blob))
    if situation == "revived_then_kept":
        copy = pickle.loads(blob)
        copy.disable_purge()
        KEEP_ALIVE.append(copy)
    elif situation == "replaced":
        del entry
        KEEP_ALIVE.clear()
        KEEP_ALIVE.append(
            DiskBackedNDArray(np.arange(7), cache_path=cache_path, enable_caching=True, purge_disk_on_gc=False)
        )
    sys.stdout.write(f"{cache_path.with_suffix('.dat')}\n")


if __name__ == "__main__":
    main()
