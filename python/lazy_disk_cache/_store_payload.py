"""How an entry takes its store's ``<key>.npy`` payload as its data, and gives it back.

A store's entries are working copies: their ``.dat`` is a working file, and the committed pair is
what a restart reads. So an entry a store reloads *adopts* the payload of its ``<key>.npy`` (maps it
read-only or copy-on-write, with no ``.dat``) until it must write its own file; a new working copy
waits in RAM for its ``.dat`` (deferred) until something needs the file; and once the store commits
a pair, the entry drops its working file and adopts the payload just committed
(``settle_committed_entries``). ``StorePayloadAdoption`` is that part of the entry, with the
functions through which a store builds, settles and checks its entries.
"""

import contextvars
import logging
import math
import os
import stat
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

import numpy as np
from numpy.typing import NDArray

from lazy_disk_cache._array_memory import held_elsewhere
from lazy_disk_cache._entry_files import check_cacheable_array, npy_beside
from lazy_disk_cache._entry_state import AdoptedPayload, EntryState, LoadMode
from lazy_disk_cache._leases import PathLease, file_identity
from lazy_disk_cache._memmap import as_memmap, mapping_of
from lazy_disk_cache._payload_layout import layout_of, payload_memmap
from lazy_disk_cache._rust import FileMapping
from lazy_disk_cache.paths import MEMMAP_SUFFIX, NPY_SUFFIX

if TYPE_CHECKING:
    from lazy_disk_cache.lazy_disk_cache import LazyDiskCache

__all__ = [
    "StagedPayload",
    "StoreEntryBuild",
    "StorePayloadAdoption",
    "ram_copy_held_alone",
    "remember_stored_checksum",
    "settle_committed_entries",
    "store_build",
    "stored_checksum",
]

# Records name the module users know the entry by.
logger = logging.getLogger("lazy_disk_cache.lazy_disk_cache")


class StagedPayload(NamedTuple):
    """What a store staged of an entry: where the payload starts in its new ``.npy``, that file's
    checksum and identity (device, inode), and whether the entry's RAM copy may be dropped once the
    pair is committed (``ram_copy_held_alone`` at staging)."""

    offset: int
    checksum: str | None
    identity: tuple[int, int]
    ram_copy_droppable: bool = False


class _StoreBuild(NamedTuple):
    """The entry a store is building right now (``StoreEntryBuild``).

    An entry constructed with exactly this ``cache_path`` is the store's working copy; ``payload``
    is the mapping of its own ``<key>.npy`` the store made for a reload (``None`` for an add).
    """

    cache_path: Path
    payload: FileMapping | None


# The build a store has in progress in this context (``StoreEntryBuild``); ``LazyDiskCache`` reads it
# at construction to know whether it is that store's working copy.
store_build: contextvars.ContextVar[_StoreBuild | None] = contextvars.ContextVar(
    "lazy_disk_cache_store_build", default=None
)


