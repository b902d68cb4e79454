"""Native core of lazy_disk_cache: every byte of artefact I/O, mappings and .npy headers.

Private module: import from ``lazy_disk_cache`` instead. Every method that touches the disk
releases the GIL while it blocks. Failures raise ``OSError`` subclasses carrying ``errno`` and
``filename`` (``filename2`` for renames), with ``strerror`` exactly ``os.strerror(errno)`` and a
note naming the operation (``during fsync``); ``ValueError`` for malformed headers, short files and
illegal names, ``OverflowError`` for sizes that do not fit, and ``KeyboardInterrupt`` when a long
copy is interrupted (its temp is removed first).
"""

import sys
from collections.abc import Callable, Iterable, Sequence
from os import PathLike
from types import TracebackType
from typing import Literal, Self, final

from typing_extensions import Buffer

__version__: str

# The artefact suffixes; ``lazy_disk_cache.paths`` re-exports them.
NPY_SUFFIX: str
META_SUFFIX: str
MEMMAP_SUFFIX: str
TMP_SUFFIX: str
LEGACY_PICKLE_SUFFIX: str
# The key lock file every writer of a directory shares (``F_OFD_SETLK`` byte locks); never a key.
LOCK_FILE_NAME: str

# The checksum algorithm store writes record, as the prefix of the text ``"<name>:<hex digest>"``.
CHECKSUM_ALGORITHM: str

# Called from the working thread with the bytes moved since its previous call; what it raises stops
# the operation (temps removed) and propagates.
_ChunkProgress = Callable[[int], object]

MappingMode = Literal["r", "r+", "c"]

# What ``CacheDir.collect_working_files`` did with a key's ``.dat``: removed (or would, in a dry run);
# kept because an entry holds it, a writer writes the key, the key has no committed pair, the pair
# holds other bytes (or cannot be read), it changed while compared, it is not a regular file, this
# process may not lock the directory; or there was no such file.
WorkingFileFate = Literal[
    "removed", "held", "writing", "unpaired", "differs", "changed", "not-regular", "refused", "gone"
]

@final
class FileMapping:
    """A memory mapping of one artefact file, exposed through the buffer protocol.

    The file is mapped from offset 0 and the window ``[offset, offset + length)`` is exported.
    It is unmapped only when the last reference goes; there is no ``close()``. Not picklable.
    """

    @staticmethod
    def open(
        dir: CacheDir,
        name: str,
        *,
        mode: MappingMode = "r",
        offset: int = 0,
        length: int | None = None,
    ) -> FileMapping:
        """Map ``name`` inside ``dir``. O(1): open, fstat, mmap, close; reads no data.

        ``length=None`` maps to the end of the file. A file shorter than ``offset + length``
        raises ``ValueError``; ``r`` and ``c`` need only read permission.
        """

    @property
    def mode(self) -> MappingMode: ...
    @property
    def offset(self) -> int: ...
    @property
    def length(self) -> int: ...
    @property
    def readonly(self) -> bool: ...
    @property
    def exports(self) -> int:
        """Number of live buffer exports (memoryviews and the like)."""

    @property
    def identity(self) -> tuple[int, int]:
        """The mapped file's device and inode numbers, as they were when it was mapped."""
    @property
    def path(self) -> str:
        """The mapped file's path, for messages and ``np.memmap.filename``."""

    def flush(self) -> None:
        """``msync(MS_SYNC)`` for ``r+`` mappings, a no-op otherwise. Blocks; GIL released."""
    def has_private_pages(self) -> bool:
        """Whether a page of a ``c`` window was written (holds a private copy); ``False`` for ``r``/``r+``.

        Reads ``/proc/self/pagemap`` for the window's pages (no data), stopping at the first written
        one; ``True`` when that cannot be told. GIL released.
        """
    if sys.version_info >= (3, 12):
        def __buffer__(self, flags: int, /) -> memoryview: ...
        def __release_buffer__(self, buffer: memoryview, /) -> None: ...

