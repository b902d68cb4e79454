"""A store's directory: choosing it, sweeping crash temps and stale working files, finding keys, removing it at the end.

The scans are non-recursive and never follow a link to write. Nothing here logs or raises for a
single bad name: the store reports the findings on its own logger. A directory the store created
itself is removed by the owner process when its last same-process store copy goes.
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from lazy_disk_cache._directories import open_directory
from lazy_disk_cache._leases import PathLease
from lazy_disk_cache._rust import CacheDir
from lazy_disk_cache.paths import (
    MEMMAP_SUFFIX,
    NPY_SUFFIX,
    is_our_temp_name,
    key_from_npy_name,
    legacy_key_from_npy_name,
)

if TYPE_CHECKING:
    from lazy_disk_cache._rust import WorkingFileFate

__all__ = [
    "CacheDirChoice",
    "RescanReport",
    "SweepReport",
    "WorkingFilesReport",
    "choose_cache_dir",
    "collect_stale_working_files",
    "directory_refuses_writes",
    "lease_directory",
    "list_directory",
    "require_usable_directory",
    "rescan",
    "sweep_orphan_temps",
]

_TEMP_DIR_PREFIX = "lazy_disk_cache-"


class SweepReport(NamedTuple):
    """Temps removed and names that could not be removed."""

    removed: list[str]
    failed: list[tuple[str, OSError]]


class RescanReport(NamedTuple):
    """Keys whose ``<key>.npy`` was found (legacy ones included), the legacy keys, and skipped names."""

    keys: list[str]
    legacy: list[str]
    skipped: list[str]


def list_directory(cache_dir: Path) -> list[os.DirEntry[str]]:
    """Every entry directly in ``cache_dir``: one listing, which a store open sweeps and rescans.

    Raises the ``OSError`` of a directory that cannot be listed. Reads the directory.
    """
    with os.scandir(cache_dir) as listing:
        return list(listing)


def sweep_orphan_temps(
    directory: CacheDir, *, dry_run: bool = False, listed: Iterable[os.DirEntry[str]] | None = None
) -> SweepReport:
    """Remove ``<key>.npy.tmp``, ``<key>.meta.json.tmp`` and ``<key>.dat.tmp`` left by a crash.

    Only names whose stem is a legal store key are candidates; the core unlinks those names
    (never a link's target), skips temps a live writer holds and stays silent in a read-only
    directory. ``listed`` is the directory's listing when the caller just made one (see
    ``list_directory``); else it is listed here. A directory that cannot even be listed yields
    one failure for ``'.'``. Never raises ``OSError``. With ``dry_run`` the core decides the same
    way but removes nothing, and ``removed`` lists what it would remove. Blocks on disk.
    """
    try:
        names = os.listdir(directory.path) if listed is None else [item.name for item in listed]
        candidates = [name for name in names if is_our_temp_name(name)]
        if not candidates:
            return SweepReport([], [])
        removed, failed = directory.sweep_temps(candidates, dry_run=dry_run)
    except OSError as exc:
        return SweepReport([], [(".", exc)])
    return SweepReport(removed, failed)


def rescan(cache_dir: Path, listed: Iterable[os.DirEntry[str]] | None = None) -> RescanReport:
    """List the keys with a ``<key>.npy`` regular file (or link to one) directly in ``cache_dir``.

    The key is the name without its final ``.npy``; it must be legal or legacy (see ``paths``) and
    rebuild the same path; other ``.npy`` names are skipped. ``.pkl``, ``.dat``-only and temp files
    are never keys. Sorted by name. ``listed`` is the directory's listing when the caller just
    made one (see ``list_directory``); else the directory is read here.
    """
    keys: list[str] = []
    legacy: list[str] = []
    skipped: list[str] = []
    candidates = sorted(
        item.name
        for item in (list_directory(cache_dir) if listed is None else listed)
        if len(item.name) > len(NPY_SUFFIX) and item.name.endswith(NPY_SUFFIX) and _is_file(item)
    )
    for name in candidates:
        key = key_from_npy_name(name)
        old_key = None if key is not None else legacy_key_from_npy_name(name)
        found = key if key is not None else old_key
        # Both parsers check that the builder rebuilds exactly ``name`` from the key, and a key of
        # either kind is one plain file name, so ``<cache_dir>/<key>.npy`` is this very entry.
        if found is None:
            skipped.append(name)
            continue
        keys.append(found)
        if old_key is not None:
            legacy.append(old_key)
    return RescanReport(keys, legacy, skipped)


def _is_file(item: os.DirEntry[str]) -> bool:
    try:
        return item.is_file()
    except OSError:
        return False


class WorkingFilesReport(NamedTuple):
    """Working files removed (in a dry run: removable), those kept with why, and names that failed."""

    removed: list[str]
    kept: dict[str, str]
    failed: list[tuple[str, OSError]]


_KEPT_BECAUSE: dict[WorkingFileFate, str] = {
    "held": "an entry in a live process holds it",
    "writing": "a live writer is writing its key",
    "unpaired": "no committed pair beside it, so it may be the only copy of its data",
    "differs": "its committed pair holds other bytes, so it may be the only copy of its data",
    "changed": "it changed while it was compared; the next gc decides",
    "not-regular": "not a regular file",
    "refused": "this process may not lock the directory",
}


def collect_stale_working_files(
    directory: CacheDir, keys: Iterable[str], *, dry_run: bool = False
) -> WorkingFilesReport:
    """Remove each working file ``<key>.dat`` of ``keys`` that nobody needs any more.

    That is one that no live entry in any process holds and whose committed pair holds exactly the
    same bytes (``CacheDir.collect_working_files``). Never the only copy of data: a ``.dat`` without
    a committed pair beside it, or with other bytes than its pair's payload, stays (a pickled entry
    may still name it). With ``dry_run`` the core decides the same way, locks included, and
    ``removed`` lists what it would remove. Reads every candidate ``.dat`` and its ``.npy`` once
    (GIL released). ``KeyboardInterrupt`` stops it. Never raises ``OSError``: what fails for a
    key is reported in ``failed``.
    """
    names = {key: key + MEMMAP_SUFFIX for key in keys}
    if not names:
        return WorkingFilesReport([], {}, [])
    fates, failed = directory.collect_working_files(list(names), dry_run=dry_run)
    removed = [names[key] for key, fate in fates if fate == "removed"]
    kept = {names[key]: _KEPT_BECAUSE[fate] for key, fate in fates if fate in _KEPT_BECAUSE}
    return WorkingFilesReport(removed, kept, [(names[key], error) for key, error in failed])


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


def require_usable_directory(path: Path) -> None:
    """Raise the ``OSError`` (errno, ``filename=str(path)``) that keeps the store from reading ``path``.

    ``path`` must be a directory this process may list and enter. One ``stat`` and an open.
    """
    open_directory(path)
    if not os.access(path, os.R_OK | os.X_OK):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))


def directory_refuses_writes(directory: CacheDir) -> bool:
    """Whether this process may not create files in ``directory`` (permissions or a read-only mount)."""
    return directory.refuses_writes()


def lease_directory(store: object, path: Path, owner_pid: int) -> PathLease:
    """Tie removing the store's private directory to ``store``'s life; the owner's last lease removes it.

    Removal is best effort (it runs at GC or interpreter exit, where nobody could handle an error)
    and never follows a link inside the tree.
    """
    return PathLease(store, str(path), owner_pid, _remove_tree)


def _remove_tree(path: str) -> None:
    shutil.rmtree(path, ignore_errors=True)