class StorePayloadAdoption(EntryState):
    """An entry's store payload: adopting it, the deferred working copy, and the ``.dat`` written from it."""

    def _adopt_committed_payload(self, staged: StagedPayload) -> None:
        """Adopt the just-committed ``.npy`` payload (see ``settle_committed_entries``)."""
        path = self._cache_path
        adopted = self._adopted
        if path is None or not self._enable_caching:
            return
        if adopted is not None:
            # Its data is the payload it adopted, which it keeps mapped; the new .npy holds the same
            # bytes, but perhaps at another offset or in another order (an .npy the original wrote).
            # An offloaded entry adopts the new file, which readers by name then find; a loaded one
            # keeps its mapping, and readers by name are refused once the name holds another file.
            if not self._in_memory:
                kept = self._committed_payload_mapping(path, staged)
                if kept is not None:
                    self._payload_mapping = kept
                    self._adopted = AdoptedPayload(staged.offset, "C", readonly=adopted.readonly)
            return
        if self._awaits_backing():
            self._adopt_committed_from_ram(path, staged)
            return
        lease: PathLease | None = self.__dict__.get("_lease")
        releasable = self._working_copy and not self._path_exported
        if not releasable or lease is None or not lease.held_alone() or not self._dat_is_own_file(path):
            return
        handle = self._dir_handle or self._directory()
        kept = None
        if not self._in_memory:
            # Offloaded, it will read the payload: map it now, so that a later commit renaming
            # another payload over the name never changes what this entry holds.
            kept = self._committed_payload_mapping(path, staged)
            if kept is None:
                return
        elif file_identity(npy_beside(path)) != staged.identity:
            return  # committed under another name (another store's key): not the payload beside it
        failures = handle.unlink_all([path.name])
        for name, error in failures:
            logger.debug("Could not remove the working file %s in %s: %s", name, path.parent, error)
        if failures:
            return
        self._adopted = AdoptedPayload(staged.offset, "C", readonly=False)
        self._payload_mapping = kept
        # As for a reloaded entry: no file of this entry is at the path any more, so the lease
        # holds it without the right to delete until a materialisation creates one again.
        self._backing_created = False
        lease.owner_pid = None
        logger.debug("%s on %s now reads the committed payload of %s", type(self).__name__, path, npy_beside(path))

    def _adopt_committed_from_ram(self, path: Path, staged: StagedPayload) -> None:
        """Let a deferred working copy map its just-committed payload copy-on-write instead of its RAM array.

        The bytes are the same, and the RAM goes back. Only if nothing outside the entry held the
        array when it was staged (``staged.ram_copy_droppable``; the store holds the entry's lock
        from then to here, so no new reference appears): a write through such a reference, even
        one made during the commit, must keep reaching the entry, which then stays in RAM and
        writes its ``.dat`` when first needed, as before the commit.
        """
        if not staged.ram_copy_droppable:
            return
        mapping = self._committed_payload_mapping(path, staged)
        if mapping is None:
            return
        shape, dtype = self._describe_shape_dtype()
        mapped = as_memmap(mapping, tuple(shape), np.dtype(dtype), filename=str(path))
        self._adopted = AdoptedPayload(staged.offset, "C", readonly=False)
        self._payload_mapping = mapping
        self._mmap = mapped
        self._set_buffer(mapped)
        self._report_memory()

    def _committed_payload_mapping(self, path: Path, staged: StagedPayload) -> FileMapping | None:
        """A copy-on-write mapping of the payload of the ``.npy`` just committed beside ``path``.

        ``None`` when that name no longer holds the committed file (another writer renamed a file
        over it, or purged it, since the commit) or it cannot be mapped: the caller then keeps
        what it had, which is never wrong, only perhaps less economical.
        """
        shape, dtype = self._describe_shape_dtype()
        nbytes = math.prod(shape) * np.dtype(dtype).itemsize
        handle = self._dir_handle or self._directory()
        npy = npy_beside(path)
        try:
            mapping = FileMapping.open(handle, npy.name, mode="c", offset=staged.offset, length=nbytes)
        except (OSError, ValueError) as error:
            logger.debug("Could not map the committed payload of %s: %s", npy, error)
            return None
        return mapping if mapping.identity == staged.identity else None

    def _dat_is_own_file(self, path: Path) -> bool:
        """Whether ``path`` names, unlinked, the very ``.dat`` this entry last wrote (not a link,
        nor a file another writer renamed over the name since)."""
        written = self._dat_identity
        if written is None:
            return False
        try:
            info = os.lstat(path)
        except OSError:
            return False
        return stat.S_ISREG(info.st_mode) and (info.st_dev, info.st_ino) == written

    def _live_buffer_is_the_payload(self) -> bool:
        """Whether an adopted entry's live buffer is still exactly its ``.npy`` payload.

        True when the buffer is the copy-on-write mapping of the payload and no page of it was
        written (the kernel's page map says so; when it cannot tell, it counts as written). Then
        offloading needs no ``.dat``: dropping the buffer loses nothing. O(pages), reads no data.
        """
        mapped = self._mmap
        if mapped is None or self._describe_buffer()[2] is not mapped:
            return False
        mapping = mapping_of(mapped)
        return mapping is not None and mapping.mode == "c" and not mapping.has_private_pages()

    def _defer_working_file(self) -> None:
        """Hold a store's new working copy in a private RAM array; its ``.dat`` comes when first needed.

        The store's commit writes the ``.npy`` from this array, and the entry then adopts that
        payload, so a key written and committed creates only its pair on disk. Anything that needs
        the entry's own file first (``offload()``, a spill, a pickle, a shallow copy, a reader by
        path) writes the ``.dat`` then, through ``_convert_to_memmap``. 1 copy, in RAM.
        """
        source = self._describe_buffer()[2]
        check_cacheable_array(source)
        self._set_buffer(np.array(source, copy=True))
        self._mmap = None

    def _ram_copy_held_alone(self) -> bool:
        """Whether this is a deferred working copy whose (non-empty) array nothing outside the entry references."""
        if not self._awaits_backing():
            return False
        live = self._describe_buffer()[2]
        return live.nbytes > 0 and not held_elsewhere(live, self._references_to(live) + 1)  # + 1: `live`

    def _awaits_backing(self) -> bool:
        """Whether the data is a deferred working copy in RAM, with no ``.dat`` written yet."""
        return self._enable_caching and self._in_memory and self._mmap is None

    def _write_deferred_backing(self) -> None:
        """Write a deferred working copy's ``.dat`` now and map it (RAM → MAPPED); else nothing."""
        if self._awaits_backing():
            self._convert_to_memmap()

    def _write_adopted_backing(self, source: NDArray[Any]) -> FileMapping | None:
        """Write an adopted entry's ``.dat`` from its payload file, patched with its written pages.

        For a live buffer that is the copy-on-write mapping of a C-ordered payload: the pages
        never written are copied from the ``.npy`` inside the kernel (reflinked where the file
        system can), the written ones from the mapping. ``None`` when that does not apply (the
        caller then writes from the buffer). Returns the ``r+`` mapping of the new ``.dat``.
        """
        adopted = self._adopted
        if adopted is None or adopted.order != "C" or source is not self._mmap:
            return None
        mapping = mapping_of(source)
        if mapping is None:
            return None
        if mapping.mode != "c" or source.nbytes == 0 or source.nbytes != mapping.length:
            return None
        return self._copy_payload_to_dat(adopted, source.nbytes, mapping)

    def _materialise_payload(
        self, adopted: AdoptedPayload, shape: tuple[int, ...], dtype: np.dtype[Any]
    ) -> np.memmap[Any, np.dtype[Any]]:
        """Write an offloaded adopted entry's ``.dat`` from its payload and map it ``r+`` (``load("r+")``).

        A read-write load asks for the entry's own file, shared: the payload is copied into a fresh
        ``.dat`` inside the kernel (reflinked where the file system can; pages written through views
        of the payload mapping the entry keeps come from memory), and the entry is adopted no more.
        """
        path = self._require_cache_path()
        kept = self._payload_mapping
        nbytes = math.prod(shape) * dtype.itemsize
        if nbytes == 0 or adopted.order != "C" or kept is None:
            # Without a kept mapping (a copy revived from a pickle) the payload is found by name, and
            # _map_payload checks that the file there still holds this array, wherever its data starts.
            mapping = self._write_backing(np.asarray(self._map_payload(adopted, shape, dtype, "r")))
        else:
            mapping = self._copy_payload_to_dat(adopted, nbytes, kept)
        self._adopted = None
        self._payload_mapping = None
        self._dat_identity = mapping.identity
        if not self._backing_created:
            self._take_ownership()
        return as_memmap(mapping, shape, dtype, filename=str(path))

    def _map_payload(
        self, adopted: AdoptedPayload, shape: tuple[int, ...], dtype: np.dtype[Any], mode: LoadMode
    ) -> np.memmap[Any, np.dtype[Any]]:
        """Map the adopted payload in ``mode`` (not ``w+``): the mapping the entry keeps, else ``<stem>.npy``.

        The committed payload is never mapped shared-writable (that would change the stored value
        without a commit): ``c`` maps it copy-on-write, and a written page makes the next offload
        materialise the ``.dat`` (``load("r+")`` materialises it at once instead, in the caller). The
        kept mapping is the very file the entry adopted, whatever has been renamed over its name since;
        without one (a copy revived from a pickle), the ``.npy`` is mapped by name, laid out as its
        header now says. O(1), reads no data.
        """
        path = self._require_cache_path()
        kept = self._payload_mapping
        # A read-only payload mapping (a read-only directory) serves only read-only loads.
        if kept is not None and (kept.mode == "c" or mode == "r"):
            mapped = as_memmap(kept, shape, dtype, adopted.order, filename=str(path))
            if mode == "r" and not mapped.flags.writeable:
                return mapped
            if mode == "r":
                mapped.flags.writeable = False
                mapped.mode = "r"
            return mapped
        npy = npy_beside(path)
        handle = self._dir_handle or self._directory()
        header, mapping = handle.read_npy(npy.name, map_mode="r" if mode == "r" else "c")
        try:
            layout = layout_of(header, npy)
        except ValueError:
            layout = None
        if layout is None or layout.shape != shape or layout.dtype != dtype or mapping is None:
            raise ValueError(
                f"{str(npy)!r} no longer holds the array of shape {shape} and dtype {dtype} "
                "this entry was reloaded with"
            )
        mapped = payload_memmap(handle, npy, mapping, layout)
        mapped.filename = str(path)
        self._adopted = AdoptedPayload(layout.offset, layout.order, adopted.readonly)
        return mapped

    def _adopt_reloaded(self, payload: FileMapping) -> bool:
        """Adopt ``payload``, a reloading store's own mapping of this entry's ``.npy``, as the MAPPED buffer.

        Only when the live buffer is exactly that mapping (checked as ``_adopt_payload`` does); returns
        whether it did, and if not, the entry converts as any other. O(1), no system call.
        """
        shape, dtype = self._describe_shape_dtype()
        dtype = np.dtype(dtype)
        if dtype.hasobject:
            return False
        source = self._describe_buffer()[2]
        if mapping_of(source) is not payload:
            return False
        return self._adopt_payload(source, tuple(shape), dtype, trusted=True)

    def _adopt_payload(
        self, source: object, shape: tuple[int, ...], dtype: np.dtype[Any], *, trusted: bool = False
    ) -> bool:
        """Adopt a store-reloaded private/read-only mapping of ``<stem>.npy`` as the MAPPED buffer.

        Returns whether it did. The ``.dat`` is then materialised lazily, at the first offload.
        ``trusted``: the reloading store made this very mapping of this entry's ``.npy``, so where
        it lies needs no check.
        """
        mapping = mapping_of(source)
        path = self._cache_path
        if mapping is None or path is None or mapping.mode not in ("c", "r") or not isinstance(source, np.ndarray):
            return False
        layout_ok = source.flags.c_contiguous or source.flags.f_contiguous
        if not layout_ok or source.nbytes != mapping.length or source.shape != shape or source.dtype != dtype:
            return False
        mapped_path = mapping.path
        if os.path.basename(mapped_path) != path.name.removesuffix(MEMMAP_SUFFIX) + NPY_SUFFIX:
            return False
        if not trusted:
            try:
                if not os.path.samefile(os.path.dirname(mapped_path), path.parent):
                    return False
            except OSError:
                return False
        order: Literal["C", "F"] = "C" if source.flags.c_contiguous else "F"
        buffer = source if isinstance(source, np.memmap) else as_memmap(mapping, shape, dtype, order)
        self._adopted = AdoptedPayload(offset=mapping.offset, order=order, readonly=mapping.mode == "r")
        self._payload_mapping = mapping
        self._mmap = buffer
        self._set_buffer(buffer)
        self._in_memory = True
        logger.debug("%s on %s adopted the payload of %s", type(self).__name__, path, mapped_path)
        return True


