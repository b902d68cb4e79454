"""The ``LazyDiskCache`` base class: one value that lives in RAM or on disk.

An entry is in one of three states. RAM: a plain in-memory buffer, nothing on disk. MAPPED: the
live buffer is a writable ``np.memmap`` of the entry's ``.dat`` file. OFFLOADED: the buffer is
dropped and the data lives only in the ``.dat``. A store's entry may also be mapped from its
stored ``.npy`` payload, or, just added, wait in RAM with caching on until its ``.dat`` is first
needed (``_store_payload``). Every transition and every buffer access holds
the entry's ``RLock``. All file bytes move through the native core (``lazy_disk_cache._rust``);
this module decides what to write, where, and when, and how large a piece one write may hold
(``chunk_budget_bytes``).

The memory budget (``_budget``) may *spill* an entry that holds anonymous RAM, through
``spill()``: an entry with caching is offloaded as by ``offload()``; an entry without caching is
written to the private spill directory (``_spill_dir``) and is then OFFLOADED with that spill file
standing in for its ``.dat`` (MAPPED on it after its next load) until the entry goes or enables
caching. Entries report the RAM they hold to the budget's ledger at every transition.

The class is built from parts, each in its own module, which share the state ``_entry_state``
declares: how an entry adopts its store's ``.npy`` payload and defers a working copy's ``.dat``
(``_store_payload``), its share of the memory budget (``_entry_memory``), and how it locates, maps
and owns its ``.dat`` (``_backing_file``). This module keeps the state machine: construction, the
subclass contract, the transitions and the writes they make, purge duty, pickling and copies.

The package's own modules reach an entry's private state only through functions defined beside it
(``entry_lock``, ``array_to_write``, ``copyable_file``, ... in ``_entry_state``;
``settle_committed_entries``, ``stored_checksum``, ... in ``_store_payload``). Besides the public
API (``__all__``), this module exports them all (the ``name as name`` imports).
"""

import copy
import functools
import logging
import math
import os
import threading
import time
from abc import abstractmethod
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any, ClassVar, Concatenate, ParamSpec, Self, TypeVar

import numpy as np
from numpy.typing import DTypeLike, NDArray
from typing_extensions import Unpack

from lazy_disk_cache import _budget
from lazy_disk_cache._backing_file import BackingFile
from lazy_disk_cache._budget import use_clock
from lazy_disk_cache._buffers import byte_view
from lazy_disk_cache._entry_files import check_cacheable_array as check_cacheable_array
from lazy_disk_cache._entry_files import check_cacheable_dtype as check_cacheable_dtype
from lazy_disk_cache._entry_files import dat_length, entry_dat_path, is_symlink, npy_beside
from lazy_disk_cache._entry_memory import EntryMemory
from lazy_disk_cache._entry_state import AdoptedPayload
from lazy_disk_cache._entry_state import CopyableFile as CopyableFile
from lazy_disk_cache._entry_state import LoadMode as LoadMode
from lazy_disk_cache._entry_state import ReadableFile as ReadableFile
from lazy_disk_cache._entry_state import array_to_write as array_to_write
from lazy_disk_cache._entry_state import copyable_file as copyable_file
from lazy_disk_cache._entry_state import entry_lock as entry_lock
from lazy_disk_cache._entry_state import readable_file as readable_file
from lazy_disk_cache._entry_state import release_purge_duty as release_purge_duty
from lazy_disk_cache._entry_state import shape_and_dtype as shape_and_dtype
from lazy_disk_cache._leases import PathLease, lease_backing_file
from lazy_disk_cache._memmap import as_memmap, mapping_of
from lazy_disk_cache._progress import ProgressCallback, current_chunk_progress, reporting
from lazy_disk_cache._rust import FileMapping
from lazy_disk_cache._spill_dir import new_spill_file
from lazy_disk_cache._store_payload import StagedPayload as StagedPayload
from lazy_disk_cache._store_payload import StoreEntryBuild as StoreEntryBuild
from lazy_disk_cache._store_payload import StorePayloadAdoption, store_build
from lazy_disk_cache._store_payload import remember_stored_checksum as remember_stored_checksum
from lazy_disk_cache._store_payload import settle_committed_entries as settle_committed_entries
from lazy_disk_cache._store_payload import stored_checksum as stored_checksum
from lazy_disk_cache.config import LazyDiskCacheConfig, LazyDiskCacheKw, refuse_unknown_settings
from lazy_disk_cache.paths import MEMMAP_SUFFIX

psutil: ModuleType | None
try:
    import psutil
except ImportError:  # psutil is optional at import time; the budget then uses the fallback.
    psutil = None

__all__ = ["LazyDiskCache", "LazyDiskCacheConfig", "LazyDiskCacheKw"]

