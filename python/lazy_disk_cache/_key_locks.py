"""Taking a store key's cross-process locks where the directory lets us: the writer lock, and the holder lock.

The native core owns the protocol (``CacheDir.lock_key`` and ``CacheDir.hold_key``: two bytes of the
directory's lock file per key). A process that may not create or write the lock file (a read-only
directory or mount) cannot change the directory either, so it has nothing to exclude: it proceeds
without the writer lock. The holder lock only protects an entry's ``.dat`` from garbage collection in
other processes, so failing to take it never fails the entry's own work: the entry goes unannounced.
"""

import contextlib
import errno
import logging
from collections.abc import Iterator
from pathlib import Path

from lazy_disk_cache._directories import open_directory
from lazy_disk_cache._rust import CacheDir, KeyHolder
from lazy_disk_cache.paths import MEMMAP_SUFFIX

__all__ = ["hold_key_if_writable", "writer_lock_if_writable"]

# Announcing an entry is the entry's work: its records go to the entry module's logger.
logger = logging.getLogger("lazy_disk_cache.lazy_disk_cache")

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


def hold_key_if_writable(dat: Path) -> KeyHolder | None:
    """Announce that this process holds an entry on the working file ``dat`` (``<dir>/<key>.dat``).

    ``None`` when it cannot be announced: ``dat`` is not named ``<key>.dat``, its directory does not
    exist (yet) or refuses the lock file (read-only), a garbage collection held the key for longer
    than the core waits, or any other ``OSError`` (logged at DEBUG). Never raises. Blocks briefly on
    disk: one ``fcntl`` for the first holder of the key in this process, none after.
    """
    key = dat.name.removesuffix(MEMMAP_SUFFIX)
    if not key or key == dat.name:
        return None
    try:
        holder = open_directory(dat.parent).hold_key(key)
    except OSError as exc:
        if exc.errno not in _REFUSALS and exc.errno != errno.ENOENT:
            logger.debug("Could not announce the entry on %s", dat, exc_info=True)
        return None
    except ValueError:
        logger.debug("Could not announce the entry on %s", dat, exc_info=True)
        return None
    if holder is None:
        logger.debug("A garbage collection held %s too long; the entry goes unannounced", dat)
    return holder
