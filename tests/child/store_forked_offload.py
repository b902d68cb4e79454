"""Child: add a store entry (purge on), fork, and let the forked process write, offload and exit.

Usage: store_forked_offload.py CACHE_DIR

The forked process writes one element, offloads (which writes ``k.dat``) and exits normally, so
its exit handlers run. This process then prints whether ``k.dat`` is still there and the forked
process's exit code, as JSON.
"""

import json
import os
import sys

import numpy as np

from lazy_disk_cache import DiskBackedNDArray, DiskBackedStore, LazyDiskCacheConfig


def main(directory: str) -> int:
    config = LazyDiskCacheConfig(cache_path=directory, enable_caching=True)
    store = DiskBackedStore[DiskBackedNDArray](config=config, factory=DiskBackedNDArray)
    store.add_data_to_store("k", np.arange(8.0))
    entry = store["k"]
    child = os.fork()
    if child == 0:
        entry.data[0] = 7.0
        entry.offload()
        sys.exit(0)
    _, status = os.waitpid(child, 0)
    present = os.path.exists(os.path.join(directory, "k.dat"))
    print(json.dumps({"dat_present": present, "child_exit": os.waitstatus_to_exitcode(status)}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
