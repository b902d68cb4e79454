"""What a store finds when it opens its directory: orphaned temps to sweep and keys to adopt.

Both scans are non-recursive and never follow a link to write. Nothing here logs or raises for a
single bad name: the store reports the findings on its own logger.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

from lazy_disk_cache._rust import CacheDir
from lazy_disk_cache.errors import StoreKeyError
from lazy_disk_cache.paths import NPY_SUFFIX, get_npy_path, is_our_temp_name, key_from_npy_name

__all__ = ["RescanReport", "SweepReport", "rescan", "sweep_orphan_temps"]


class SweepReport(NamedTuple):
    """Temps removed (ours, and any the core removed outside our key rule) and names that failed."""

    removed: list[str]
    foreign: list[str]
    failed: list[tuple[str, OSError]]


class RescanReport(NamedTuple):
    """Keys whose ``<key>.npy`` was found, and ``.npy`` names that are not legal keys."""

    keys: list[str]
    skipped: list[str]


def sweep_orphan_temps(directory: CacheDir) -> SweepReport:
    """Remove ``<key>.npy.tmp``, ``<key>.meta.json.tmp`` and ``<key>.dat.tmp`` left by a crash.

    The core unlinks names (never a link's target), skips temps a live writer holds locked and
    stays silent in a read-only directory. A directory that cannot even be listed yields one
    failure for ``'.'``. Never raises ``OSError``. Blocks on disk.
    """
    try:
        removed, failed = directory.sweep_temps()
    except OSError as exc:
        return SweepReport([], [], [(".", exc)])
    ours = [name for name in removed if is_our_temp_name(name)]
    foreign = [name for name in removed if not is_our_temp_name(name)]
    return SweepReport(ours, foreign, failed)


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