class StoreEntryBuild:
    """Mark the entry constructed inside the block with ``cache_path`` as a store's working copy.

    A store wraps its factory call (``add_data_to_store``) and its reload construction in this,
    with the ``<key>.npy`` path it passes as ``cache_path``: the entry's ``.dat`` is then a working
    file, written without fsyncs, since the store's committed pair is what a restart reads (see
    ``LazyDiskCache._backing_is_durable``). A reload passes the mapping it made of that ``.npy``'s
    payload, which the entry may then adopt without checking where it lies. Other entries built
    inside, with other paths, are unaffected. (A class rather than a generator: it wraps every
    reload.)
    """

    __slots__ = ("_build", "_token")

    def __init__(self, cache_path: Path, payload: FileMapping | None = None) -> None:
        self._build = _StoreBuild(cache_path, payload)
        self._token: contextvars.Token[_StoreBuild | None] | None = None

    def __enter__(self) -> None:
        self._token = store_build.set(self._build)

    def __exit__(self, kind: object, exc: object, traceback: object) -> None:
        if self._token is not None:
            store_build.reset(self._token)
            self._token = None


def settle_committed_entries(committed: Sequence[tuple["LazyDiskCache", StagedPayload]]) -> None:
    """Release the working files of entries whose pairs a store just committed and dropped.

    ``committed`` holds each entry with what its store staged for it. A store's working copy needs
    no file of its own any more: the committed ``.npy`` holds the same bytes.

    * A working copy still in RAM (its ``.dat`` deferred) maps that payload copy-on-write instead
      of its array, which goes back, unless something outside the entry holds the array.
    * A working copy whose data sits in its ``.dat``: the ``.dat`` is unlinked (unless another live
      object in this process holds the same path, or a pickle of the entry may open it by name
      elsewhere) and the entry becomes adopted by the ``.npy``, as if reloaded: its live buffer,
      if any, stays its mapping (of the now nameless file), so writes through views handed out
      earlier are kept and its next offload materialises a new ``.dat`` from it; offloaded, it
      maps the payload copy-on-write.
    * An entry that was already adopted follows its payload into the new ``.npy``.

    Nothing adopts a ``.npy`` that another writer renamed over or purged since the commit (its
    file identity tells): such an entry keeps what it had. Blocks on disk: one unlink per released
    file, one mapping per adopted payload. Failures to unlink are logged and keep the file.
    """
    for entry, staged in committed:
        with entry._lock:
            entry._adopt_committed_payload(staged)
            remember_stored_checksum(entry, staged.checksum)


def ram_copy_held_alone(entry: "LazyDiskCache") -> bool:
    """Whether ``entry`` is a deferred working copy whose array nothing outside it references.

    A store asks this when it stages the entry, under the entry's lock, which it then holds until
    the commit is settled: only then may the settle drop that array for the committed payload.
    """
    with entry._lock:
        return entry._ram_copy_held_alone()


def remember_stored_checksum(entry: "LazyDiskCache", checksum: str | None) -> None:
    """Record the checksum of the stored ``.npy`` a reloaded ``entry`` maps (its sidecar's)."""
    with entry._lock:
        entry.__dict__["_stored_checksum"] = checksum


def stored_checksum(entry: "LazyDiskCache") -> str | None:
    """The recorded checksum of the ``.npy`` whose payload ``entry`` still maps, else ``None``.

    Set when a store reloads the entry or commits its pair; meaningless (``None``) once the entry
    wrote its own ``.dat``. O(1), no I/O.
    """
    with entry._lock:
        if entry._adopted is None:
            return None
        checksum: str | None = entry.__dict__.get("_stored_checksum")
        return checksum
