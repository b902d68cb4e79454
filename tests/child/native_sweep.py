"""Child process: sweep a cache directory's temps and print the outcome as JSON.

Usage: native_sweep.py DIRECTORY. Prints ``{"removed": [...], "failed": [...]}``, the names
the sweep removed and the names it could not remove.
"""

import json
import sys

from lazy_disk_cache import _rust


def main(directory: str) -> int:
    removed, failed = _rust.CacheDir.open(directory).sweep_temps()
    json.dump({"removed": sorted(removed), "failed": sorted(name for name, _ in failed)}, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
