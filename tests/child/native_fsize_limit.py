"""Child process: write past RLIMIT_FSIZE through the native layer, print the outcome as JSON.

Usage: native_fsize_limit.py DIRECTORY. The directory holds ``x.dat``; the child lowers its
file size limit below the new content's size and tries to replace the file.
"""

import json
import resource
import sys

from lazy_disk_cache import _rust

LIMIT_BYTES = 1 << 20


def main(directory: str) -> int:
    cache = _rust.CacheDir.open(directory)
    resource.setrlimit(resource.RLIMIT_FSIZE, (LIMIT_BYTES, LIMIT_BYTES))
    try:
        cache.write_file("x.dat", bytes(4 * LIMIT_BYTES), chunk_bytes=LIMIT_BYTES, durable=True)
    except OSError as exc:
        json.dump({"errno": exc.errno, "filename": exc.filename}, sys.stdout)
        return 0
    json.dump({"errno": None, "filename": None}, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
