"""What a cache directory holds, told apart by name alone: stored pairs, working files, temps, the rest.

One non-recursive listing and one ``stat`` per name (links are followed to tell a file from a
directory, never to write). Nothing is opened, created or changed, so it works in a directory this
process may only read. Names that are not artefacts of a legal key, directories and other file types
are *unknown*: the store never touches them. The store's own key-lock file is not listed.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

from lazy_disk_cache.paths import (
    LEGACY_PICKLE_SUFFIX,
    LOCK_FILE_NAME,
    MEMMAP_SUFFIX,
    META_SUFFIX,
    NPY_SUFFIX,
    is_our_temp_name,
    split_artefact_name,
)

__all__ = ["Inventory", "take_inventory"]


class Inventory(NamedTuple):
    """The names in a cache directory, sorted within each group, with their sizes in bytes."""

    payloads: dict[str, int]
    """Keys with a ``<key>.npy`` regular file (or a link to one), and its size."""
    sidecars: dict[str, int]
    """Keys with a ``<key>.meta.json`` regular file (or a link to one), and its size."""
    working: dict[str, int]
    """Keys with a ``<key>.dat`` working file (an entry's memory-mapped data), and its size."""
    temps: dict[str, int]
    """Temp names the store writes and sweeps (``<key>.npy.tmp``, ``.meta.json.tmp``, ``.dat.tmp``
    of a legal key), and their sizes."""
    legacy: list[str]
    """``<key>.pkl`` names: pickles of the original package, never read."""
    unknown: list[str]
    """Every other name: not an artefact of a legal key, or not a regular file."""

    @property
    def keys(self) -> list[str]:
        """Keys with at least one half of a stored pair, sorted."""
        return sorted(self.payloads.keys() | self.sidecars.keys())


def take_inventory(cache_dir: Path) -> Inventory:
    """List ``cache_dir`` and sort every name into its group. Reads the directory; writes nothing.

    Raises ``OSError`` (``FileNotFoundError``, ``NotADirectoryError``, ...) when it cannot be listed.
    """
    groups: dict[str, dict[str, int]] = {NPY_SUFFIX: {}, META_SUFFIX: {}, MEMMAP_SUFFIX: {}}
    temps: dict[str, int] = {}
    legacy: list[str] = []
    unknown: list[str] = []
    with os.scandir(cache_dir) as listing:
        items = sorted(listing, key=lambda item: item.name)
    for item in items:
        if item.name == LOCK_FILE_NAME:
            continue
        size = _regular_file_size(item)
        parts = split_artefact_name(item.name)
        if parts is None or size is None:
            unknown.append(item.name)
            continue
        key, suffix = parts
        if suffix in groups:
            groups[suffix][key] = size
        elif is_our_temp_name(item.name):
            temps[item.name] = size
        elif suffix == LEGACY_PICKLE_SUFFIX:
            legacy.append(item.name)
        else:
            unknown.append(item.name)
    return Inventory(groups[NPY_SUFFIX], groups[META_SUFFIX], groups[MEMMAP_SUFFIX], temps, legacy, unknown)


def _regular_file_size(item: os.DirEntry[str]) -> int | None:
    """The size of the regular file ``item`` names (through a link), or ``None`` for anything else."""
    try:
        if not item.is_file():
            return None
        return item.stat().st_size
    except OSError:
        return None