logger = logging.getLogger(__name__)

# The budget when psutil is missing or its query fails. Callers monkeypatch this name (and
# ``psutil``), so both are read at call time.
_MEMMAP_FALLBACK_CHUNK_BYTES = 64 * 1024**2
# Share of the currently available memory one conversion may use as its write budget.
_BUDGET_FRACTION = 0.10
# psutil reads /proc/meminfo; a figure younger than this is reused for back-to-back conversions.
_BUDGET_MAX_AGE_SECONDS = 1.0

_LOAD_MODES: frozenset[str] = frozenset(("r", "r+", "w+", "c"))

_P = ParamSpec("_P")
_R = TypeVar("_R")
_EntryT = TypeVar("_EntryT", bound="LazyDiskCache")


# ---------------------------------------------------------------------------------------------
# Chunk budget


_budget_cache: tuple[object, object, float, int] | None = None


def chunk_budget_bytes() -> int:
    """Return the write budget of one operation: 10 % of available memory, or the fallback.

    The one place the number is decided; conversions and store commits hand it to the core.
    Reads the module globals ``psutil`` and ``_MEMMAP_FALLBACK_CHUNK_BYTES`` at call time. The
    psutil figure is reused for up to a second while ``psutil`` (and its ``virtual_memory``) is the
    same object, so a monkeypatched replacement is queried at once.
    """
    global _budget_cache
    module = psutil
    if module is None:
        return _MEMMAP_FALLBACK_CHUNK_BYTES
    query = getattr(module, "virtual_memory", None)
    now = time.monotonic()
    cached = _budget_cache
    if cached is not None and cached[0] is module and cached[1] is query and now - cached[2] < _BUDGET_MAX_AGE_SECONDS:
        return cached[3]
    try:
        budget = int(module.virtual_memory().available * _BUDGET_FRACTION)
    except Exception:
        logger.debug("psutil.virtual_memory() failed; using the fallback chunk budget", exc_info=True)
        return _MEMMAP_FALLBACK_CHUNK_BYTES
    _budget_cache = (module, query, now, budget)
    return budget


# ---------------------------------------------------------------------------------------------
# The base class


