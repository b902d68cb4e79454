"""Taking a store key's cross-process writer lock where the directory lets us.

The native core owns the protocol (``CacheDir.lock_key``: one byte of the directory's lock file per
key). A process that may not create or write the lock file (a read-only directory or mount) cannot
change the directory either, so it has nothing to exclude: it proceeds without the lock.
"""

import contextlib
import errno
from collections.abc import Iterator

from lazy_disk_cache._rust import CacheDir

__all__ = ["writer_lock_if_writable"]

_REFUSALS = frozenset((errno.EACCES, errno.EPERM, errno.EROFS))


@contextlib.contextmanager
def writer_lock_if_writable(directory: CacheDir, key: str) -> Iterator[None]:
    """Hold ``key``'s writer lock in ``directory`` for the block (waiting, GIL released), if it can be taken.

    Other ``OSError``s (``ENOLCK``, ...) propagate.
    """
    try:
        lock = directory.lock_key(key)
    except OSError as exc:
        if exc.errno not in _REFUSALS:
            raise
        yield
        return
    with lock:
        yield
