"""``DiskBackedStore``: named ``LazyDiskCache`` entries sharing one cache directory.

A key ``k`` is one legal path segment (see ``paths``). Its entry lives in memory (RAM or mapped on
``<k>.dat``) while tracked, and can be written to a crash-safe codec pair, ``<k>.npy`` plus the
JSON sidecar ``<k>.meta.json``, from which any store on the same directory reloads it. Writes of
several keys are grouped into one commit with a single directory fsync. Opening a store sweeps
the temps a crash left behind and adopts every ``<k>.npy`` it finds.
"""

import logging
import math
import os
import threading
import weakref
from collections.abc import Callable, Iterable, Iterator, MutableMapping
from contextlib import ExitStack
from pathlib import Path
from types import MappingProxyType
from typing import (
    TYPE_CHECKING,
    Any,
    ClassVar,
    Generic,
    Literal,
    NoReturn,
    Protocol,
    TypeGuard,
    TypeVar,
    overload,
    runtime_checkable,
)

from numpy.typing import NDArray
from pydantic import ConfigDict, validate_call
from typing_extensions import Unpack

from lazy_disk_cache._codec import (
    CHECKSUM_FIELD,
    SCHEMA_VERSION,
    parse_sidecar,
    read_payload,
    sidecar_flags,
    sidecar_is_stale,
    stage_entry,
)
from lazy_disk_cache._directories import open_directory
from lazy_disk_cache._key_locks import writer_lock_if_writable
from lazy_disk_cache._memmap import mapping_of
from lazy_disk_cache._payload_layout import layout_of, payload_memmap
from lazy_disk_cache._progress import ProgressCallback, reporting
from lazy_disk_cache._purge import PurgePlan, artefact_names, detach_purge_duty, plan_purge, unlink_in_order
from lazy_disk_cache._rust import CacheDir, CommitBatch
from lazy_disk_cache._store_dir import (
    SweepReport,
    choose_cache_dir,
    directory_refuses_writes,
    lease_directory,
    list_directory,
    require_usable_directory,
    rescan,
    sweep_orphan_temps,
)
from lazy_disk_cache.disk_backed_ndarray import DiskBackedNDArray
from lazy_disk_cache.errors import (
    StoreContainmentError,
    StoreKeyError,
    StorePurgeAliasedArtefactError,
    StorePurgeForeignArtefactError,
    StorePurgeIncompleteError,
    StorePurgeRefusedError,
    warn_user,
)
from lazy_disk_cache.integrity import VerifyReport, verify_directory
from lazy_disk_cache.lazy_disk_cache import (
    LazyDiskCache,
    LazyDiskCacheConfig,
    LazyDiskCacheKw,
    StagedPayload,
    StoreEntryBuild,
    chunk_budget_bytes,
    entry_lock,
    release_purge_duty,
    remember_stored_checksum,
    settle_committed_entries,
    shape_and_dtype,
)
from lazy_disk_cache.paths import (
    LEGACY_PICKLE_SUFFIX,
    META_SUFFIX,
    NPY_SUFFIX,
    StoreKey,
    checked_store_key,
    get_legacy_pickle_path,
    get_memmap_path,
    get_meta_path,
    get_npy_path,
    is_readable_store_key,
    is_valid_store_key,
    readable_store_key,
    validate_store_key,
    violated_clause,
)

__all__ = [
    "DiskBackedStore",
    "Factory",
    "StorePurgeAliasedArtefactError",
    "StorePurgeForeignArtefactError",
    "StorePurgeIncompleteError",
    "StorePurgeRefusedError",
    "Validator",
    "register_lazy_disk_cache_class",
]

if TYPE_CHECKING:
    import dask.array
    from dask.delayed import Delayed

logger = logging.getLogger(__name__)

_SCHEMA_VERSION = SCHEMA_VERSION

T = TypeVar("T", bound=LazyDiskCache)
_T_co = TypeVar("_T_co", bound=LazyDiskCache, covariant=True)
_ClassT = TypeVar("_ClassT", bound=type[LazyDiskCache])
_DefaultT = TypeVar("_DefaultT")


@runtime_checkable
class Factory(Protocol[_T_co]):
    """Wraps raw data into a store entry: ``factory(data, **LazyDiskCacheKw) -> entry``.

    Entry classes themselves qualify (``factory=DiskBackedNDArray``).
    """

    def __call__(self, data: Any, /, **kwargs: Unpack[LazyDiskCacheKw]) -> _T_co: ...


Validator = Callable[[object], TypeGuard[T]]
"""An extra check run on every value inserted into a store; a falsy result rejects the value."""

# ---------------------------------------------------------------------------------------------
# Class registry: the closed allow-list of names a sidecar may ask for


_LAZY_DISK_CACHE_CLASS_REGISTRY: dict[str, type[LazyDiskCache]] = {"DiskBackedNDArray": DiskBackedNDArray}


def register_lazy_disk_cache_class(cls: _ClassT) -> _ClassT:
    """Allow stores to reload entries of ``cls`` (recorded in sidecars under ``cls.__name__``).

    Idempotent for the same class; returns ``cls``, so it works as a class decorator.

    Raises:
        TypeError: ``cls`` is not a ``LazyDiskCache`` subclass.
        ValueError: a different class is already registered under that name.
    """
    if not (isinstance(cls, type) and issubclass(cls, LazyDiskCache)):
        raise TypeError(f"register_lazy_disk_cache_class expects a LazyDiskCache subclass; got {cls!r}")
    name = cls.__name__
    existing = _LAZY_DISK_CACHE_CLASS_REGISTRY.get(name)
    if existing is not None and existing is not cls:
        raise ValueError(
            f"Cannot register {cls!r} under {name!r}: a different class ({existing!r}) is already "
            "registered under that name."
        )
    _LAZY_DISK_CACHE_CLASS_REGISTRY[name] = cls
    return cls


