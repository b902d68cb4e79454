"""The private per-process spill directory, where entries without caching go when memory is short.

Created on first use as ``<tempdir>/lazy_disk_cache-spill-<pid>-<random>`` (mode 0700, the
system temp directory of :func:`tempfile.gettempdir`, so ``TMPDIR`` moves it). The process holds
an exclusive ``flock`` on it for as long as it lives and removes it at exit. A process killed
before its exit handlers ran leaves its directory behind; the next process that creates a spill
directory removes every such orphan: one whose lock is free while its pid is gone, or which has
not changed for a minute (its pid was reused). A directory whose lock is held is never touched.

A forked child does not inherit the parent's directory as its own: it creates its own on its
first spill (the parent's stays locked by the parent and is removed by it). A ``multiprocessing``
worker ends with ``os._exit``, which skips ``atexit``: its directory is removed by
``multiprocessing``'s own exit hook instead.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import itertools
import logging
import os
import shutil
import stat
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from lazy_disk_cache._directories import open_directory
from lazy_disk_cache._rust import CacheDir
from lazy_disk_cache.paths import MEMMAP_SUFFIX

__all__ = ["SPILL_DIR_PREFIX", "current_spill_dir", "new_spill_file", "sweep_orphan_spill_dirs"]

# Spilling is the budget's work: its records go to the budget's logger.
logger = logging.getLogger("lazy_disk_cache._budget")

SPILL_DIR_PREFIX = "lazy_disk_cache-spill-"
# A directory whose lock is free but whose pid is alive belongs to a process that is still
# setting it up (between mkdtemp and flock) or to a reused pid; only the latter stays quiet.
ORPHAN_QUIET_SECONDS = 60.0


@dataclass
class _SpillDir:
    path: Path
    pid: int
    lock_fd: int
    names: itertools.count[int] = field(default_factory=itertools.count)


_lock = threading.Lock()
_current: _SpillDir | None = None


def new_spill_file() -> tuple[CacheDir, Path]:
    """A fresh, unused file path in this process's spill directory and the directory's handle.

    Creates the directory (sweeping orphans first) on the first call in this process. Raises
    ``OSError`` when the temp directory cannot hold it.
    """
    global _current
    with _lock:
        current = _current
        if current is None:
            current = _current = _create(Path(tempfile.gettempdir()))
    name = f"{next(current.names)}{MEMMAP_SUFFIX}"
    return open_directory(current.path), current.path / name


def current_spill_dir() -> Path | None:
    """This process's spill directory, or ``None`` before its first spill."""
    current = _current
    return None if current is None else current.path


def _create(parent: Path) -> _SpillDir:
    sweep_orphan_spill_dirs(parent)
    path = Path(tempfile.mkdtemp(prefix=f"{SPILL_DIR_PREFIX}{os.getpid()}-", dir=parent))
    descriptor = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        # Blocking: another process's sweep may hold it for a moment, and leaves it (pid alive, fresh).
        fcntl.flock(descriptor, fcntl.LOCK_EX)
    except OSError:
        os.close(descriptor)
        shutil.rmtree(path, ignore_errors=True)
        raise
    logger.debug("Created the spill directory %s", path)
    # Imported here, on a process's first spill: a program that never spills never loads it.
    from multiprocessing import util

    util.Finalize(None, _remove_at_exit, exitpriority=0)
    return _SpillDir(path, os.getpid(), descriptor)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _orphan_pid(name: str) -> int | None:
    if not name.startswith(SPILL_DIR_PREFIX):
        return None
    pid = name[len(SPILL_DIR_PREFIX) :].split("-", 1)[0]
    return int(pid) if pid.isdigit() else None


def sweep_orphan_spill_dirs(parent: Path) -> list[Path]:
    """Remove the spill directories in ``parent`` that no live process holds; return them.

    Only this user's real directories named like a spill directory are considered, and only
    after taking their lock (so their owner is gone). Failures are logged, never raised.
    """
    removed: list[Path] = []
    try:
        candidates = [(entry, pid) for entry in os.scandir(parent) if (pid := _orphan_pid(entry.name)) is not None]
    except OSError:
        logger.debug("Could not list %s for orphaned spill directories", parent, exc_info=True)
        return removed
    for entry, pid in candidates:
        path = Path(entry.path)
        if _remove_if_orphaned(path, pid):
            removed.append(path)
    return removed


def _remove_if_orphaned(path: Path, pid: int) -> bool:
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError:
        return False  # gone, a symlink, not a directory or not ours to open
    try:
        info = os.fstat(descriptor)
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid():
            return False
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return False  # its process is alive and holds it
        if _pid_alive(pid) and time.time() - info.st_mtime < ORPHAN_QUIET_SECONDS:
            return False
        shutil.rmtree(path, ignore_errors=True)
    finally:
        os.close(descriptor)
    if path.exists():
        logger.debug("Could not remove the orphaned spill directory %s", path)
        return False
    logger.info("Removed the orphaned spill directory %s", path)
    return True


@atexit.register
def _remove_at_exit() -> None:
    """Remove this process's spill directory (never a parent's inherited across a fork)."""
    global _current
    current = _current
    if current is None or current.pid != os.getpid():
        return
    _current = None
    shutil.rmtree(current.path, ignore_errors=True)
    with contextlib.suppress(OSError):
        os.close(current.lock_fd)


def _forget_in_child() -> None:
    """A forked child spills into its own directory; the parent's stays locked by the parent."""
    global _current, _lock
    _lock = threading.Lock()
    current, _current = _current, None
    if current is not None:
        # Closing the child's copy leaves the lock with the parent's descriptor.
        with contextlib.suppress(OSError):
            os.close(current.lock_fd)


os.register_at_fork(after_in_child=_forget_in_child)
