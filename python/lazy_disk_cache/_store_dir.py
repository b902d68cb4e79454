"""A store's directory: choosing it, sweeping crash temps, finding keys, and removing it at the end.

The scans are non-recursive and never follow a link to write. Nothing here logs or raises for a
single bad name: the store reports the findings on its own logger. A directory the store created
itself is removed by the owner process when its last same-process store copy goes.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
from pathlib import Path
from typing import NamedTuple

from lazy_disk_cache._rust import CacheDir
from lazy_disk_cache.errors import StoreKeyError
from lazy_disk_cache.paths import NPY_SUFFIX, get_npy_path, is_our_temp_name, key_from_npy_name

__all__ = [
    "CacheDirChoice",
    "DirectoryLease",
    "RescanReport",
    "SweepReport",
    "choose_cache_dir",
    "directory_refuses_writes",
    "rescan",
    "sweep_orphan_temps",
]

_TEMP_DIR_PREFIX = "lazy_disk_cache-"


class SweepReport(NamedTuple):
    """Temps removed and names that could not be removed."""

    removed: list[str]
    failed: list[tuple[str, OSError]]


class RescanReport(NamedTuple):
    """Keys whose ``<key>.npy`` was found, and ``.npy`` names that are not legal keys."""

    keys: list[str]
    skipped: list[str]


def sweep_orphan_temps(directory: CacheDir) -> SweepReport:
    """Remove ``<key>.npy.tmp``, ``<key>.meta.json.tmp`` and ``<key>.dat.tmp`` left by a crash.

    Only names whose stem is a legal store key are candidates; the core unlinks those names
    (never a link's target), skips temps a live writer holds and stays silent in a read-only
    directory. A directory that cannot even be listed yields one failure for ``'.'``. Never
    raises ``OSError``. Blocks on disk.
    """
    try:
        candidates = [name for name in os.listdir(directory.path) if is_our_temp_name(name)]
        if not candidates:
            return SweepReport([], [])
        removed, failed = directory.sweep_temps(candidates)
    except OSError as exc:
        return SweepReport([], [(".", exc)])
    return SweepReport(removed, failed)


def rescan(cache_dir: Path) -> RescanReport:
    """List the keys with a ``<key>.npy`` regular file (or link to one) directly in ``cache_dir``.

    The key is the name without its final ``.npy``; it must be legal and rebuild the same path.
    ``.pkl``, ``.dat``-only and temp files are never keys. Sorted by name. Reads the directory.
    """
    keys: list[str] = []
    skipped: list[str] = []
    with os.scandir(cache_dir) as listing:
        candidates = sorted(
            item.name
            for item in listing
            if len(item.name) > len(NPY_SUFFIX) and item.name.endswith(NPY_SUFFIX) and _is_file(item)
        )
    for name in candidates:
        key = key_from_npy_name(name)
        if key is None or not _rebuilds(cache_dir, key, name):
            skipped.append(name)
        else:
            keys.append(key)
    return RescanReport(keys, skipped)


def _is_file(item: os.DirEntry[str]) -> bool:
    try:
        return item.is_file()
    except OSError:
        return False


def _rebuilds(cache_dir: Path, key: str, name: str) -> bool:
    try:
        return get_npy_path(cache_dir, key) == cache_dir / name
    except StoreKeyError:
        return False


class CacheDirChoice(NamedTuple):
    """The store directory, whether the store created (and owns) it, and whether a file was in the way."""

    path: Path
    owned: bool
    replaced_file: bool


def choose_cache_dir(configured: Path | None) -> CacheDirChoice:
    """Pick the store directory: the configured one made absolute (links unresolved), else a new private one.

    ``None`` or an existing file give a new ``0700`` directory from ``tempfile.mkdtemp``.
    """
    if configured is None or configured.is_file():
        return CacheDirChoice(Path(tempfile.mkdtemp(prefix=_TEMP_DIR_PREFIX)), True, configured is not None)
    return CacheDirChoice(configured.absolute(), False, False)


def directory_refuses_writes(path: Path) -> bool:
    """Whether this process may not create files in ``path`` (permissions or a read-only mount)."""
    if not os.access(path, os.W_OK):
        return True
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False


_directory_leases: dict[str, int] = {}
_directory_leases_lock = threading.Lock()


def _reset_directory_lease_lock_after_fork() -> None:
    global _directory_leases_lock
    _directory_leases_lock = threading.Lock()


os.register_at_fork(after_in_child=_reset_directory_lease_lock_after_fork)


class DirectoryLease:
    """One store copy's claim on removing its private directory; the owner's last lease removes it."""

    __slots__ = ("_released", "owner_pid", "path")

    def __init__(self, path: str, owner_pid: int) -> None:
        self.path = path
        self.owner_pid = owner_pid
        self._released = False
        with _directory_leases_lock:
            _directory_leases[path] = _directory_leases.get(path, 0) + 1

    def expire(self) -> None:
        """Finalizer body: drop the lease; the owner process's last lease removes the directory.

        Removal is best effort (it runs at GC or interpreter exit, where nobody could handle an
        error) and never follows a link inside the tree.
        """
        with _directory_leases_lock:
            if self._released:
                return
            self._released = True
            remaining = _directory_leases.get(self.path, 1) - 1
            if remaining > 0:
                _directory_leases[self.path] = remaining
                return
            _directory_leases.pop(self.path, None)
        if os.getpid() == self.owner_pid:
            shutil.rmtree(self.path, ignore_errors=True)