def _resolve_lazy_disk_cache_class(name: str) -> type[LazyDiskCache]:
    """Return the registered class called ``name``; never imports anything.

    Raises:
        ValueError: no class is registered under ``name``.
    """
    try:
        return _LAZY_DISK_CACHE_CLASS_REGISTRY[name]
    except KeyError:
        raise ValueError(
            f"Unknown lazy_disk_cache_class {name!r}; allowed: {sorted(_LAZY_DISK_CACHE_CLASS_REGISTRY)}"
        ) from None


_NO_DEFAULT: Any = object()


class _NamingTheSidecar:
    """Add a note naming the sidecar to a ``ValueError`` raised inside; the message stays as pinned.

    A class, not a generator: it wraps every reload, and costs next to nothing when nothing raises.
    """

    __slots__ = ("path",)

    def __init__(self, path: Path) -> None:
        self.path = path

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: object, exc: BaseException | None, traceback: object) -> None:
        if isinstance(exc, ValueError):
            exc.add_note(f"while reading the sidecar {str(self.path)!r}")


def _payload_bytes(entry: LazyDiskCache) -> int:
    shape, dtype = shape_and_dtype(entry)
    return math.prod(shape) * dtype.itemsize


# ---------------------------------------------------------------------------------------------
# The store


class DiskBackedStore(MutableMapping[str, T], Generic[T]):
    """A mapping of store keys to ``LazyDiskCache`` entries that share one cache directory.

    Keys must be legal store keys (``StoreKeyError`` otherwise, before any filesystem access);
    legacy keys found on disk (see ``paths``) are read, purged and renamed, never created.
    ``offload(pickle_container=True)`` writes entries as ``<key>.npy`` + ``<key>.meta.json``
    pairs and drops them from memory; ``store[key]`` reloads them on demand, mapping the payload
    copy-on-write instead of reading it. Mutations hold the store's lock (taken before any
    entry's lock). Construction is keyword-only and validated by pydantic.
    """

    _DBNDArrayFileExt: ClassVar[str] = NPY_SUFFIX
    _DBNDArrayMetaExt: ClassVar[str] = META_SUFFIX
    _LegacyPickleExt: ClassVar[str] = LEGACY_PICKLE_SUFFIX

    # Never pickled: recreated by __setstate__ (the registry starts empty in every copy).
    _TRANSIENT_STATE: ClassVar[tuple[str, ...]] = ("_lock", "_entry_registry", "_directory_finalizer")

    _store: dict[str, T | None]
    _entry_registry: dict[str, list[weakref.ref[T]]]
    _cache_dir: Path
    _enable_caching: bool
    _automatic_offloading: bool
    _purge_disk_on_gc: bool
    _factory: Factory[T]
    _value_type: type[T] | tuple[type[T], ...] | None
    _validator: Validator[T] | None
    _owner_pid: int
    _owns_cache_dir: bool
    _lock: threading.RLock

    @validate_call(config=ConfigDict(arbitrary_types_allowed=True))
    def __init__(
        self,
        *,
        config: LazyDiskCacheConfig = LazyDiskCacheConfig(),  # noqa: B008 - frozen, so one shared default is safe
        factory: Factory[T],
        value_type: type[T] | tuple[type[T], ...] | None = None,
        validator: Validator[T] | None = None,
    ) -> None:
        """Open (or create) the cache directory, sweep orphaned temps and adopt every stored key.

        ``config.cache_path=None`` (or an existing file) gives a private temporary directory,
        removed when the store goes if ``purge_disk_on_gc``. Blocks on disk (one directory
        listing, plus a sweep). Bad argument types raise ``pydantic.ValidationError``.
        """
        self._lock = threading.RLock()
        self._store = {}
        self._entry_registry = {}
        self._owner_pid = os.getpid()
        self._enable_caching = config.enable_caching
        self._automatic_offloading = config.automatic_offloading and config.cache_path is not None
        self._purge_disk_on_gc = config.purge_disk_on_gc
        self._factory = factory
        self._value_type = value_type
        self._validator = validator
        choice = choose_cache_dir(config.cache_path)
        if choice.replaced_file:
            self._report_replaced_file(str(config.cache_path), str(choice.path))
        self._cache_dir, self._owns_cache_dir = choice.path, choice.owned
        self._arm_directory_removal()
        directory = open_directory(self._cache_dir, create=True)
        # One listing serves the sweep and the rescan. The sweep never removes a ``.npy``, so the
        # rescan finds what a listing of its own would; one that cannot be made is reported by the
        # sweep, then raised, as each would on its own.
        try:
            listed = list_directory(self._cache_dir)
        except OSError as exc:
            self._report_sweep(SweepReport([], [(".", exc)]))
            raise
        self._report_sweep(sweep_orphan_temps(directory, listed=listed))
        self._rescan(listed)

    # -- setup ---------------------------------------------------------------------------------

    def _report_replaced_file(self, given: str, used: str) -> None:
        logger.warning("Cache path %r is an existing file; using temporary directory %r instead.", given, used)
        fate = "deleted" if self._purge_disk_on_gc else "not deleted"
        warn_user(
            f"Cache path {given!r} is an existing file; using temporary directory {used!r} instead. Nothing "
            f"is written to the path you gave, and the temporary directory is {fate} when the store goes "
            f"(purge_disk_on_gc={self._purge_disk_on_gc})."
        )

    def _arm_directory_removal(self) -> None:
        if self._owns_cache_dir and self._purge_disk_on_gc:
            self._directory_finalizer = lease_directory(self, self._cache_dir, self._owner_pid).arm()

    def _report_sweep(self, report: SweepReport) -> None:
        for name in report.removed:
            logger.info("Removed orphaned temp file %r from cache directory %r.", name, str(self._cache_dir))
        for name, error in report.failed:
            logger.debug(
                "Could not remove orphaned temp file %r in cache directory %r: %s", name, str(self._cache_dir), error
            )

    def _rescan(self, listed: list[os.DirEntry[str]] | None = None) -> list[str]:
        report = rescan(self._cache_dir, listed)
        directory = str(self._cache_dir)
        for name in report.skipped:
            logger.warning("Skipping %r in cache directory %r: its name is not a legal store key.", name, directory)
            warn_user(
                f"Skipping {name!r} in cache directory {directory!r}: its name is not a legal store key. "
                "The file is not loaded and stays on disk untouched."
            )
        for key in report.legacy:
            self._report_legacy_key(key, directory)
        for key in report.keys:
            self._store.setdefault(key, None)
        return report.keys

    def refresh(self) -> None:
        """Re-read the directory: learn the keys other processes committed, forget the ones they purged.

        Keys with a ``<key>.npy`` on disk that this store does not track appear (as not in memory,
        loaded on access). Tracked keys that are not in memory and whose pair is gone disappear.
        Entries this process holds stay tracked and valid, whatever happened on disk. No temp is
        swept. Blocks on disk (one directory listing).
        """
        with self._lock:
            found = set(self._rescan())
            for key in [key for key, entry in self._store.items() if entry is None and key not in found]:
                del self._store[key]

    def _report_legacy_key(self, key: str, directory: str) -> None:
        name = key + NPY_SUFFIX
        clause = violated_clause(key)
        logger.warning(
            "Adopting %r in cache directory %r as legacy key %r: the key %s, so it is not portable. It can be "
            "read and purged but no new key like it can be created; rename() moves it to a portable key.",
            name,
            directory,
            key,
            clause,
        )
        warn_user(
            f"Adopting {name!r} in cache directory {directory!r} as legacy key {key!r}: the key {clause}, so it "
            "is not portable. It can be read and purged but no new key like it can be created; "
            f"store.rename({key!r}, new_key) moves it to a portable key."
        )

    # -- mapping protocol ----------------------------------------------------------------------

    def __getitem__(self, key: str) -> T:
        """Return the entry for ``key``, reloading it from its codec pair if it is not in memory.

        Raises ``StoreKeyError`` for an illegal key that is not a legacy key (before any filesystem
        access), ``KeyError`` on a miss and ``ValueError`` for a defective pair. A reload maps the
        payload; reads no data.
        """
        checked = readable_store_key(key, self._cache_dir)
        with self._lock:
            entry = self._store.get(key)
            if entry is not None:
                return entry
            entry = self._load_entry(checked)
            self._store[key] = entry
            self._register(key, entry)
            return entry

    def __setitem__(self, key: str, value: T) -> None:
        """Track ``value`` under ``key`` (overwriting silently). Writes no file."""
        validate_store_key(key, self._cache_dir)
        with self._lock:
            self._store[key] = self._check_T(value)
            self._register(key, value)

    def __delitem__(self, key: str) -> None:
        """Stop tracking ``key``; its files stay on disk. ``KeyError`` if it is not tracked."""
        with self._lock:
            del self._store[key]

    def __contains__(self, key: object) -> bool:
        """Whether ``key`` is tracked (no disk access); ``False`` for illegal keys."""
        return is_readable_store_key(key) and key in self._store

    def __iter__(self) -> Iterator[str]:
        with self._lock:
            return iter(list(self._store))

    def __len__(self) -> int:
        return len(self._store)

    def keys(self) -> list[str]:  # type: ignore[override]
        """A list snapshot of the tracked keys, offloaded ones included."""
        with self._lock:
            return list(self._store)

    def values(self) -> Iterator[T | None]:  # type: ignore[override]
        """Iterate over the tracked values; ``None`` for keys not in memory. Never loads."""
        with self._lock:
            return iter(list(self._store.values()))

    def items(self) -> Iterator[tuple[str, T | None]]:  # type: ignore[override]
        """Iterate over ``(key, value)`` pairs; the value is ``None`` for keys not in memory. Never loads."""
        with self._lock:
            return iter(list(self._store.items()))

    @overload
    def get(self, key: str, default: None = None) -> T | None: ...
    @overload
    def get(self, key: str, default: T) -> T: ...
    @overload
    def get(self, key: str, default: _DefaultT) -> T | _DefaultT: ...
    def get(self, key: str, default: Any = None) -> Any:
        """``store[key]``, or ``default`` on a miss or an illegal key.

        ``StoreContainmentError`` and codec ``ValueError``s propagate.
        """
        try:
            return self[key]
        except StoreContainmentError:
            raise
        except (StoreKeyError, KeyError):
            return default

    def pop(self, key: str, default: Any = _NO_DEFAULT) -> Any:
        """Return ``store[key]`` (reloading it if needed) and stop tracking it; files stay on disk.

        On a miss or an illegal key, return ``default`` if given, else raise (``KeyError`` /
        ``StoreKeyError``). ``StoreContainmentError`` always propagates.
        """
        with self._lock:
            try:
                value = self[key]
            except StoreContainmentError:
                raise
            except (StoreKeyError, KeyError):
                if default is _NO_DEFAULT:
                    raise
                return default
            self._store.pop(key, None)
            return value

    def clear(self) -> None:
        """Stop tracking every key without loading anything; files stay on disk.

        Raises ``RuntimeError`` naming the keys still tracked afterwards.
        """
        with self._lock:
            for key in list(self._store):
                try:
                    del self[key]
                except KeyError:
                    continue
            if self._store:
                raise RuntimeError(f"clear() left these keys in the store: {list(self._store)!r}")

    def __repr__(self) -> str:
        # The original's format, which callers compare against: every key, nothing else.
        return f"<DiskBackedStore({list(self._store)})>"

    def __str__(self) -> str:
        """A summary that stays short for any number of keys: the count, how many are in memory, the directory."""
        values = list(self._store.values())
        in_memory = sum(value is not None for value in values)
        return f"<DiskBackedStore of {len(values)} keys ({in_memory} in memory) in {str(self._cache_dir)!r}>"

    @property
    def store(self) -> MappingProxyType[str, T | None]:
        """A read-only live view of the tracked keys and values (``None`` where not in memory)."""
        return MappingProxyType(self._store)

    @property
    def cache_dir(self) -> Path:
        """The directory holding the codec pairs and the entries' ``.dat`` files."""
        return self._cache_dir

    # -- inserting -----------------------------------------------------------------------------

    def _check_T(self, value: object) -> T:  # noqa: N802 - the established name
        """Return ``value`` if it may be stored, else raise ``TypeError`` saying why."""
        if not isinstance(value, LazyDiskCache):
            raise TypeError(f"value must be LazyDiskCache; got {type(value)}")
        if self._value_type is not None and not isinstance(value, self._value_type):
            raise TypeError(f"value must be {self._value_type}; got {type(value)}")
        if self._validator is not None and not self._validator(value):
            raise TypeError(f"value rejected by validator; got {type(value)}")
        return value  # type: ignore[return-value]

    def add_data_to_store(
        self,
        key: str,
        data: Any,
        *,
        enable_caching_override: bool | None = None,
        automatic_offloading_override: bool | None = None,
        purge_disk_on_gc_override: bool | None = None,
    ) -> None:
        """Wrap ``data`` with the factory as the entry for ``key`` (its ``.dat`` is ``<key>.dat``).

        Each flag is its override when not ``None``, else the store's. ``StoreKeyError`` for an
        illegal key, ``KeyError`` if ``key`` is already tracked; the factory's own errors and the
        value checks (``TypeError``) propagate. With caching on, the data is copied: into RAM, where
        the entry waits for its ``.dat`` while that stays cheap (see the entry's memory budget), else
        into its ``.dat``, blocking while the data is written. Errors writing the ``.dat``
        (``OSError``, ``StoreContainmentError``) then surface when it is written: at the add, or at
        the first operation that needs the file.
        """
        checked = checked_store_key(key, self._cache_dir)
        with self._lock:
            if key in self._store:
                raise KeyError(f"Key {key} already exists in store.")
            caching, offloading, purge = (
                default if override is None else override
                for default, override in (
                    (self._enable_caching, enable_caching_override),
                    (self._automatic_offloading, automatic_offloading_override),
                    (self._purge_disk_on_gc, purge_disk_on_gc_override),
                )
            )
            dat = get_memmap_path(self._cache_dir, checked)
            dat_existed = os.path.lexists(dat)
            npy = get_npy_path(self._cache_dir, checked)
            with StoreEntryBuild(npy):
                entry = self._factory(
                    data,
                    enable_caching=caching,
                    cache_path=npy,
                    automatic_offloading=offloading,
                    purge_disk_on_gc=purge,
                )
            try:
                self._store[key] = self._check_T(entry)
            except BaseException:
                # Rejected (or the validator itself failed): the entry is never installed.
                self._discard_rejected(entry, dat, dat_existed)
                raise
            self._register(key, entry)

    def _discard_rejected(self, entry: object, dat: Path, dat_existed: bool) -> None:
        """Undo what a rejected entry of the factory did at ``dat``: nothing of it may remain.

        Its purge duty goes (so its collection never deletes a later entry's file at the same path),
        and the ``.dat`` it created is unlinked; a file that was there before the call is left alone.
        """
        if not isinstance(entry, LazyDiskCache) or entry.cache_path != dat:
            return
        release_purge_duty(entry)
        if not dat_existed:
            for name, error in open_directory(dat.parent).unlink_all([dat.name]):
                logger.debug("Could not remove %s of a rejected entry in %s: %s", name, dat.parent, error)

    def _register(self, key: str, entry: T) -> None:
        known = self._entry_registry.get(key)
        if known is None:
            self._entry_registry[key] = [weakref.ref(entry)]
            return
        refs = [ref for ref in known if ref() is not None]
        if not any(ref() is entry for ref in refs):
            refs.append(weakref.ref(entry))
        self._entry_registry[key] = refs

    def _live_entries(self, key: str | None = None) -> list[T]:
        """The live registered entries of ``key`` (of every key when ``None``), each once."""
        lists = self._entry_registry.values() if key is None else [self._entry_registry.get(key, [])]
        found: dict[int, T] = {}
        for refs in lists:
            for ref in refs:
                entry = ref()
                if entry is not None:
                    found[id(entry)] = entry
        return list(found.values())

    # -- offloading ----------------------------------------------------------------------------

    def offload(
        self,
        keys: str | Iterable[str] | None = None,
        pickle_container: bool = False,
        *,
        progress: ProgressCallback | None = None,
    ) -> None:
        """Offload the entries of ``keys``: one ``str`` key, any iterable of keys, or all (``None``).

        An iterable (list, tuple, set, dict view, generator) is consumed once, before any effect.
        Every key is validated (``StoreKeyError``; also a ``TypeError`` for a non-``str`` key) and
        must be tracked (``KeyError``) before any entry is touched; ``keys`` that is neither ``None``,
        a ``str`` nor iterable raises ``TypeError``. Entries not in memory are skipped, so are entries
        with caching off. With ``pickle_container`` each entry is written as its codec pair, all keys
        in one commit with a single directory fsync, and dropped from memory (it reloads on access);
        no pickle is involved; each sidecar records the checksum of its ``.npy``, computed while the
        file is written. Otherwise each entry's own ``offload()`` runs. On an I/O failure the keys
        before the failing one stay processed and the ``OSError`` propagates. Blocks on disk.

        ``progress(done_bytes, total_bytes)``, if given, is called from this thread at most about
        ten times a second while the entries' bytes are written, and once when the offload is
        complete; an exception it raises stops the offload as an I/O failure would (the keys
        written before stay processed, the current key's temps are removed) and propagates.
        """
        with self._lock:
            selected = self._select_for_offload(keys)
            with reporting(progress, self._bytes_to_offload(selected)) as meter:
                if pickle_container:
                    self._write_entries(selected, warn_unwritten=True)
                    return
                done = 0
                for key in selected:
                    entry = self._offload_candidate(key)
                    if entry is not None:
                        entry.offload()
                        done += _payload_bytes(entry)
                        if meter is not None:
                            meter.reach(done)

    def _bytes_to_offload(self, keys: list[StoreKey]) -> int:
        """The payload bytes of the entries of ``keys`` an offload would write (no logging)."""
        entries = [self._store[key] for key in keys]
        return sum(_payload_bytes(entry) for entry in entries if entry is not None and entry.cache_enabled)

    def _select_for_offload(self, keys: object) -> list[StoreKey]:
        chosen: list[object]
        if keys is None:
            chosen = list(self._store)
        elif isinstance(keys, (str, bytes, bytearray, memoryview)):
            # A str is one key; so are bytes, which iterate as ints: they get the non-str key error.
            chosen = [keys]
        elif isinstance(keys, Iterable):
            chosen = list(keys)
        else:
            raise TypeError(
                "offload() keys must be None, a str key or an iterable of str keys (a list, tuple, set, dict "
                f"view or generator); got {type(keys).__name__}"
            )
        checked = [readable_store_key(key, self._cache_dir) for key in chosen]
        for key in checked:
            # A legacy key is written only back to where it was read from, never as a new key.
            if key not in self._store and not is_valid_store_key(key):
                validate_store_key(key, self._cache_dir)
        for key in checked:
            if key not in self._store:
                raise KeyError(key)
        return list(dict.fromkeys(checked))

    def _offload_candidate(self, key: str, *, warn_unwritten: bool = False) -> T | None:
        """The entry of ``key`` if it is in memory with caching on; else ``None`` (logged).

        ``warn_unwritten``: the caller writes pairs, so skipping an entry with caching off leaves it
        out of the directory, which the user must hear about.
        """
        entry = self._store[key]
        if entry is None:
            return None
        if not entry.cache_enabled:
            logger.debug("Skipping offload for %s because caching is disabled.", key)
            if warn_unwritten:
                warn_user(
                    f"Key {key!r} was not written to the cache directory: its entry has caching disabled, so "
                    "offload(pickle_container=True) keeps it in memory only and a store reopened on "
                    f"{str(self._cache_dir)!r} will not find it."
                )
            return None
        return entry

    def _write_entries(self, keys: list[StoreKey], *, warn_unwritten: bool) -> None:
        """Write each key's pair in one group commit, then drop the committed keys from memory.

        The commit renames the pairs in key order up to the first key whose write or fsync
        failed, so the keys before it are processed and that key and the later ones keep their
        previous state and files (SPEC's part-way rule). ``warn_unwritten``: warn about each
        entry left unwritten because its caching is off. A committed entry's working ``.dat`` is
        released (``settle_committed_entries``), so the directory keeps one copy of each array.
        """
        staged: dict[str, tuple[LazyDiskCache, StagedPayload]] = {}
        # Each staged entry stays locked until its commit is settled: a write or a transition in
        # between (another thread's) would otherwise be lost when the settle drops the entry's
        # working copy for the committed payload.
        with ExitStack() as held, self._directory().begin_commit(chunk_bytes=chunk_budget_bytes()) as batch:
            try:
                for key in keys:
                    entry = self._offload_candidate(key, warn_unwritten=warn_unwritten)
                    if entry is not None:
                        held.enter_context(entry_lock(entry))
                        staged[key] = (entry, self._store_entry(key, entry, batch=batch))
            finally:
                # Also after a failure: the keys staged before it are complete, so they are committed,
                # as if offloaded alone, and the failure propagates.
                try:
                    batch.commit()
                finally:
                    self._settle(batch.committed, staged)

    def _settle(self, committed: list[str], staged: dict[str, tuple[LazyDiskCache, StagedPayload]]) -> None:
        """Drop the committed keys from memory and release their entries' working files."""
        for key in committed:
            self._store[key] = None
        settle_committed_entries([staged[key] for key in committed])

    def _store_entry(self, key: str, entry: LazyDiskCache, batch: CommitBatch | None = None) -> StagedPayload:
        """Write ``entry`` as the ``<key>.npy`` + ``<key>.meta.json`` pair, atomically.

        With ``batch`` the pair is only staged (``batch.commit()`` renames it into place); without,
        it is committed at once (one directory fsync). Each file goes to an exclusive temp that is
        fsynced and renamed; on failure the temps are removed and the previous pair is intact.
        ``TypeError`` for object dtypes, ``OSError`` (errno, filename) for I/O. Returns where the
        payload starts in the ``.npy`` and the file's checksum. Blocks on disk.
        """
        checked = checked_store_key(key, self._cache_dir)
        if batch is not None:
            return stage_entry(batch, self._cache_dir, checked, entry)
        with self._directory().begin_commit(chunk_bytes=chunk_budget_bytes()) as own_batch:
            staged = stage_entry(own_batch, self._cache_dir, checked, entry)
            own_batch.commit()
            return staged

    # -- integrity -----------------------------------------------------------------------------

    def verify(self, keys: str | list[str] | None = None, *, progress: ProgressCallback | None = None) -> VerifyReport:
        """Check the stored pairs of ``keys`` (every pair in the directory when ``None``) against damage.

        Reads each ``.npy`` once, sequentially, with the GIL released, and compares its checksum with
        the one its sidecar records; also checks that both halves of each pair exist, that the
        sidecar is valid and that the header is valid and matches the file's size. Pairs written
        without a checksum (by the original package, or before checksums existed) are reported as
        unverified. The page cache is left as found, so a store larger than RAM verifies in flat
        memory. Only what is on disk is checked: entries in memory are not written first.

        ``StoreKeyError`` for an illegal key and ``KeyError`` for a key with neither file, before
        anything is read. ``progress(done_bytes, total_bytes)`` as for ``offload``. Blocks on disk.
        """
        chosen = None if keys is None else [keys] if isinstance(keys, str) else list(keys)
        return verify_directory(self._cache_dir, chosen, progress=progress)

    # -- loading -------------------------------------------------------------------------------

    def _get_npy_path(self, feature: str) -> Path:
        """``<cache_dir>/<feature>.npy`` (validated and contained)."""
        return get_npy_path(self._cache_dir, feature)

    def _get_meta_path(self, feature: str) -> Path:
        """``<cache_dir>/<feature>.meta.json`` (validated and contained)."""
        return get_meta_path(self._cache_dir, feature)

    def _get_legacy_pickle_path(self, feature: str) -> Path:
        """``<cache_dir>/<feature>.pkl``, a legacy file that is never read (validated and contained)."""
        return get_legacy_pickle_path(self._cache_dir, feature)

    def _load_entry(self, key: str) -> T:
        """Build the entry of ``key`` from its ``<key>.npy`` + ``<key>.meta.json`` pair.

        The ``.npy`` header decides shape, dtype and order; the sidecar the class and the flags
        (which win over the store's). With caching on, the payload is mapped copy-on-write (read-
        only in a directory this process may not write) and adopted without reading it; otherwise
        it is read into RAM. ``KeyError`` on a miss or a legacy ``.pkl``; ``ValueError`` for a
        defective pair. Never reads a temp and creates nothing.
        """
        checked = readable_store_key(key, self._cache_dir)
        npy, meta = self._get_npy_path(checked), self._get_meta_path(checked)
        if key not in self._store and not (npy.exists() and meta.exists()):
            # Only a key this store tracks (it found or wrote its pair) is opened before its pair is
            # seen to exist, so a miss of any other key opens no file.
            self._miss(checked, key)
        directory = self._directory()
        # Temps are never read: a pair is only ever what the last completed rename left. Both
        # halves are read before either is judged, so a missing one is a miss whatever the other
        # holds, and a bad header is reported after the sidecar's own defects. The payload is
        # mapped by the same open that reads the header (copy-on-write, or read-only in a
        # directory this process may not write); a sidecar turning caching off drops the mapping.
        map_mode: Literal["r", "c"] = "r" if directory_refuses_writes(directory) else "c"
        raw_sidecar, opened, header_error = directory.read_pair(meta.name, npy.name, map_mode=map_mode)
        if raw_sidecar is None or (opened is None and header_error is None):
            self._miss(checked, key)
        with _NamingTheSidecar(meta):
            sidecar, class_name = parse_sidecar(raw_sidecar, key, meta)
            cls = _resolve_lazy_disk_cache_class(class_name)
        if opened is None:
            # Not missing (that was a miss above): unreadable, reported after the sidecar's defects.
            raise header_error or KeyError(key)
        header, mapping = opened
        layout = layout_of(header, npy)
        if sidecar_is_stale(sidecar, layout):
            logger.warning("sidecar for key %r is stale; the .npy header wins", key)
            warn_user(
                f"sidecar for key {key!r} is stale; the .npy header wins (shape {layout.shape}, dtype "
                f"{layout.dtype}; the sidecar {str(meta)!r} says shape {sidecar.get('shape')!r}, dtype "
                f"{sidecar.get('dtype')!r})"
            )
        with _NamingTheSidecar(meta):
            flags = sidecar_flags(sidecar, key)
        array: NDArray[Any]
        if flags["enable_caching"] and mapping is not None:
            array = payload_memmap(directory, npy, mapping, layout)
            mapping = mapping_of(array)
        else:
            array = read_payload(directory, npy, layout, mapping)
            mapping = None
        # Entry classes take the data first, then the LazyDiskCacheKw settings (like the factory).
        construct: Callable[..., T] = cls  # type: ignore[assignment]
        with StoreEntryBuild(npy, mapping):
            entry = construct(array, **flags, cache_path=npy)
        checksum = sidecar.get(CHECKSUM_FIELD)
        remember_stored_checksum(entry, checksum if isinstance(checksum, str) else None)
        return entry

    def _miss(self, checked: StoreKey, key: str) -> NoReturn:
        """Raise the ``KeyError`` of a key without a complete pair (logging a legacy pickle beside it)."""
        legacy = self._get_legacy_pickle_path(checked)
        if legacy.exists():
            logger.info(
                "Legacy pre-Phase-2 cache file at %s is a pickle, which this package never reads; with no "
                "complete .npy + .meta.json pair beside it, the key counts as missing. To keep its value, add "
                "it to a store again and offload it with pickle_container=True.",
                legacy,
            )
        raise KeyError(key)

    def _directory(self) -> CacheDir:
        return open_directory(self._cache_dir)

    # -- dask ----------------------------------------------------------------------------------

    def to_dask(self, key: str, chunks: Any = "auto") -> "dask.array.Array":
        """A dask array of ``key`` whose tasks read its file by path, block by block, in any process.

        A key not in memory reads its committed ``<key>.npy`` payload; an entry in memory reads as
        its own ``to_dask`` does (``ValueError`` when no file holds its value). ``chunks`` as for
        ``DiskBackedNDArray.to_dask``. ``StoreKeyError`` for an illegal key, ``KeyError`` when the
        key has no pair. O(1) I/O: one header read, no data. ``ImportError`` without the ``dask``
        extra.
        """
        checked = checked_store_key(key, self._cache_dir)
        # Imported here: dask is an optional dependency, loaded only when a graph is asked for.
        from lazy_disk_cache.dask import entry_to_dask, stored_key_to_dask

        with self._lock:
            entry = self._store.get(key)
            if entry is not None:
                return entry_to_dask(entry, chunks)
            try:
                return stored_key_to_dask(self._cache_dir, checked, chunks)
            except FileNotFoundError:
                raise KeyError(key) from None

    def store_dask(self, key: str, array: Any, *, compute: bool = True) -> "Delayed | None":
        """Write the dask array ``array`` as ``key``'s pair in one crash-safe commit; block writes run in parallel.

        This process becomes the key's writer (waiting for another one, in any process) and reserves
        ``<key>.npy.tmp``; the current dask scheduler (threads, processes or a distributed cluster
        sharing this file system) writes every block at its own offset, in C order; only when all
        succeeded is the temp fsynced, the sidecar written and the pair renamed with one directory
        fsync. On any failure the temp is removed and the previous pair (if any) is intact; a killed
        writer's temp is swept by the next store open. The key reloads as a ``DiskBackedNDArray``
        with this store's flags; a tracked key is then not in memory (its live entries are untouched).

        ``compute=False`` returns a ``dask.delayed`` that does all of the above in whichever process
        computes it (this store then learns the key on ``refresh()`` or access). Object dtypes raise
        ``TypeError``; ``ImportError`` without the ``dask`` extra.
        """
        checked = checked_store_key(key, self._cache_dir)
        from lazy_disk_cache.dask import store_array

        flags = LazyDiskCacheKw(
            purge_disk_on_gc=self._purge_disk_on_gc,
            automatic_offloading=self._automatic_offloading,
            enable_caching=self._enable_caching,
        )
        if not compute:
            return store_array(self._cache_dir, checked, array, flags, compute=False)
        store_array(self._cache_dir, checked, array, flags, compute=True)
        with self._lock:
            self._store[key] = None
        return None

    # -- purge ---------------------------------------------------------------------------------

    def purge(self, key: str) -> None:
        """Stop tracking ``key`` and unlink its sidecar, temps, ``.npy`` and ``.dat``.

        Refused (changing nothing) from a process other than the one that built the store
        (``StorePurgeRefusedError``), when a name or a live entry's ``.dat`` leads outside the
        directory (``StorePurgeForeignArtefactError``) or a name links to another store artefact
        (``StorePurgeAliasedArtefactError``). ``KeyError`` if the key is neither tracked nor on
        disk. Unlink failures raise ``StorePurgeIncompleteError`` naming the survivors; the key is
        dropped anyway. ``<key>.pkl`` is left alone. Blocks on disk.
        """
        with self._lock:
            plan = self._plan_removal(key, readable_store_key(key, self._cache_dir))
            if not self._purge_disk_on_gc:
                logger.info(
                    "Explicit purge of key %s overrides purge_disk_on_gc=False: that flag governs implicit GC-time "
                    "deletion, not explicit removal, so this key's artefacts are being unlinked.",
                    key,
                )
            self._remove(key, plan)

    def _plan_removal(self, key: str, checked: StoreKey) -> PurgePlan:
        """Decide what removing ``key`` unlinks, refusing (``StorePurge*Error``, ``KeyError``) before any change."""
        names = artefact_names(self._cache_dir, checked)
        current_pid = os.getpid()
        if current_pid != self._owner_pid:
            raise StorePurgeRefusedError.for_foreign_process(key, self._owner_pid, current_pid)
        if key not in self._store and not any(os.path.lexists(name) for name in names):
            raise KeyError(key)
        return plan_purge(self._cache_dir, key, names, self._live_entries(key))

    def _remove(self, key: str, plan: PurgePlan) -> None:
        """Detach the purge duty on the doomed files, drop ``key`` and unlink its names in order."""
        detach_purge_duty(self._live_entries(), plan.removal_set)
        self._store.pop(key, None)
        self._entry_registry.pop(key, None)
        # As a writer of the key: no pair is renamed in another process while its names go.
        with writer_lock_if_writable(self._directory(), key):
            failures = unlink_in_order(plan.unlink_order)
        if failures:
            survivors = [path for path, _ in failures]
            raise StorePurgeIncompleteError.for_survivors(key, survivors) from failures[0][1]

    # -- renaming ------------------------------------------------------------------------------

    def rename(self, old: str, new: str) -> None:
        """Move the value of ``old`` to the portable key ``new``, crash-safely.

        The value (the live entry's current data if ``old`` is in memory, including unsaved writes,
        else its pair on disk) is committed as ``<new>.npy`` + ``<new>.meta.json`` with the same
        flags, and only then are ``old``'s names unlinked as ``purge(old)`` would (its ``.dat``
        included: the value now lives in the new pair). An interruption leaves the old value, the
        new one or both, never neither. Afterwards ``new`` is tracked (it reloads on access) and
        ``old`` is not; entries of ``old`` still held elsewhere keep their buffer but are no longer
        part of the store.

        ``old`` may be a legacy key (see ``paths``); ``new`` must be a legal key (``StoreKeyError``).
        Refused before anything changes: ``ValueError`` for the same key twice, ``KeyError`` if
        ``new`` is tracked or stored (``Key {new} already exists in store.``) or ``old`` has no value,
        and the refusals of ``purge``. I/O failures raise ``OSError``. Blocks on disk (1 copy).
        """
        source = readable_store_key(old, self._cache_dir)
        target = checked_store_key(new, self._cache_dir)
        if source == target:
            raise ValueError(f"rename() needs two different keys; got {old!r} twice")
        with self._lock:
            if target in self._store or any(
                os.path.lexists(path) for path in (get_npy_path(self._cache_dir, target), self._get_meta_path(target))
            ):
                raise KeyError(f"Key {new} already exists in store.")
            entry = self._store.get(source)
            if entry is None:
                entry = self._load_entry(source)
            plan = self._plan_removal(source, source)
            self._store_entry(target, entry)
            self._store[target] = None
            try:
                self._remove(source, plan)
            except StorePurgeIncompleteError as exc:
                exc.add_note(f"rename({old!r}, {new!r}) committed {new!r} before removing {old!r}'s files")
                raise
            logger.info("Renamed key %r to %r in cache directory %r.", old, new, str(self._cache_dir))

    # -- pickling ------------------------------------------------------------------------------

    def __getstate__(self) -> dict[str, Any]:
        """Write every cached entry as its codec pair (this drops them from memory), return the state.

        Entries with caching off travel inline. The entry registry, the lock and the directory
        finalizer stay behind.
        """
        with self._lock:
            if self._enable_caching:
                # offload(pickle_container=True), minus its warning: entries with caching off
                # travel inline in the pickle, so none is left behind.
                self._write_entries(self._select_for_offload(None), warn_unwritten=False)
            state = {name: value for name, value in self.__dict__.items() if name not in self._TRANSIENT_STATE}
            state["_store"] = dict(self._store)
            return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Check, then restore ``state``; with caching on, reload every key not in memory.

        ``StoreKeyError`` (nothing restored) when ``_cache_dir`` is not a ``Path`` or a tracked
        key is illegal; with keys to reload, an ``OSError`` naming the directory (nothing restored)
        when it is missing or cannot be read. A key whose pair is gone stays ``None`` with a
        WARNING. No sweep, no rescan.
        """
        cache_dir = state.get("_cache_dir")
        if not isinstance(cache_dir, Path):
            raise StoreKeyError(
                f"Cannot restore a DiskBackedStore whose _cache_dir is {cache_dir!r}: expected a pathlib.Path"
            )
        tracked = [readable_store_key(key, cache_dir) for key in state.get("_store", {})]
        stored = sum(value is None for value in state.get("_store", {}).values())
        if state.get("_enable_caching") and stored:
            self._require_directory_for_reload(cache_dir, stored)
        self.__dict__.update(state)
        self.__dict__.setdefault("_store", {})
        self.__dict__.setdefault("_owns_cache_dir", False)
        self._lock = threading.RLock()
        self._entry_registry = {}
        self._arm_directory_removal()
        for key, entry in self._store.items():
            if entry is not None:
                self._register(key, entry)
        if self._enable_caching:
            self._reload_offloaded(tracked)

    @staticmethod
    def _require_directory_for_reload(cache_dir: Path, stored: int) -> None:
        """Check the directory the ``stored`` keys reload from, naming it (not a key) when it is unusable."""
        try:
            require_usable_directory(cache_dir)
        except OSError as exc:
            keys = "key cannot" if stored == 1 else "keys cannot"
            exc.add_note(
                f"while restoring a pickled DiskBackedStore: its cache directory {str(cache_dir)!r} is unusable, "
                f"so its {stored} stored {keys} be reloaded"
            )
            raise

    def _reload_offloaded(self, keys: list[StoreKey]) -> None:
        for key in [key for key in keys if self._store[key] is None]:
            try:
                # The pickled keys are tracked but may have no pair any more: look before opening.
                if not (self._get_npy_path(key).exists() and self._get_meta_path(key).exists()):
                    self._miss(key, key)
                entry = self._load_entry(key)
            except KeyError:
                logger.warning("File for key %s not found in cache directory %s.", key, self._cache_dir)
                continue
            self._store[key] = entry
            self._register(key, entry)
