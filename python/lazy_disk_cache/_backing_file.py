"""An entry's backing file: where its ``.dat`` is, how a write reaches it, and mapping it.

The ``.dat`` is reached through a handle on its directory, which the entry remembers. Every writer
asks ``_write_location`` where to write: it refuses a symlinked ``.dat`` (or temp) that leads out of
its directory and follows one that stays inside. Loads map the file that holds the data: the
``.dat``, or the store payload an adopted entry still reads (``_store_payload``). An entry without
a ``cache_path`` gets a private ``.dat`` in the temp directory. Only the process that created the
file may delete it (``_take_ownership``); whether its writes are fsynced is decided here too.
"""

import errno
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Literal

import numpy as np
from numpy.typing import DTypeLike

from lazy_disk_cache._directories import open_directory
from lazy_disk_cache._entry_files import dat_length, is_symlink
from lazy_disk_cache._entry_state import WRITING_MODES, EntryState, LoadMode
from lazy_disk_cache._memmap import as_memmap, open_memmap
from lazy_disk_cache._rust import CacheDir, FileMapping
from lazy_disk_cache.paths import MEMMAP_SUFFIX, TMP_SUFFIX, ensure_write_contained

__all__ = ["BackingFile"]

_MappingMode = Literal["r", "r+", "c"]


class BackingFile(EntryState):
    """The part of an entry that locates, maps and owns its ``.dat``."""

    def _backing_is_durable(self) -> bool:
        """Whether the ``.dat`` must survive a power cut, so its writes are fsynced (SPEC §4.4).

        Only with ``purge_disk_on_gc`` off, and never for a store's working copy (an entry built by
        ``add_data_to_store`` or reloaded by the store): the store's committed ``.npy`` pair is what a
        restart reads, never the ``.dat``, which is a working file only.
        """
        return not self._purge_disk_on_gc and not self._working_copy

    def _map_backing(self, mode: LoadMode) -> np.memmap[Any, np.dtype[Any]]:
        """Map the file that currently holds the data in ``mode`` (``w+``: zero-filled first).

        The common case costs one native open: a ``.dat`` symlink is detected by the core refusing
        to open it ``r+`` (``ELOOP``), and only then checked for write containment and followed.
        """
        shape, dtype = self._describe_shape_dtype()
        path = self._require_cache_path()
        adopted = self._adopted
        handle = self._dir_handle
        if handle is not None and adopted is None and mode != "w+":
            # The hot path of every load(): one native open through the remembered directory.
            # Any OSError (a replaced directory, a symlinked .dat) is sorted out below.
            dtype = np.dtype(dtype)
            try:
                mapping = FileMapping.open(handle, path.name, mode=mode, length=math.prod(shape) * dtype.itemsize)
            except OSError:
                pass
            else:
                return as_memmap(mapping, shape, dtype, filename=str(path))
        shape = tuple(shape)
        if adopted is not None and adopted.readonly and mode in WRITING_MODES:
            refusal = PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
            refusal.add_note("the entry was reloaded from a read-only cache directory; load it with mode 'r' or 'c'")
            raise refusal
        if mode == "w+":
            directory, name = self._write_location()
            nbytes = math.prod(shape) * np.dtype(dtype).itemsize
            mapping = directory.write_zeroed(name, dat_length(nbytes), durable=self._backing_is_durable())
            self._dat_identity = mapping.identity
            if adopted is not None:
                # The zero-filled .dat is the data now, no longer the stored payload.
                self._adopted = None
                self._payload_mapping = None
                if not self._backing_created:
                    self._take_ownership()
            return as_memmap(mapping, shape, dtype, filename=str(path))
        if adopted is not None:
            if mode == "r+" and not adopted.readonly:
                return self._materialise_payload(adopted, shape, np.dtype(dtype))
            return self._map_payload(adopted, shape, np.dtype(dtype), mode)
        try:
            return self._open_mapping(path.name, shape, dtype, mode)
        except OSError as exc:
            if mode != "r+" or exc.errno != errno.ELOOP:
                raise
        directory, name = self._write_location()
        return open_memmap(directory, name, shape, dtype, mode="r+", filename=str(path))

    def _open_mapping(
        self,
        name: str,
        shape: tuple[int, ...],
        dtype: DTypeLike,
        mode: _MappingMode,
        *,
        offset: int = 0,
        order: Literal["C", "F"] = "C",
    ) -> np.memmap[Any, np.dtype[Any]]:
        """Map ``name`` next to the ``.dat`` through the entry's cached directory handle."""
        filename = str(self._cache_path)
        handle = self._dir_handle
        if handle is not None:
            try:
                return open_memmap(handle, name, shape, dtype, mode=mode, offset=offset, order=order, filename=filename)
            except FileNotFoundError:
                pass  # The directory may have been replaced since the handle was opened; look again.
        return open_memmap(
            self._directory(), name, shape, dtype, mode=mode, offset=offset, order=order, filename=filename
        )

    def _directory(self, *, create: bool = False) -> CacheDir:
        """Open (or create) the ``.dat``'s directory, remember the handle and return it."""
        path = self._require_cache_path()
        try:
            handle = open_directory(path.parent, create=create)
        except FileNotFoundError as exc:
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), str(path)) from exc
        self._dir_handle = handle
        return handle

    def _write_location(self, *, create: bool = False) -> tuple[CacheDir, str]:
        """Return the directory handle and name to write the ``.dat`` through.

        The ``.dat`` and its temp must not be symlinks leading out of their directory
        (``StoreContainmentError``, raised before anything is written); a ``.dat`` symlink
        resolving inside is followed, so the link itself survives the atomic replacement. Every
        writer of the ``.dat`` asks here first, so this is where the entry announces it (``_leases``):
        once the directory, and so its lock file, can exist, and before the file does, since garbage
        collection elsewhere must never take a fresh ``.dat`` (whose bytes may equal the stored
        pair's) for a stale one.
        """
        path = self._require_cache_path()
        stem = path.name.removesuffix(MEMMAP_SUFFIX)
        linked = is_symlink(path)
        if linked:
            ensure_write_contained(path, path.parent, stem)
        temp = path.with_name(path.name + TMP_SUFFIX)
        if is_symlink(temp):
            ensure_write_contained(temp, path.parent, stem)
        if not linked:
            location = self._directory(create=create), path.name
        else:
            target = Path(os.path.realpath(path))
            try:
                location = open_directory(target.parent), target.name
            except FileNotFoundError as exc:
                raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), str(target)) from exc
        self._announce_backing(self._hold_path())
        return location

    def _allocate_ephemeral(self) -> None:
        """Create this ephemeral entry's private ``.dat`` (0600) in the temp directory."""
        descriptor, name = tempfile.mkstemp(suffix=MEMMAP_SUFFIX)
        os.close(descriptor)
        self._cache_path = Path(name)
        self._take_ownership()
        self._hold_path()
        if self._purge_disk_on_gc:
            self._arm_purge()

    def _take_ownership(self) -> None:
        """Record this process as the creator of the backing file (only it may delete the file)."""
        self._backing_created = True
        self._owner_pid = os.getpid()
        lease = self.__dict__.get("_lease")
        if lease is not None:
            lease.owner_pid = self._owner_pid

    def _require_cache_path(self) -> Path:
        path = self._cache_path
        if path is None:
            raise RuntimeError(f"{type(self).__name__} has no backing file yet")
        return path
