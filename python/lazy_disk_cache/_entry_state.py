"""The private state every ``LazyDiskCache`` holds, declared once, and the doors to it.

``EntryState`` is the root of the entry's class hierarchy: it declares the attributes that
``lazy_disk_cache.LazyDiskCache`` and the parts of it defined in other modules share, so that
each part can hold its own methods while the state stays private to the hierarchy.

The functions below the class (``entry_lock``, ``array_to_write``, ``copyable_file``, ...) are
what the package's own modules (store, codec, purge, dask) may ask of an entry: they are the only
way code outside the hierarchy reaches an entry's private state.
"""

import threading
import weakref
from abc import ABC
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

import numpy as np
from numpy.typing import DTypeLike, NDArray

from lazy_disk_cache._entry_files import npy_beside
from lazy_disk_cache._leases import PathLease, file_identity
from lazy_disk_cache._memmap import mapping_of
from lazy_disk_cache._rust import CacheDir, FileMapping

if TYPE_CHECKING:
    from lazy_disk_cache.lazy_disk_cache import LazyDiskCache

__all__ = [
    "WRITING_MODES",
    "AdoptedPayload",
    "CopyableFile",
    "EntryState",
    "LoadMode",
    "ReadableFile",
    "array_to_write",
    "copyable_file",
    "entry_lock",
    "readable_file",
    "release_purge_duty",
    "shape_and_dtype",
]


LoadMode = Literal["r", "r+", "w+", "c"]
WRITING_MODES: frozenset[str] = frozenset(("r+", "w+"))


class AdoptedPayload(NamedTuple):
    """Where an entry's data lives while it has no ``.dat``: the payload of its sibling ``.npy``.

    A store entry is adopted when it is reloaded, and again when its pair is committed and its
    working ``.dat`` removed (see ``settle_committed_entries``).
    """

    offset: int
    order: Literal["C", "F"]
    readonly: bool


class EntryState(ABC):
    """The attributes of a ``LazyDiskCache``, declared for every class of its hierarchy."""

    _enable_caching: bool
    _automatic_offloading: bool
    _purge_disk_on_gc: bool
    _lock: threading.RLock
    _in_memory: bool
    _mmap: np.memmap[Any, np.dtype[Any]] | None
    _owner_pid: int
    _cache_path: Path | None
    _ephemeral: bool
    _adopted: AdoptedPayload | None
    _backing_created: bool
    _payload_mapping: FileMapping | None
    _dir_handle: CacheDir | None
    _finalizer: "weakref.finalize[Any, Any]"
    _lease: PathLease
    # Whether a store built this entry as its working copy, whether a pickle may open its .dat by
    # name, and the .dat it last wrote. The class defaults also serve entries unpickled from
    # older states.
    _working_copy: bool = False
    _path_exported: bool = False
    _dat_identity: tuple[int, int] | None = None
    # The memory budget: whether the ledger tracks this entry's RAM, the use clock's time of its
    # last access (stamped on every access), and the spill file that holds a spilled entry's data
    # while caching is off. The class defaults also serve entries unpickled from older states.
    _tracked: bool = False
    _used_at: int = -1
    _spill_path: Path | None = None
    _spill_lease: PathLease | None = None

    if TYPE_CHECKING:
        # The steps the parts of the class call in each other, declared here for the type checker
        # only; each is defined once, in the part named above it.
        # LazyDiskCache (lazy_disk_cache): the subclass contract, transitions, writes, purge duty.
        def _describe_buffer(self) -> tuple[tuple[int, ...], DTypeLike, NDArray[Any]]: ...
        def _describe_shape_dtype(self) -> tuple[tuple[int, ...], DTypeLike]: ...
        def _set_buffer(self, buf: NDArray[Any]) -> None: ...
        def offload(self) -> None: ...
        def _spill_to_file(self, live: NDArray[Any]) -> None: ...
        def _convert_to_memmap(self) -> None: ...
        def _write_backing(self, source: NDArray[Any]) -> FileMapping: ...
        def _copy_payload_to_dat(self, adopted: AdoptedPayload, nbytes: int, patch: FileMapping) -> FileMapping: ...
        def _hold_path(self) -> PathLease: ...
        def _announce_backing(self, lease: PathLease) -> None: ...
        def _arm_purge(self, lease: PathLease | None = None) -> None: ...
        # BackingFile (_backing_file)
        def _directory(self, *, create: bool = False) -> CacheDir: ...
        def _require_cache_path(self) -> Path: ...
        def _take_ownership(self) -> None: ...
        # EntryMemory (_entry_memory)
        def _references_to(self, live: object) -> int: ...
        def _report_memory(self) -> None: ...
        # StorePayloadAdoption (_store_payload)
        def _materialise_payload(
            self, adopted: AdoptedPayload, shape: tuple[int, ...], dtype: np.dtype[Any]
        ) -> np.memmap[Any, np.dtype[Any]]: ...
        def _map_payload(
            self, adopted: AdoptedPayload, shape: tuple[int, ...], dtype: np.dtype[Any], mode: LoadMode
        ) -> np.memmap[Any, np.dtype[Any]]: ...


