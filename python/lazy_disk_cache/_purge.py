"""Planning and carrying out ``DiskBackedStore.purge``: which names go, in what order, and when to refuse.

Every refusal is decided before anything changes, so a refused purge is a bit-for-bit no-op. The
store runs the steps in order (plan, detach purge duty, drop the key, unlink) under its lock.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterable
from pathlib import Path
from typing import NamedTuple

from lazy_disk_cache._directories import open_directory
from lazy_disk_cache._rust import CacheDir
from lazy_disk_cache.errors import (
    StoreContainmentError,
    StorePurgeAliasedArtefactError,
    StorePurgeForeignArtefactError,
)
from lazy_disk_cache.lazy_disk_cache import LazyDiskCache, release_purge_duty
from lazy_disk_cache.paths import (
    MEMMAP_SUFFIX,
    TMP_SUFFIX,
    StoreKey,
    artefact_suffix,
    ensure_write_contained,
    get_memmap_path,
    get_memmap_tmp_path,
    get_meta_path,
    get_meta_tmp_path,
    get_npy_path,
    get_npy_tmp_path,
)

__all__ = ["PurgePlan", "artefact_names", "detach_purge_duty", "plan_purge", "unlink_in_order"]

# Sidecar first, payloads last: without its sidecar the key no longer loads, so a purge interrupted
# part-way never leaves a pair that still reads as the old value.
_WORKING_TEMP_SUFFIX = MEMMAP_SUFFIX + TMP_SUFFIX

_BUILDERS_IN_UNLINK_ORDER = (
    get_meta_path,
    get_meta_tmp_path,
    get_npy_tmp_path,
    get_memmap_tmp_path,
    get_npy_path,
    get_memmap_path,
)


class PurgePlan(NamedTuple):
    """The paths to unlink, in order, and the resolved paths whose purge duty must be detached."""

    unlink_order: tuple[Path, ...]
    removal_set: frozenset[str]


def artefact_names(cache_dir: Path, key: StoreKey) -> tuple[Path, ...]:
    """The six names ``purge`` removes for the checked ``key``, in unlink order (contained)."""
    return tuple(build(cache_dir, key) for build in _BUILDERS_IN_UNLINK_ORDER)


def plan_purge(cache_dir: Path, key: str, names: Iterable[Path], entries: Iterable[LazyDiskCache]) -> PurgePlan:
    """Check every existing name and every live entry of ``key``; return what to unlink.

    Reads the filesystem (``lstat``, ``realpath``), writes nothing.

    Raises:
        StorePurgeForeignArtefactError: a name, or a live non-ephemeral entry's ``.dat``, leads
            outside ``cache_dir``.
        StorePurgeAliasedArtefactError: a name is a link to another store artefact inside ``cache_dir``.
    """
    order: list[Path] = []
    for path in names:
        if not os.path.lexists(path):
            continue
        _require_write_contained(path, cache_dir, key)
        if os.path.islink(path):
            target = Path(os.path.realpath(path))
            if artefact_suffix(target.name) is not None:
                raise StorePurgeAliasedArtefactError.for_link(key, path, target)
            order.extend((target, path))
        else:
            order.append(path)
    for entry in entries:
        if not entry.ephemeral and entry.cache_path is not None:
            _require_write_contained(entry.cache_path, cache_dir, key)
    return PurgePlan(tuple(order), frozenset(os.path.realpath(path) for path in order))


def _require_write_contained(path: Path, cache_dir: Path, key: str) -> None:
    try:
        ensure_write_contained(path, cache_dir, key)
    except StoreContainmentError as exc:
        raise StorePurgeForeignArtefactError.for_path(key, path) from exc


def detach_purge_duty(entries: Iterable[LazyDiskCache], removal_set: frozenset[str]) -> None:
    """Detach the GC finalizer of each non-ephemeral entry whose ``.dat`` is about to be unlinked.

    The entries keep their ``purge_disk_on_gc`` flag; only the armed duty (and its lease) goes, so
    a later file at the same name is never deleted by an old entry's collection.
    """
    for entry in entries:
        path = entry.cache_path
        if entry.ephemeral or path is None or os.path.realpath(path) not in removal_set:
            continue
        release_purge_duty(entry)


def _unlink_sparing_live_temps(directory: CacheDir, names: list[str]) -> list[tuple[str, OSError]]:
    """Unlink ``names`` in order and fsync the directory once; return the failures.

    A ``.dat.tmp`` is removed first, and only when its writer's lock is gone: one still locked
    belongs to a conversion running in some process, and stays (that writer renames it).
    """
    temps = [name for name in names if name.endswith(_WORKING_TEMP_SUFFIX)]
    failed = directory.sweep_temps(temps)[1] if temps else []
    return [*failed, *directory.unlink_all([name for name in names if name not in temps], durable=True)]


def unlink_in_order(paths: Iterable[Path]) -> list[tuple[Path, OSError]]:
    """Unlink each path in order, never following a link; return the ones that failed.

    Missing names are not failures. Each directory a name was unlinked from is fsynced, so that
    a purge that returned is not undone by a power cut. A failed fsync raises its ``OSError``
    unless an unlink failed too (those failures are then what the purge reports). Blocks on disk.
    """
    failures: list[tuple[Path, OSError]] = []
    sync_error: OSError | None = None
    for parent, run in itertools.groupby(paths, key=lambda path: path.parent):
        batch = list(run)
        try:
            directory = open_directory(parent)
        except FileNotFoundError:
            continue
        except OSError as exc:
            failures.extend((path, exc) for path in batch)
            continue
        by_name = {path.name: path for path in batch}
        try:
            failed = _unlink_sparing_live_temps(directory, [path.name for path in batch])
        except OSError as exc:
            sync_error = sync_error or exc
            continue
        failures.extend((by_name[name], error) for name, error in failed)
    if sync_error is not None and not failures:
        raise sync_error
    return failures