@final
class NpyHeader:
    """A decoded ``.npy`` header; ``descr`` is the Python literal text of the dtype description."""

    @property
    def descr(self) -> str: ...
    @property
    def fortran_order(self) -> bool: ...
    @property
    def shape(self) -> tuple[int, ...]: ...
    @property
    def data_offset(self) -> int: ...
    @property
    def file_len(self) -> int: ...
    @property
    def version(self) -> tuple[int, int]: ...

@final
class CacheDir:
    """An open directory; every artefact operation is ``(this directory, one name)``.

    Names are single path segments: ``/``, NUL, ``.`` and ``..`` raise ``ValueError``. Symlinks
    at artefact names are never followed for writing.
    """

    @staticmethod
    def open(path: str | PathLike[str], *, create: bool = False) -> CacheDir:
        """Open ``path`` (resolving a symlinked root once); ``create`` makes it and its parents,
        fsyncing each new directory in its parent."""

    @property
    def path(self) -> str: ...
    def write_file(
        self,
        name: str,
        src: Buffer | Iterable[Buffer],
        *,
        nbytes: int | None = None,
        chunk_bytes: int,
        durable: bool,
        progress: _ChunkProgress | None = None,
    ) -> FileMapping:
        """Atomically replace ``name`` with the bytes of ``src`` and return an ``r+`` mapping of it.

        ``src`` is one buffer, or an iterable of buffers whose total must equal ``nbytes``. A
        buffer in any layout is written in C order: a strided or Fortran-ordered one is gathered
        through one bounce buffer of at most ``chunk_bytes`` (and at most 4 MiB), never copied
        whole. Creates ``<name>.tmp`` with ``O_EXCL|O_NOFOLLOW`` (a temp its writer still holds
        locked is waited for, a stale one is unlinked first), reserves the full size, writes with
        ``pwrite`` in pieces of at most ``chunk_bytes``, then (``durable`` only) fsyncs, renames
        over ``name`` and (``durable`` only) fsyncs the directory. The temp gets the existing destination's mode, else
        ``0666 & ~umask``. On any error the temp is removed and the destination is unchanged.
        ``progress`` hears the bytes written, between pieces (at most 64 MiB apart) and once more
        when all are written, before the rename. 1 copy, GIL released between blocks.
        """

    def write_zeroed(self, name: str, nbytes: int, *, durable: bool) -> FileMapping:
        """Atomically replace ``name`` with ``nbytes`` reserved zero bytes; return an ``r+`` mapping."""

    def copy_range(
        self,
        src: str,
        src_offset: int,
        dst: str,
        length: int,
        *,
        chunk_bytes: int,
        durable: bool,
        patch: FileMapping | None = None,
    ) -> FileMapping:
        """Atomically replace ``dst`` with bytes ``[src_offset, src_offset + length)`` of ``src``.

        Uses a reflink (``FICLONERANGE``) where both ranges are block-aligned, else
        ``copy_file_range`` in pieces of ``chunk_bytes``, else a bounce buffer of at most
        ``chunk_bytes`` (and at most 4 MiB). ``patch``, a ``c`` mapping of exactly that range,
        supplies its written pages from memory instead (all of it when they cannot be told).
        Returns an ``r+`` mapping of ``dst``.
        """

    def checksum(self, name: str, *, progress: _ChunkProgress | None = None) -> str:
        """The checksum of the whole file ``name``: ``"<CHECKSUM_ALGORITHM>:<16 hex digits>"``.

        Reads the file once, sequentially, through read-only mappings of 8 MiB at a time (the
        resident memory it adds), and afterwards drops from the page cache exactly the pages it
        brought in (pages cached before stay), so checking a store larger than RAM evicts nobody's
        working set. ``progress`` hears the bytes read, between windows and once at the end.
        Writes nothing; GIL released.
        """

    def read_header(self, name: str) -> NpyHeader:
        """Decode the ``.npy`` header of ``name`` (one small pread). Malformed → ``ValueError``."""

    def read_npy(self, name: str, *, map_mode: Literal["r", "c"] | None = None) -> tuple[NpyHeader, FileMapping | None]:
        """Decode the ``.npy`` header of ``name`` and, with ``map_mode``, map its payload, through one open.

        The mapping's window runs from the header's data offset to the end of the file (a file
        shorter than its header announces is the caller's to refuse). Malformed → ``ValueError``.
        """

    def read_pair(
        self, meta_name: str, npy_name: str, *, map_mode: Literal["r", "c"]
    ) -> tuple[bytes | None, tuple[NpyHeader, FileMapping | None] | None, OSError | ValueError | None]:
        """Read the sidecar ``meta_name`` and the ``.npy`` header of ``npy_name``, its payload mapped in ``map_mode``.

        One call for both halves of a stored pair. ``(None, None, None)`` when the sidecar is
        missing (the ``.npy`` is then not opened); a missing ``.npy`` gives ``(raw, None, None)``; one
        that cannot be read for another reason gives its exception as the third item, for the
        caller to raise after judging the sidecar. Other failures to read the sidecar raise.
        """

    def refuses_writes(self) -> bool:
        """Whether this process may not create files here (permissions, or a read-only mount). Two system calls."""

    def read_file(self, name: str) -> bytes:
        """Read all of the small file ``name`` (a sidecar). Blocks on disk; GIL released."""

    def read_into(self, name: str, offset: int, dest: Buffer, *, chunk_bytes: int) -> None:
        """Fill the writable C-contiguous ``dest`` from ``name`` at ``offset``.

        ``pread`` in pieces of ``chunk_bytes``, GIL released.

        A file too short to fill ``dest`` raises ``ValueError``.
        """

    def begin_commit(self, *, chunk_bytes: int) -> CommitBatch:
        """Start a group commit of ``.npy`` + ``.meta.json`` pairs in this directory.

        ``chunk_bytes`` is the budget of every payload the batch writes (as for ``write_file``).
        """

    def sweep_temps(
        self, names: Sequence[str] | None = None, *, dry_run: bool = False
    ) -> tuple[list[str], list[tuple[str, OSError]]]:
        """Remove ``<key>.npy.tmp``, ``<key>.meta.json.tmp`` and ``<key>.dat.tmp`` left by a crash.

        With ``names``, only those names are candidates (the directory is not listed), so a
        caller applying a stricter key rule decides what may go. Never follows a symlink; skips
        temps a live writer holds locked, and the pair temps of every key whose writer lock
        (``lock_key``) is held in any process. Returns the removed names and the names that
        could not be removed with their errors. A read-only directory yields two empty lists.
        ``dry_run`` (which needs ``names``; ``ValueError`` otherwise) decides the same way, locks
        included, but removes nothing and returns the names it would remove.
        """

    def collect_working_files(
        self, keys: Sequence[str], *, dry_run: bool = False
    ) -> tuple[list[tuple[str, WorkingFileFate]], list[tuple[str, OSError]]]:
        """Remove each ``<key>.dat`` of ``keys`` that no live entry holds and whose committed pair duplicates it.

        Returns what became of each key's ``.dat`` and the keys that failed, each with its ``OSError``.
        A ``.dat`` goes only when the key has a regular ``<key>.npy`` and ``<key>.meta.json``,
        nobody holds the key (``hold_key``) or writes it (``lock_key``), and the ``.npy`` payload has
        the ``.dat``'s length and bytes (compared byte for byte, GIL released, memory bounded by two
        8 MiB windows, the page cache left as found); the locks are taken again, without waiting,
        around the final check and the unlink. ``dry_run`` decides the same way and removes nothing.
        A key this process may not lock (a read-only directory) is ``"refused"``. Ctrl-C stops it.
        """

    def hold_key(self, key: str) -> KeyHolder | None:
        """Announce that this process holds an entry whose data is ``<key>.dat`` (a shared lock).

        The first holder of a key in this process costs one ``fcntl``, later ones none; the key stays
        held until this process's last ``KeyHolder`` of it is released. Waits (GIL released) only
        while a garbage collection probes the key, at most about 50 ms; ``None`` if it outlasted
        that. A directory whose lock file this process may not open for writing raises
        ``PermissionError`` (or ``OSError(EROFS)``).
        """

    def lock_key(self, key: str) -> KeyLock:
        """Become the writer of ``key`` in this directory, waiting (GIL released) for any other one.

        A cross-process lock on one byte of ``LOCK_FILE_NAME`` (created on first use, ``0666 &
        ~umask``, never through a link), exclusive also between threads of this process.
        """

    def try_lock_key(self, key: str) -> KeyLock | None:
        """Like ``lock_key``, but ``None`` at once when another writer holds ``key``."""

    def reserve_region(
        self,
        key: str,
        *,
        descr: str,
        fortran_order: bool,
        shape: Sequence[int],
        nbytes: int,
        nonce: int,
    ) -> Region:
        """Become ``key``'s writer and reserve ``<key>.npy.tmp`` for blocks written by any process.

        Writes the header (payload at byte 4096) and ``nonce`` (a u64) in an 8-byte trailer
        after the payload; ``Region.commit`` drops the trailer.
        """

    def write_block(
        self,
        temp: str,
        source: Buffer,
        *,
        nonce: int,
        data_offset: int,
        nbytes: int,
        shape: Sequence[int],
        start: Sequence[int],
        extent: Sequence[int],
        itemsize: int,
    ) -> None:
        """Write one block of a C-ordered array into the reserved temp ``temp``. GIL released.

        ``source`` holds the block (any layout; gathered into C order), which starts at index
        ``start`` with extents ``extent`` in an array of ``shape``. The temp is opened without
        following a link and without creating it; one whose size or trailer does not match
        ``nonce`` / ``data_offset`` / ``nbytes`` raises ``OSError(ESTALE)``. Partial rows are
        written one run each.
        """

    def unlink_all(self, names: Sequence[str], *, durable: bool = False) -> list[tuple[str, OSError]]:
        """Unlink each name (never following a symlink); missing names are not errors.

        Returns the names that could not be unlinked with their errors. With ``durable``, the
        directory is fsynced once after the unlinks (when something was removed), so a removal
        survives a power cut; a failed fsync raises ``OSError`` unless an unlink failed too.
        """