# ---------------------------------------------------------------------------------------------
# What the package's own modules (store, codec, purge) may ask of an entry. Defined beside the
# entry's state, so that no module outside the entry's class hierarchy touches it.


class CopyableFile(NamedTuple):
    """A file that holds an offloaded entry's bytes in C order, starting at ``offset``."""

    path: Path
    offset: int


def entry_lock(entry: "LazyDiskCache") -> threading.RLock:
    """The lock every transition of ``entry`` holds; hold it to see the entry in one state.

    Lock order: a store's lock before any entry's.
    """
    return entry._lock


def shape_and_dtype(entry: "LazyDiskCache") -> tuple[tuple[int, ...], np.dtype[Any]]:
    """The shape (plain ints) and dtype of ``entry``'s data. O(1), reads no data."""
    shape, dtype = entry._describe_shape_dtype()
    return tuple(int(extent) for extent in shape), np.dtype(dtype)


def array_to_write(entry: "LazyDiskCache") -> NDArray[Any]:
    """``entry``'s data for a writer, without changing its state.

    The live buffer when loaded; otherwise a read-only mapping of the file that holds the data.
    O(1), reads no data.
    """
    return entry._source_array()


def copyable_file(entry: "LazyDiskCache") -> CopyableFile | None:
    """The file a writer may copy instead of reading an offloaded ``entry``'s array, or ``None``.

    Normally the ``.dat`` (offset 0), or the spill file of a spilled entry. An entry adopted from
    its store (reloaded, or whose pair was committed) has no ``.dat``: its data is the payload of
    the sibling ``.npy``, as long as that name still holds the very file the entry keeps mapped;
    only C-ordered payloads can be copied. ``None`` while the entry is loaded (its live buffer is
    written instead) or has no file. O(1) but for a ``stat`` of an adopted entry; no data is read.
    """
    with entry._lock:
        if entry._in_memory:
            return None
        if entry._spill_path is not None:
            return CopyableFile(entry._spill_path, 0)
        path = entry._cache_path
        if path is None:
            return None
        adopted = entry._adopted
        if adopted is not None:
            return _copyable_payload(entry, adopted, path)
        return CopyableFile(path, 0)


def _copyable_payload(entry: "LazyDiskCache", adopted: AdoptedPayload, path: Path) -> CopyableFile | None:
    """The adopted payload file of ``entry`` when it may be copied for its data (see ``copyable_file``)."""
    kept = entry._payload_mapping
    if adopted.order != "C" or kept is None:
        return None
    npy = npy_beside(path)
    return CopyableFile(npy, adopted.offset) if file_identity(npy) == kept.identity else None


class ReadableFile(NamedTuple):
    """The file holding an entry's current value, for readers that open it by path."""

    path: Path
    offset: int
    order: Literal["C", "F"]


def readable_file(entry: "LazyDiskCache") -> ReadableFile:
    """The file that holds ``entry``'s current value, read-only by path from any process.

    The ``.dat`` while the entry is offloaded or mapped shared (its writes reach the file); the
    sibling ``.npy`` payload of an entry reloaded from a read-only directory. ``ValueError`` when no
    file holds the value: caching is off (the data is only in RAM), or the live buffer is a private
    copy-on-write mapping (a store reload, or ``load("c")``) whose writes, if any, never reach a
    file; ``offload()`` writes such an entry's ``.dat`` first; or the ``.npy`` an adopted entry keeps
    mapped has been replaced under its name since. O(1): one ``stat`` for an adopted entry; but a
    store entry still waiting in RAM for its file writes its ``.dat`` first (O(n)).
    """
    with entry._lock:
        entry._write_deferred_backing()
        path = entry._cache_path
        name = type(entry).__name__
        if not entry._enable_caching or path is None:
            raise ValueError(
                f"this {name} keeps its data only in RAM (caching is off), so no file holds it; "
                "call enable_caching() first"
            )
        mapped = entry._mmap
        mapping = mapping_of(mapped) if entry._in_memory and mapped is not None else None
        adopted = entry._adopted
        private = mapping is not None and mapping.mode == "c"
        if private:
            raise ValueError(
                f"this {name} is mapped copy-on-write, so writes made through it may exist only in this "
                "process; call offload() first, which writes its .dat"
            )
        if adopted is None:
            return ReadableFile(path, 0, "C")
        npy = npy_beside(path)
        kept = entry._payload_mapping
        if kept is not None and file_identity(npy) != kept.identity:
            raise ValueError(
                f"the {npy.name} this {name} adopted has been replaced since (by a later commit), so no "
                "file by that name holds its value any more; call load('r+'), which writes its own .dat"
            )
        return ReadableFile(npy, adopted.offset, adopted.order)


def release_purge_duty(entry: "LazyDiskCache") -> None:
    """Drop ``entry``'s purge duty: nothing is deleted now, and its collection deletes nothing.

    Another holder of the same path that still carries a duty may still delete the file. Unlike
    ``disable_purge()``, the ``purge_disk_on_gc`` flag is kept, and the entry keeps holding its
    path. Takes the entry's lock.
    """
    with entry._lock:
        entry._disarm_purge()
