"""A writer in its own process that pauses in the middle of a group commit until told to go on.

Usage: ``python paused_writer.py DIR MODE``. ``mid-payload``: the first key's payload is being
written (its temp open and locked) when the writer pauses, from its progress callback.
``staged``: both keys are staged (temps fsynced and closed) when it pauses, before ``commit()``.
It prints ``paused`` and waits for a line on stdin, then finishes the commit and prints
``committed``. Bounded: it gives up after 60 seconds without a line.
"""

import select
import sys
from pathlib import Path

import numpy as np

from lazy_disk_cache import _rust

CHUNK = 1 << 20
TIMEOUT_SECONDS = 60.0


def values(key: str) -> np.ndarray:
    return np.full(4 * CHUNK // 8, float(len(key)), dtype=np.float64)


def pause() -> None:
    print("paused", flush=True)
    ready, _, _ = select.select([sys.stdin], [], [], TIMEOUT_SECONDS)
    if not ready or not sys.stdin.readline():
        raise SystemExit("paused_writer: no word from the parent")


def main(directory: Path, mode: str) -> None:
    cache_dir = _rust.CacheDir.open(directory)
    paused = False

    def progress(moved: int) -> None:
        nonlocal paused
        if mode == "mid-payload" and not paused:
            paused = True
            pause()

    with cache_dir.begin_commit(chunk_bytes=CHUNK) as batch:
        for key in ("first", "second"):
            array = values(key)
            batch.add_npy(
                key,
                descr="'<f8'",
                fortran_order=False,
                shape=array.shape,
                nbytes=array.nbytes,
                meta=lambda checksum: (
                    b'{"schema_version": 1, "lazy_disk_cache_class": "DiskBackedNDArray", '
                    + f'"checksum": "{checksum}"}}'.encode()
                ),
                source=array,
                progress=progress,
            )
        if mode == "staged":
            pause()
        batch.commit()
    print("committed", flush=True)


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2])