@final
class CommitBatch:
    """A group commit: write every pair's temps, then rename them all and fsync the directory once.

    Leaving the ``with`` block without ``commit()`` aborts: every temp written so far is removed.
    Written temps are fsynced by up to 8 threads of the batch while later keys are written. A batch
    keeps a bounded number of descriptors open however many keys it stages: each temp is closed
    once it is fsynced and the queue to the fsync threads is bounded; the key's writer lock (held
    from ``add_npy`` to commit or abort) keeps ``sweep_temps`` and other writers away from its
    temps. When another writer holds a key's lock, ``add_npy`` first commits the keys already
    staged, then waits: each key stays old or new.
    """

    def add_npy(
        self,
        key: str,
        *,
        descr: str,
        fortran_order: bool,
        shape: Sequence[int],
        nbytes: int,
        meta: bytes | Callable[[str | None], bytes],
        source: Buffer | Iterable[Buffer] | None = None,
        source_file: str | None = None,
        source_offset: int = 0,
        progress: _ChunkProgress | None = None,
    ) -> tuple[int, str | None, tuple[int, int]]:
        """Write ``<key>.npy.tmp`` (payload at byte 4096), then ``<key>.meta.json.tmp``; queue their fsyncs.

        Returns where the payload starts in the ``.npy`` (4096, or 64-aligned for a header too long
        for one page or an empty payload), the checksum of the whole ``.npy`` (as ``checksum()``
        would compute it; ``None`` while checksums are switched off) and which file the ``.npy``
        is (device and inode numbers, as ``FileMapping.identity``), so that a mapping made by name
        after the commit can be told from one of a file another writer renamed over it since.

        The payload comes from ``source`` (a buffer in any layout, written in C order, or
        buffers totalling ``nbytes``)
        or from ``nbytes`` bytes of the file ``source_file`` in this directory starting at
        ``source_offset`` (reflink or ``copy_file_range``; no user-space copy: the checksum then
        reads the source once through read-only mappings). The writeback of a large payload starts
        while it is written. The whole ``.npy`` is hashed as it is written. ``meta`` is the sidecar,
        or a callable that builds it from that checksum once the payload is written. ``progress``
        hears the payload bytes written. On failure (``meta`` and ``progress`` raising included)
        this key's temps are removed, the error is raised, and the keys added before it remain in
        the batch, ready for ``commit()``. A failed fsync is reported by ``commit()``.
        """

    def commit(self) -> None:
        """Wait for every fsync, rename every pair (``.npy`` first, then ``.meta.json``), fsync the directory once.

        Pairs are renamed in the order they were added, up to the first key whose fsync failed:
        that key and every later one keep their previous files (their temps are removed, a failed
        fsync is never retried) and its error is raised after the earlier keys are committed. On
        a rename failure the remaining temps are removed, the directory is fsynced and the error
        is raised; keys renamed before it are committed. ``committed`` names the committed keys.
        """

    @property
    def committed(self) -> list[str]:
        """The keys the last ``commit()`` renamed into place and made durable (also after it raised).

        Empty after a failed directory fsync: no key is known to be durable then.
        """

    def abort(self) -> None:
        """Remove every temp written by this batch. Idempotent."""

    @property
    def keys(self) -> list[str]:
        """Keys written to temps and not yet committed or aborted."""

    def __enter__(self) -> Self: ...
    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