class LazyDiskCache(StorePayloadAdoption, EntryMemory, BackingFile):
    """Abstract base of values that can move between RAM and a memory-mapped ``.dat`` file.

    Subclasses supply the live buffer through ``_describe_buffer``, ``_describe_shape_dtype``,
    ``_drop_buffer`` and ``_set_buffer``; this class runs the RAM / MAPPED / OFFLOADED state
    machine under ``self._lock``, the purge-on-GC duty and the pickle protocol. Construction
    validates ``settings`` like ``LazyDiskCacheConfig`` (``pydantic.ValidationError`` for a bad
    value, ``TypeError`` naming the closest setting for an unknown keyword).
    """

    _MEMMAP_SUFFIX: ClassVar[str] = MEMMAP_SUFFIX

    def __init__(self, **settings: Unpack[LazyDiskCacheKw]) -> None:
        refuse_unknown_settings(settings, f"{type(self).__name__}()")
        self._init_from_config(LazyDiskCacheConfig(**settings))

    def _init_from_config(self, config: LazyDiskCacheConfig) -> None:
        """Set up state from ``config``; convert (caching on), offload (auto) and arm purge duty."""
        self._enable_caching = config.enable_caching
        self._automatic_offloading = config.automatic_offloading
        self._purge_disk_on_gc = config.purge_disk_on_gc
        self._lock = threading.RLock()
        self._in_memory = True
        self._mmap = None
        self._owner_pid = os.getpid()
        self._adopted = None
        self._payload_mapping = None
        self._backing_created = False
        self._dir_handle = None
        self._ephemeral = config.cache_path is None
        build = store_build.get()
        # Compared as text: on POSIX that is what Path equality means, without its per-call cost
        # (and a store's own reload passes the very Path it holds).
        self._working_copy = (
            build is not None
            and config.cache_path is not None
            and (config.cache_path is build.cache_path or os.fspath(config.cache_path) == os.fspath(build.cache_path))
        )
        # A store reload passes the mapping it made of this entry's own .npy.
        payload = build.payload if self._working_copy and build is not None else None
        self._cache_path = (
            None
            if config.cache_path is None
            else entry_dat_path(config.cache_path, given_is_a_file=payload is not None)
        )
        if self._enable_caching and not (payload is not None and self._adopt_reloaded(payload)):
            check_cacheable_dtype(self._describe_shape_dtype()[1])
            if self._working_copy and payload is None and self._may_defer_working_file():
                self._defer_working_file()
            else:
                self._convert_to_memmap()
        if self._automatic_offloading:
            self.offload()
        if self._cache_path is not None:
            lease = self._hold_path()
            if self._purge_disk_on_gc:
                self._arm_purge(lease)
        self._report_memory()
        _budget.ledger.check()

    # -- subclass contract ---------------------------------------------------------------------

    @abstractmethod
    def _describe_buffer(self) -> tuple[tuple[int, ...], DTypeLike, NDArray[Any]]:
        """Return ``(shape, dtype, live_array)``; never called while offloaded."""

    @abstractmethod
    def _describe_shape_dtype(self) -> tuple[tuple[int, ...], DTypeLike]:
        """Return ``(shape, dtype)`` without materialising any data."""

    @abstractmethod
    def _drop_buffer(self) -> None:
        """Forget the live buffer."""

    @abstractmethod
    def _set_buffer(self, buf: NDArray[Any]) -> None:
        """Adopt ``buf`` as the live buffer."""

    def on_offload(self) -> None:  # an optional hook, deliberately a no-op by default
        """Run after an offload; subclasses may release extra resources. Errors are logged."""

    def on_load(self) -> None:  # an optional hook, deliberately a no-op by default
        """Run after a load; subclasses may rebuild extra state. Errors are logged."""

    def __repr__(self) -> str:
        """Class, shape, dtype, state and file, e.g. ``<DiskBackedNDArray shape=(3, 4) dtype=int64 in RAM>``.

        O(1): never loads, reads no file and takes no lock (a concurrent transition may show either
        side of it), so it is safe in debuggers, logs and tracebacks, even on a half-built entry.
        """
        name = type(self).__name__
        try:
            shape, dtype = self._describe_shape_dtype()
            described = f"shape={tuple(shape)} dtype={np.dtype(dtype)}"
        except AttributeError:
            return f"<{name} (not initialised)>"
        return f"<{name} {described} {self._describe_state()}>"

    def _log_name(self) -> str:
        """How log records name this entry: its ``.dat`` path (which holds a store entry's key)."""
        path = self.__dict__.get("_cache_path")
        return "<entry in RAM without a file>" if path is None else str(path)

    def _describe_state(self) -> str:
        """``in RAM``, ``mapped on <file>``, ``offloaded to <file>`` (or the payload a reload maps).

        A spilled entry without caching is ``spilled to <spill file>``, then ``mapped on`` it.
        """
        state = self.__dict__
        path = state.get("_cache_path")
        if not state.get("_enable_caching", False):
            spilled = state.get("_spill_path")
            if spilled is None:
                return "in RAM"
            return f"{'mapped on' if state.get('_in_memory', True) else 'spilled to'} {str(spilled)!r}"
        if path is None:
            return "with no file yet"
        if not state.get("_in_memory", True):
            return f"offloaded to {str(path)!r}"
        adopted: AdoptedPayload | None = state.get("_adopted")
        if adopted is None and state.get("_mmap") is None:
            return f"in RAM, no {str(path)!r} written yet"
        if adopted is None:
            return f"mapped on {str(path)!r}"
        mapping = mapping_of(state.get("_mmap"))
        if mapping is not None and mapping.mode == "r+":
            return f"mapped on its released working file, stored in {str(npy_beside(path))!r}"
        how = "read-only" if adopted.readonly else "copy-on-write"
        return f"mapped {how} from {str(npy_beside(path))!r}"

    # -- properties ----------------------------------------------------------------------------

    @property
    def offloaded(self) -> bool:
        """Whether the data currently lives only on disk."""
        return not self._in_memory

    @property
    def cache_enabled(self) -> bool:
        """Whether the entry is backed by its ``.dat`` file (MAPPED or OFFLOADED).

        A spilled entry without caching still reports ``False``: its spill file is private
        and temporary, not a cache file.
        """
        return self._enable_caching

    @property
    def spilled(self) -> bool:
        """Whether the memory budget moved this entry's data (caching off) to a private spill file.

        It stays ``True`` while the data lives there: ``offloaded`` until the next access, then
        mapped from the spill file. ``enable_caching()`` moves the data to the ``.dat`` and ends it.
        """
        return self._spill_path is not None

    @property
    def cache_path(self) -> Path | None:
        """The ``.dat`` path, or ``None`` for an ephemeral entry whose file does not exist yet."""
        return self._cache_path

    @cache_path.setter
    def cache_path(self, value: object) -> None:
        path = self._cache_path
        entry = type(self).__name__ if path is None else f"{type(self).__name__} entry at {str(path)!r}"
        raise AttributeError(
            f"Cannot reassign cache_path on the {entry}: the attempted path was {value!r}; an entry's cache "
            "path is fixed at construction — create the entry through DiskBackedStore (which derives the "
            "path from the validated store key), or pass cache_path= to the constructor."
        )

    @property
    def purge_disk_on_gc(self) -> bool:
        """Whether the ``.dat`` is deleted when the entry is collected (read-only)."""
        return self._purge_disk_on_gc

    @property
    def ephemeral(self) -> bool:
        """Whether the entry was built without ``cache_path`` and uses a private temporary file."""
        return self._ephemeral

    @property
    def automatic_offloading(self) -> bool:
        """Whether accesses that had to load offload again afterwards."""
        return self._automatic_offloading

    @automatic_offloading.setter
    def automatic_offloading(self, value: bool) -> None:
        if not isinstance(value, bool):
            raise TypeError(f"automatic_offloading must be a bool; got {type(value)}")
        self._automatic_offloading = value

    # -- transitions ---------------------------------------------------------------------------

    def enable_caching(self, *, progress: ProgressCallback | None = None) -> None:
        """RAM → MAPPED: write the buffer to a fresh ``.dat`` and map it (then offload if automatic).

        1 copy, GIL released. Object dtypes raise ``TypeError`` before anything is written; an I/O
        failure raises ``OSError`` and leaves the entry in RAM and any previous ``.dat`` intact.
        ``progress(done_bytes, total_bytes)``, if given, is called from this thread at most about
        ten times a second while the bytes are written, and once when the conversion is complete; an
        exception it raises stops the conversion like an I/O failure (the temp is removed, the entry
        stays in RAM) and propagates. A conversion at construction (``enable_caching=True``) reports
        no progress: the constructor's settings are the fixed ``LazyDiskCacheKw``.
        """
        with self._lock:
            if self._enable_caching:
                return
            shape, dtype = self._describe_shape_dtype()
            check_cacheable_dtype(dtype)
            self._enable_caching = True
            try:
                with reporting(progress, math.prod(shape) * np.dtype(dtype).itemsize):
                    self._convert_to_memmap()
            except BaseException:
                self._enable_caching = False
                raise
            if self._automatic_offloading:
                self.offload()
            self._report_memory()

    def disable_caching(self) -> None:
        """MAPPED/OFFLOADED → RAM: copy the data into a fresh array (1 copy). The ``.dat`` stays."""
        with self._lock:
            if not self._enable_caching:
                return
            if not self._in_memory:
                self.load(self._reload_mode())
            self._convert_to_ndarray()
            self._enable_caching = False
            self._report_memory()
        _budget.ledger.check()

    def offload(self) -> None:
        """MAPPED → OFFLOADED: flush the mapping (msync, durable ``.dat`` only) and drop the buffer.

        0 copies. Arrays and views handed out earlier stay valid. A no-op (logged) in RAM or when
        already offloaded. An entry adopted by its store payload (reloaded, or whose pair was
        committed) whose buffer is still exactly that payload just drops its copy-on-write mapping,
        O(1), and keeps the payload mapped for its next load. Once a page of it was written, the
        offload writes the ``.dat``: the written pages from memory, the rest copied from the payload
        inside the kernel (reflinked where the file system can); if that fails the ``OSError``
        propagates and the entry keeps its buffer.
        """
        with self._lock:
            if not self._enable_caching:
                logger.info(
                    "Caching disabled ==> %s.`offload()` ignored for %s.", type(self).__name__, self._log_name()
                )
                return
            if not self._in_memory:
                logger.info("%s: %s already offloaded to %s.", type(self).__name__, self._log_name(), self._cache_path)
                return
            adopted = self._adopted
            if self._mmap is None or (
                adopted is not None and not adopted.readonly and not self._live_buffer_is_the_payload()
            ):
                self._convert_to_memmap()
            mapped = self._mmap
            _, _, live = self._describe_buffer()
            if mapped is not None and self._adopted is None:
                if live is not mapped:
                    mapped[...] = live
                mapping = mapping_of(mapped)
                # msync(MS_SYNC) writes back every dirty page of the file, including all the pages a
                # fresh conversion just wrote: as costly as an fsync. The shared page cache already
                # makes the data visible to every later load, so only a durable .dat pays for it.
                if mapping is not None and self._backing_is_durable():
                    mapping.flush()
            self._drop_buffer()
            self._mmap = None
            self._in_memory = False
            self._forget_memory()
            self._run_hook(self.on_offload, "Error in on_offload hook")

    def load(self, mode: LoadMode = "r+") -> None:
        """OFFLOADED → MAPPED: map the ``.dat`` in ``mode``. O(1), reads no data.

        ``r`` read-only, ``r+`` read-write, ``c`` copy-on-write, ``w+`` zero-filled read-write.
        A no-op unless offloaded; a spilled entry maps its spill file instead. An entry adopted by
        its store payload (reloaded, or whose pair was committed, and with no ``.dat``) maps that
        payload for ``r`` and ``c``; ``r+`` first writes its ``.dat`` from the payload (copied in
        the kernel, reflinked where the file system can: O(n) without a user-space copy) and maps
        that shared. A missing file raises ``FileNotFoundError``, a short one ``ValueError``, an
        unknown mode ``ValueError``; ``r+``/``w+`` on a ``.dat`` symlink that resolves outside its
        directory raise ``StoreContainmentError``.
        """
        if mode not in _LOAD_MODES:
            raise ValueError(f"load mode must be one of 'r', 'r+', 'w+' or 'c'; got {mode!r}")
        with self._lock:
            if self._in_memory:
                return
            if self._spill_path is not None:
                mapped = self._map_spill(mode)
            elif self._cache_path is None:
                return
            else:
                mapped = self._map_backing(mode)
            self._mmap = mapped
            self._set_buffer(mapped)
            self._in_memory = True
            self._run_hook(self.on_load, "Error in on_load hook")

    @staticmethod
    def ensure_loaded(func: Callable[Concatenate[_EntryT, _P], _R]) -> Callable[Concatenate[_EntryT, _P], _R]:
        """Decorate a method so it runs loaded, under the lock.

        If the entry was offloaded on entry and ``automatic_offloading`` is on, it is offloaded
        again afterwards, also when the call raised.
        """

        @functools.wraps(func)
        def wrapper(self: _EntryT, /, *args: _P.args, **kwargs: _P.kwargs) -> _R:
            with self._lock:
                self._used_at = use_clock.now
                was_offloaded = not self._in_memory
                if was_offloaded:
                    self.load(self._reload_mode())
                try:
                    return func(self, *args, **kwargs)
                finally:
                    if was_offloaded and self._automatic_offloading:
                        self.offload()

        return wrapper

    # -- purge duty ----------------------------------------------------------------------------

    def disable_purge(self) -> None:
        """Stop deleting the ``.dat`` at GC: detach the finalizer (nothing is deleted now)."""
        with self._lock:
            self._disarm_purge()
            self._purge_disk_on_gc = False

    def enable_purge(self) -> None:
        """Delete the ``.dat`` when this entry is collected or the interpreter exits.

        Only the process that created the file deletes it, and only when the last live object on
        that path in that process goes (copies hold it too). For an ephemeral entry without a file
        yet, duty is armed at allocation.
        """
        with self._lock:
            if not self._cache_path:
                self._purge_disk_on_gc = True
                return
            finalizer = self.__dict__.get("_finalizer")
            if finalizer is None or not finalizer.alive:
                self._arm_purge()
            self._purge_disk_on_gc = True

    def _hold_path(self) -> PathLease:
        """Hold this entry's ``.dat`` path for as long as the entry lives (armed or not); return the lease.

        While any live object in this process holds the path, nothing deletes the file; while the
        entry's data lives in its ``.dat``, garbage collection in other processes leaves it alone too.
        """
        lease: PathLease | None = self.__dict__.get("_lease")
        if lease is None:
            # A store entry that has not written its ``.dat`` yet (reloaded, or a deferred working
            # copy) did not create whatever file sits at that path (another process, or an earlier run
            # of this program, did): it holds the path without the right to delete until
            # ``_take_ownership`` records it as the creator.
            unwritten = not self._backing_created and (self._adopted is not None or self._awaits_backing())
            lease = lease_backing_file(self, str(self._cache_path), None if unwritten else self._owner_pid)
            self._lease = lease
        if self._enable_caching and self._adopted is None and not self._awaits_backing():
            self._announce_backing(lease)
        return lease

    def _announce_backing(self, lease: PathLease) -> None:
        """Keep this entry's ``.dat`` announced to garbage collection in other processes (``_leases``).

        Only a ``.dat`` in a cache directory is announced: an ephemeral one lives in the temp
        directory, which no collection visits. Costs an ``fcntl`` once per path and process.
        """
        if not self._ephemeral:
            lease.announce()

    def _arm_purge(self, lease: PathLease | None = None) -> None:
        """Arm purge duty unless a live finalizer already holds it (``lease``: the one ``_hold_path`` just returned)."""
        finalizer = self.__dict__.get("_finalizer")
        if finalizer is not None and finalizer.alive:
            return
        self._finalizer = (lease or self._hold_path()).arm()

    def _disarm_purge(self) -> None:
        """Release purge duty without deleting anything and without touching ``purge_disk_on_gc``.

        The entry keeps holding its path. This is how a store detaches an entry's finalizer (call it
        under ``self._lock``).
        """
        self.__dict__.pop("_finalizer", None)
        lease: PathLease | None = self.__dict__.get("_lease")
        if lease is not None:
            lease.disarm()

    # -- the memory budget -----------------------------------------------------------------------
    # What the budget sees of an entry, and whether it may spill, is in ``_entry_memory``; the spill
    # itself is a transition, written within the chunk budget.

    def _spill_to_file(self, live: NDArray[Any]) -> None:
        """Write ``live`` to a fresh spill file and drop it: RAM -> OFFLOADED on the spill file."""
        directory, path = new_spill_file()
        directory.write_file(path.name, byte_view(live), chunk_bytes=chunk_budget_bytes(), durable=False)
        self._hold_spill(path)
        self._drop_buffer()
        self._mmap = None
        self._in_memory = False
        self._forget_memory()
        logger.debug("Spilled %s %s to %s (%d bytes)", type(self).__name__, self._log_name(), path, live.nbytes)
        self._run_hook(self.on_offload, "Error in on_offload hook")

    # -- conversion ----------------------------------------------------------------------------
    # Every write below is sized by ``chunk_budget_bytes``, which reads this module's globals at
    # call time, so the writes stay here; how the ``.dat`` is located and mapped is in
    # ``_backing_file``, the rest of the store payload's handling in ``_store_payload``.

    def _may_defer_working_file(self) -> bool:
        """Whether a store's new working copy may wait in RAM for its ``.dat`` (``_defer_working_file``).

        Not with ``automatic_offloading``, which writes the file at once anyway. Only with the
        memory budget on, which can give the RAM back by writing the file. And only while it is
        cheap to hold: the RAM that entries report, this copy included, stays within one chunk of
        the write budget (10 % of available memory, a conversion's own bound on the RAM it takes),
        and within the budget's headroom, so that holding it never makes the budget spill.
        Otherwise the ``.dat`` is written at once, as for any entry.
        """
        ledger = _budget.ledger
        if self._automatic_offloading or not ledger.settings.enabled:
            return False
        shape, dtype = self._describe_shape_dtype()
        nbytes = math.prod(shape) * np.dtype(dtype).itemsize
        return nbytes + ledger.managed_bytes <= chunk_budget_bytes() and ledger.has_room_for(nbytes)

    def _convert_to_memmap(self) -> None:
        """Write the data to a fresh, atomically committed ``.dat`` and adopt its mapping (→ MAPPED).

        1 copy, GIL released, extra RAM bounded by one chunk. On failure the temp is removed, the
        entry and any previous ``.dat`` are unchanged and ``OSError`` (errno, filename) propagates.
        A store-reloaded source mapping this entry's sibling ``.npy`` is adopted without copying.
        """
        with self._lock:
            shape, dtype = self._describe_shape_dtype()
            source = self._source_array()
            shape = tuple(shape)
            dtype = np.dtype(dtype)
            check_cacheable_dtype(dtype)
            check_cacheable_array(source)
            if self._in_memory and self._adopted is None and self._adopt_payload(source, shape, dtype):
                return
            # A store entry that waited in RAM and is written in a forked child: the file by that
            # name is its parent's as much as the child's, so the child never claims (and deletes) it.
            forked_working_copy = self._awaits_backing() and os.getpid() != self._owner_pid
            if self._cache_path is None:
                self._allocate_ephemeral()
            mapping = self._write_adopted_backing(source) or self._write_backing(np.asarray(source))
            self._dat_identity = mapping.identity
            mapped = as_memmap(mapping, shape, dtype, filename=str(self._cache_path))
            self._mmap = mapped
            self._set_buffer(mapped)
            self._in_memory = True
            self._adopted = None
            self._release_spill()
            self._payload_mapping = None
            if not self._backing_created and not forked_working_copy:
                self._take_ownership()
            logger.debug("Wrote %s to %s (%d bytes)", type(self).__name__, self._cache_path, mapped.nbytes)

    def _source_array(self) -> NDArray[Any]:
        """The entry's current data without changing its state (for writers such as the store).

        The live buffer when loaded; otherwise a read-only mapping of the file that holds the data
        (the ``.dat``, or the adopted ``.npy`` payload). O(1), reads no data.
        """
        with self._lock:
            if self._in_memory:
                return self._describe_buffer()[2]
            if self._spill_path is not None:
                return self._map_spill("r")
            return self._map_backing("r")

    def _convert_to_ndarray(self) -> None:
        """Copy the mapped data into a fresh RAM array and adopt it (1 copy, GIL released)."""
        with self._lock:
            mapped = self._mmap
            if mapped is None:
                return
            shape, dtype, live = self._describe_buffer()
            array = self._read_backing(mapped, tuple(shape), np.dtype(dtype)) if live is mapped else None
            self._set_buffer(np.array(live, copy=True) if array is None else array)
            self._mmap = None
            self._adopted = None
            self._payload_mapping = None

    def _read_backing(
        self, mapped: np.memmap[Any, np.dtype[Any]], shape: tuple[int, ...], dtype: np.dtype[Any]
    ) -> NDArray[Any] | None:
        """``pread`` the ``.dat`` behind a shared mapping into a new array; ``None`` if unsuitable."""
        mapping = mapping_of(mapped)
        if self._adopted is not None or mapping is None or mapping.mode == "c":
            return None
        array = np.empty(shape, dtype=dtype)
        if array.nbytes == 0:
            return array
        path = self._require_cache_path()
        try:
            self._directory().read_into(path.name, 0, byte_view(array), chunk_bytes=chunk_budget_bytes())
        except FileNotFoundError:
            return None
        return array

    def _write_backing(self, source: NDArray[Any]) -> FileMapping:
        """Atomically replace the ``.dat`` with ``source`` in C order; return its ``r+`` mapping.

        An empty ``source`` gives a one-byte ``.dat`` (one zero byte), as ``np.memmap`` writes it.
        """
        directory, name = self._write_location(create=True)
        durable = self._backing_is_durable()
        length = dat_length(source.nbytes)
        payload = byte_view(source) if length == source.nbytes else bytes(length)
        return directory.write_file(
            name, payload, chunk_bytes=chunk_budget_bytes(), durable=durable, progress=current_chunk_progress()
        )

    def _copy_payload_to_dat(self, adopted: AdoptedPayload, nbytes: int, patch: FileMapping) -> FileMapping:
        """Write the ``.dat`` from the adopted C-ordered payload; return its ``r+`` mapping.

        The bytes move inside the kernel (reflinked where the file system can), but for the pages
        written through ``patch``, a mapping of that payload, which come from memory.
        """
        directory, name = self._write_location(create=True)
        return directory.copy_range(
            npy_beside(self._require_cache_path()).name,
            adopted.offset,
            name,
            nbytes,
            chunk_bytes=chunk_budget_bytes(),
            durable=self._backing_is_durable(),
            patch=patch,
        )

    def _reload_mode(self) -> LoadMode:
        """The mode implicit loads use: ``r+``, but for an entry adopted by its store payload.

        Such an entry maps the payload read-only (``r``, a read-only directory) or copy-on-write
        (``c``): an implicit load (``data``, indexing, a ufunc) reads it in O(1) and writes no file.
        """
        adopted = self._adopted
        if adopted is None:
            return "r+"
        return "r" if adopted.readonly else "c"

    def _run_hook(self, hook: Callable[[], None], message: str) -> None:
        try:
            hook()
        except Exception:
            logger.exception(message)

    # -- pickling ------------------------------------------------------------------------------

    _TRANSIENT_STATE: ClassVar[tuple[str, ...]] = (
        "_lock",
        "_finalizer",
        "_lease",
        "_dir_handle",
        "_tracked",
        "_used_at",
        "_spill_lease",
        "_payload_mapping",
    )

    def __getstate__(self) -> dict[str, Any]:
        """Hand purge duty to the copy and offload (both mutate this entry); data stays on disk.

        This entry keeps holding its file. If no copy takes the duty back in this process, the
        process that created the file deletes it when it exits. An entry without caching travels
        inline, a spilled one too: it is mapped from its spill file and its array copied into the
        state, which never names the spill file.
        """
        with self._lock:
            purge = self._purge_disk_on_gc
            lease: PathLease | None = self.__dict__.get("_lease")
            if lease is not None:
                lease.hand_off()
            self.disable_purge()
            if self._enable_caching:
                self.offload()
            elif self._spill_path is not None:
                self.load(self._reload_mode())
            # A copy revived elsewhere may open the .dat by name: a store must not release it.
            self._path_exported = True
            state = {key: value for key, value in self.__dict__.items() if key not in self._TRANSIENT_STATE}
            state["_purge_disk_on_gc"] = purge
            if self._spill_path is not None:
                self._inline_spilled(state)
            return state

    def _inline_spilled(self, state: dict[str, Any]) -> None:
        """Make ``state`` of this loaded spilled entry that of an entry holding its array in RAM."""
        live = self._describe_buffer()[2]
        inline = np.array(live, copy=True)
        for key, value in state.items():
            if value is live:
                state[key] = inline
        state["_mmap"] = None
        state.pop("_spill_path", None)

    def __copy__(self) -> Self:
        """A shallow copy: the same file and, while loaded, the same buffer, like a view.

        Nothing is written and this entry is not changed (unlike pickling), but for a store entry
        still waiting in RAM for its file: both must share one file, so its ``.dat`` is written
        first (``OSError`` if that fails). The copy holds the file as this entry does, armed with
        purge duty if this entry is, so the file lives until the last of them is gone.
        """
        with self._lock:
            # Both must share one file: a deferred working copy writes its .dat first.
            self._write_deferred_backing()
            twin = type(self).__new__(type(self))
            twin.__dict__.update(
                (name, value) for name, value in self.__dict__.items() if name not in self._TRANSIENT_STATE
            )
            twin._lock = threading.RLock()
            twin._dir_handle = None
            # The same data: an adopted entry's payload mapping is shared, like its buffer.
            twin._payload_mapping = self._payload_mapping
            if twin._cache_path is not None:
                twin._hold_path()
                if "_finalizer" in self.__dict__ and self._finalizer.alive:
                    twin._arm_purge()
            if twin._spill_path is not None:
                twin._hold_spill(twin._spill_path)
            twin._report_memory()
            return twin

    def __deepcopy__(self, memo: dict[int, Any]) -> Self:
        """An independent entry: writes to either never reach the other.

        The copy is ephemeral whatever this entry's ``cache_path``: with caching on its data goes to
        a new private file in the temp directory (cloned or copied inside the kernel where the file
        system can, else streamed through the page cache; never through a full RAM copy), which is
        deleted when the copy is collected (``purge_disk_on_gc`` is on). With caching off it gets its
        own RAM array, also when this entry is spilled. State (in RAM, mapped, offloaded) and the
        other flags are this entry's.
        """
        with self._lock:
            live = self._describe_buffer()[2] if self._in_memory else None
            twin = type(self).__new__(type(self))
            memo[id(self)] = twin
            for name, value in self.__dict__.items():
                if name in self._TRANSIENT_STATE or name == "_mmap" or (live is not None and value is live):
                    continue
                twin.__dict__[name] = copy.deepcopy(value, memo)
            twin._lock = threading.RLock()
            twin._dir_handle = None
            twin._mmap = None
            twin._adopted = None
            twin._payload_mapping = None
            twin._backing_created = False
            twin._working_copy = False
            twin._ephemeral = True
            twin._cache_path = None
            twin._purge_disk_on_gc = True
            twin._owner_pid = os.getpid()
            twin._spill_path = None
            twin._in_memory = live is not None or self._spill_path is not None
            if live is None and self._spill_path is not None:
                twin._set_buffer(np.array(self._source_array(), copy=True))
            elif live is None:
                twin._allocate_ephemeral()
                self._copy_backing_into(twin)
            elif self._enable_caching:
                twin._set_buffer(live)
                twin._convert_to_memmap()
            else:
                twin._set_buffer(np.array(live, copy=True))
            twin._report_memory()
        _budget.ledger.check()
        return twin

    def _copy_backing_into(self, twin: "LazyDiskCache") -> None:
        """Fill ``twin``'s fresh ``.dat`` with this offloaded entry's bytes (no RAM copy)."""
        source = self._require_cache_path()
        target = twin._require_cache_path()
        shape, dtype = self._describe_shape_dtype()
        nbytes = math.prod(shape) * np.dtype(dtype).itemsize
        if nbytes and self._adopted is None and not is_symlink(source) and source.parent == target.parent:
            self._directory().copy_range(
                source.name, 0, target.name, nbytes, chunk_bytes=chunk_budget_bytes(), durable=False
            )
        else:
            twin._write_backing(np.asarray(self._source_array()))

    def __dask_tokenize__(self) -> object:
        """A dask token from metadata, never from the bytes on disk.

        File-backed entries are named by the identity of the file that holds their data (path,
        device, inode, size, modification time), like dask names an ``np.memmap``; entries in RAM by
        their array, as dask names any array.
        """
        with self._lock:
            shape, dtype = self._describe_shape_dtype()
            head = (type(self).__module__, type(self).__qualname__, tuple(shape), np.dtype(dtype).str)
            path = self._cache_path
            if not self._enable_caching or path is None or self._awaits_backing():
                from dask.base import normalize_token  # imported here: only dask calls this hook

                return (*head, normalize_token(self._source_array()))
            checksum = None
            if self._adopted is not None:
                path = npy_beside(path)
                checksum = stored_checksum(self)
            try:
                info = os.stat(path)
            except OSError:
                return (*head, str(path), None)
            return (*head, str(path), info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, checksum)

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Restore the state, a new lock and (purge on) purge duty under the pickled owner pid."""
        self.__dict__.update(state)
        self._payload_mapping = None
        self._lock = threading.RLock()
        self._dir_handle = None
        if self._cache_path:
            self._hold_path()
            if self._purge_disk_on_gc:
                self._purge_disk_on_gc = False
                self.enable_purge()
        self._report_memory()
        _budget.ledger.check()
