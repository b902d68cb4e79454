"""``python -m lazy_disk_cache``: the ``lazy-disk-cache`` command line (see ``lazy_disk_cache.cli``)."""

import sys

from lazy_disk_cache.cli import main

if __name__ == "__main__":
    sys.exit(main())
