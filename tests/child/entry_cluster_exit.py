"""Child: hand an ephemeral entry to a process-worker cluster, then exit while still holding it.

Usage: entry_cluster_exit.py TEMPDIR

Prints the entry's file, the sum the workers computed, and whether the file still existed after
every worker process had gone. The parent checks that the file is gone once this process exits.
"""

import sys
import tempfile

import numpy as np
from distributed import Client, LocalCluster

from lazy_disk_cache.disk_backed_ndarray import DiskBackedNDArray


def main() -> None:
    tempfile.tempdir = sys.argv[1]
    entry = DiskBackedNDArray(np.arange(8.0), enable_caching=True)
    with (
        LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster,
        Client(cluster) as client,
    ):
        total = client.submit(np.sum, entry).result()
    assert entry.cache_path is not None
    sys.stdout.write(f"{entry.cache_path} {total} {entry.cache_path.exists()}\n")


if __name__ == "__main__":
    main()