@final
class KeyLock:
    """A key's writer lock; released by ``release()``, leaving the ``with`` block, or collection."""

    def release(self) -> None:
        """Let the next writer of the key in. Idempotent."""

    @property
    def held(self) -> bool: ...
    def __enter__(self) -> Self: ...
    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

@final
class KeyHolder:
    """This process's hold on a key's ``.dat`` (``CacheDir.hold_key``); released by ``release()`` or collection.

    A holder inherited by a forked child releases nothing: the key stays held by its parent.
    """

    def release(self) -> None:
        """Withdraw this hold (the key stays held while another of this process lives). Idempotent."""

    @property
    def held(self) -> bool: ...

@final
class Region:
    """A reserved ``<key>.npy.tmp`` filled by ``CacheDir.write_block`` calls, committed by its owner.

    The owner holds the key's writer lock until ``commit()`` or ``abort()``; leaving the ``with``
    block without ``commit()`` aborts (the temp is removed). Not picklable: block writers get
    ``temp_name``, ``nonce``, ``data_offset`` and ``nbytes``.
    """

    @property
    def temp_name(self) -> str: ...
    @property
    def data_offset(self) -> int: ...
    @property
    def nbytes(self) -> int: ...
    @property
    def nonce(self) -> int: ...
    @property
    def open(self) -> bool:
        """Whether neither ``commit()`` nor ``abort()`` has run."""

    def commit(self, meta: bytes) -> None:
        """Drop the trailer, fsync, write the sidecar temp from ``meta``, rename the pair, fsync the directory.

        Call it only when every block is written. On failure both temps are removed.
        """

    def abort(self) -> None:
        """Remove the temp and release the key. Idempotent."""

    def __enter__(self) -> Self: ...
    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

def _inject_fault(op: str, nth: int, errno: int) -> None:
    """Testing seam: make the ``nth`` (1-based) future call of ``op`` fail with ``errno``.

    ``op`` is one of ``create``, ``reserve``, ``write``, ``read``, ``copy`` (a reflink or
    ``copy_file_range`` call), ``fsync``, ``dir_fsync``, ``rename``, ``unlink``, ``map``.
    Process-global; inert until called.
    """

def _set_checksums(enabled: bool) -> None:
    """Benchmark seam: whether store writes compute and record checksums (on by default)."""

def _clear_faults() -> None:
    """Testing seam: drop every pending fault and reset the operation counters."""

def _op_counts() -> dict[str, int]:
    """Testing seam: how many times each filesystem operation ran since the last reset."""
