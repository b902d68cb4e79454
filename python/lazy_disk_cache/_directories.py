"""Shared native directory handles: one open ``CacheDir`` per directory, not one per entry.

Every artefact operation of the core runs relative to an open directory. Entries, stores and purges
in the same directory share its handle, so that thousands of entries in one directory do not hold
thousands of descriptors.
"""

import os
import threading
from pathlib import Path

from lazy_disk_cache._rust import CacheDir

__all__ = ["open_directory"]

# Enough for the directories a program works in at once; the oldest handle is dropped first (a
# dropped handle stays valid for whoever still holds it, so eviction never breaks a caller).
_MAX_DIRECTORY_HANDLES = 64

_handles: dict[str, tuple[CacheDir, tuple[int, int]]] = {}
_handles_lock = threading.Lock()


def open_directory(path: Path, *, create: bool = False) -> CacheDir:
    """Return a shared ``CacheDir`` for ``path`` (created with its parents when ``create``).

    A cached handle is reused only while ``path`` still names the same directory (device and
    inode), so a directory removed and recreated under the same name gets a fresh handle. One
    ``stat`` per call; opening a new handle blocks on disk. A missing directory raises
    ``FileNotFoundError`` unless ``create``.
    """
    key = str(path)
    try:
        info = os.stat(key)
    except FileNotFoundError:
        if not create:
            raise
    else:
        cached = _handles.get(key)
        if cached is not None and cached[1] == (info.st_dev, info.st_ino):
            return cached[0]
    handle = CacheDir.open(key, create=create)
    info = os.stat(key)
    with _handles_lock:
        if len(_handles) >= _MAX_DIRECTORY_HANDLES:
            _handles.pop(next(iter(_handles)))
        _handles[key] = (handle, (info.st_dev, info.st_ino))
    return handle
