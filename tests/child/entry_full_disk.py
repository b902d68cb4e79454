"""Child: convert an entry under a small RLIMIT_FSIZE and report what happened as JSON.

Usage: entry_full_disk.py CACHE_PATH

CPython ignores SIGXFSZ, so exceeding the limit surfaces as EFBIG instead of killing the process.
"""

import json
import resource
import sys
from pathlib import Path

import numpy as np

from lazy_disk_cache.disk_backed_ndarray import DiskBackedNDArray

OLD_BYTES = 4096
LIMIT_BYTES = 64 * 1024
NEW_ELEMENTS = 1024 * 1024


def main() -> None:
    cache_path = Path(sys.argv[1])
    dat = cache_path.with_suffix(".dat")
    old = DiskBackedNDArray(
        np.full(OLD_BYTES, 7, dtype=np.uint8), cache_path=cache_path, enable_caching=True, purge_disk_on_gc=False
    )
    old.offload()
    source = np.arange(NEW_ELEMENTS, dtype=np.int64)
    entry = DiskBackedNDArray(source, cache_path=cache_path, purge_disk_on_gc=False)

    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (LIMIT_BYTES, hard))
    try:
        entry.enable_caching()
    except OSError as exc:
        failure = {"errno": exc.errno, "filename": str(exc.filename)}
    else:
        failure = {"errno": None, "filename": ""}
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))

    report = {
        **failure,
        "state_after_failure": {
            "cache_enabled": entry.cache_enabled,
            "offloaded": entry.offloaded,
            "data_intact": entry.data is source and bool(np.array_equal(source, np.arange(NEW_ELEMENTS))),
        },
        "old_dat_intact": dat.read_bytes() == b"\x07" * OLD_BYTES,
        "temp_left": dat.with_name(dat.name + ".tmp").exists(),
    }
    entry.enable_caching()
    entry.offload()
    report["retry_ok"] = bool(np.array_equal(np.asarray(entry), np.arange(NEW_ELEMENTS)))
    sys.stdout.write(json.dumps(report))


if __name__ == "__main__":
    main()
