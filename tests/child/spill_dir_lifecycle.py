"""Child: spill an entry, let a forked worker spill one of its own, and report the directories as JSON.

Usage: spill_dir_lifecycle.py (the spill directories go to TMPDIR, set by the test)

The worker is a ``multiprocessing`` process started by fork, which ends with ``os._exit``. It also
writes to an entry this process spilled before the fork. The report says where each spill
directory was, its mode, which directories still exist after the worker ended (this process's
must, the worker's must not), and what each process then reads from the shared entry. The test checks what is left after
this process ends too.
"""

import json
import multiprocessing
import os
import stat
import sys
from multiprocessing.connection import Connection

import numpy as np

from lazy_disk_cache import DiskBackedNDArray
from lazy_disk_cache._spill_dir import current_spill_dir


def _spill_one() -> tuple[str, bool]:
    entry = DiskBackedNDArray(np.arange(4096, dtype=np.float64))
    freed = entry.spill()
    directory = current_spill_dir()
    intact = bool(np.array_equal(np.asarray(entry), np.arange(4096)))
    return str(directory), freed == 4096 * 8 and intact


def _worker(connection: Connection, inherited: DiskBackedNDArray) -> None:
    inherited.data[0] = -1.0  # the parent's entry, spilled before the fork
    connection.send((*_spill_one(), float(inherited[0])))
    connection.close()


def main() -> None:
    parent_dir, parent_ok = _spill_one()
    inherited = DiskBackedNDArray(np.arange(4096, dtype=np.float64))
    inherited.spill()
    receiving, sending = multiprocessing.Pipe(duplex=False)
    worker = multiprocessing.get_context("fork").Process(target=_worker, args=(sending, inherited))
    worker.start()
    worker_dir, worker_ok, worker_saw = receiving.recv()
    worker.join(60)
    report = {
        "parent_dir": parent_dir,
        "parent_mode": stat.S_IMODE(os.stat(parent_dir).st_mode),
        "worker_dir": worker_dir,
        "spilled_and_reloaded": parent_ok and worker_ok,
        "worker_exit": worker.exitcode,
        "parent_dir_after_worker": os.path.isdir(parent_dir),
        "worker_dir_after_worker": os.path.isdir(worker_dir),
        "worker_wrote_its_copy": worker_saw,
        "parent_value_after_worker": float(inherited[0]),
    }
    sys.stdout.write(json.dumps(report))


if __name__ == "__main__":
    main()
