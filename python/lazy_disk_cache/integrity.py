"""Checking the stored pairs of a cache directory for damage: ``VerifyReport`` and ``verify_directory``.

A stored key is damaged when its pair cannot be read back as what was written: a half is missing, the
sidecar is not a valid schema-1 sidecar, the ``.npy`` header is invalid or disagrees with the file's
size, or the file no longer hashes to the checksum its sidecar records (the core computed it while
writing the file). A pair whose sidecar records no checksum (written by the original package or
before checksums existed) can only be checked for structure: it is *unverified* unless that already
finds damage.

Verification reads each ``.npy`` once, sequentially, through the core, with the GIL released, and
leaves the page cache as it found it. It never writes, so it works in a read-only directory. Loading a
key never verifies it; verification is on demand.

Known limit: a crash (or a failed rename) between a key's two renames leaves the new ``.npy`` beside
the previous sidecar. The key reads correctly (the header is the truth), but its checksum is the
previous payload's, so it is reported as a checksum mismatch until the key is written again.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from lazy_disk_cache._codec import (
    CHECKSUM_FIELD,
    decode_layout,
    parse_sidecar,
    read_sidecar_bytes,
    sidecar_flags,
)
from lazy_disk_cache._directories import open_directory
from lazy_disk_cache._inventory import take_inventory
from lazy_disk_cache._payload_layout import TruncatedPayloadError
from lazy_disk_cache._progress import ProgressCallback, ProgressMeter, reporting
from lazy_disk_cache._rust import CHECKSUM_ALGORITHM, CacheDir
from lazy_disk_cache.paths import get_meta_path, get_npy_path, readable_store_key

__all__ = [
    "CHECKSUM_MISMATCH",
    "INVALID_HEADER",
    "INVALID_SIDECAR",
    "MISSING_PAYLOAD",
    "MISSING_SIDECAR",
    "SIZE_MISMATCH",
    "UNREADABLE",
    "VerifyReport",
    "verify_directory",
]

# The kinds of damage; each reason starts with one of them, followed by ': ' and the details.
MISSING_PAYLOAD = "missing payload"
MISSING_SIDECAR = "missing sidecar"
INVALID_SIDECAR = "invalid sidecar"
INVALID_HEADER = "invalid header"
SIZE_MISMATCH = "size mismatch"
CHECKSUM_MISMATCH = "checksum mismatch"
UNREADABLE = "unreadable"

# A key whose files change while it is checked (a concurrent commit) is checked again, this often.
_ATTEMPTS = 3


@dataclass(frozen=True)
class VerifyReport:
    """The outcome of a verification.

    ``checked`` counts every key examined; ``damaged`` maps each damaged key to the reason (a kind
    such as ``'checksum mismatch'``, then ``': '`` and the details); ``unverified`` lists, sorted, the
    keys whose pair is intact as far as can be told without a recorded checksum. The rest verified.
    """

    checked: int
    damaged: dict[str, str]
    unverified: list[str]

    @property
    def ok(self) -> bool:
        """Whether nothing is damaged (unverified keys do not count as damage)."""
        return not self.damaged

    def to_json(self) -> dict[str, Any]:
        """``{"checked": N, "damaged": {key: reason}, "unverified": [key, ...]}``."""
        return {"checked": self.checked, "damaged": dict(self.damaged), "unverified": list(self.unverified)}


class _Damaged(NamedTuple):
    reason: str


class _Unverified(NamedTuple):
    pass


class _Verified(NamedTuple):
    pass


class _ToHash(NamedTuple):
    name: str
    expected: str
    size: int


_Finding = _Damaged | _Unverified | _Verified | _ToHash

# (inode, size, mtime) of both halves, or None where a half is missing.
_Identity = tuple[tuple[int, int, int] | None, tuple[int, int, int] | None]


def verify_directory(
    cache_dir: Path, keys: Iterable[str] | None = None, *, progress: ProgressCallback | None = None
) -> VerifyReport:
    """Verify the stored pairs of ``keys`` in ``cache_dir`` (every pair found there when ``None``).

    Legacy keys (non-portable names the original wrote) are checked like any other. ``StoreKeyError``
    for an illegal key and ``KeyError`` for a key with neither file, before anything is read.
    ``progress(done_bytes, total_bytes)`` is called from this thread at most about ten times a
    second while payloads are read, and once at the end; what it raises stops the verification and
    propagates. ``OSError`` when the directory cannot be read; an I/O error (``EIO``) reading one file
    is reported as damage of its key instead. Blocks on disk; writes nothing.
    """
    if keys is None:
        chosen = take_inventory(cache_dir).keys
    else:
        chosen = [readable_store_key(key, cache_dir) for key in keys]
        for key in chosen:
            if _identity(cache_dir, key) == (None, None):
                raise KeyError(key)
    directory = open_directory(cache_dir)
    findings: dict[str, _Finding] = {}
    identities: dict[str, _Identity] = {}
    for key in dict.fromkeys(chosen):
        identity = _identity(cache_dir, key)
        if identity != (None, None):
            identities[key] = identity
            findings[key] = _check_structure(directory, cache_dir, key)
    total = sum(finding.size for finding in findings.values() if isinstance(finding, _ToHash))
    with reporting(progress, total) as meter:
        for key, finding in list(findings.items()):
            if isinstance(finding, _ToHash):
                findings[key] = _check_checksum(directory, finding, meter)
            if _identity(cache_dir, key) != identities[key]:
                _recheck(directory, cache_dir, key, findings)
    damaged = {key: finding.reason for key, finding in findings.items() if isinstance(finding, _Damaged)}
    unverified = sorted(key for key, finding in findings.items() if isinstance(finding, _Unverified))
    return VerifyReport(checked=len(findings), damaged=damaged, unverified=unverified)


def _recheck(directory: CacheDir, cache_dir: Path, key: str, findings: dict[str, _Finding]) -> None:
    """Check ``key`` again until its files hold still while it is checked (or give up and keep the last)."""
    for _ in range(_ATTEMPTS):
        before = _identity(cache_dir, key)
        if before == (None, None):
            del findings[key]  # Purged meanwhile: nothing stored is left to check.
            return
        finding = _check_structure(directory, cache_dir, key)
        if isinstance(finding, _ToHash):
            finding = _check_checksum(directory, finding, None)
        findings[key] = finding
        if _identity(cache_dir, key) == before:
            return


def _identity(cache_dir: Path, key: str) -> _Identity:
    return _file_identity(get_npy_path(cache_dir, key)), _file_identity(get_meta_path(cache_dir, key))


def _file_identity(path: Path) -> tuple[int, int, int] | None:
    try:
        info = os.stat(path)
    except OSError:
        return None
    return (info.st_ino, info.st_size, info.st_mtime_ns)


def _check_structure(directory: CacheDir, cache_dir: Path, key: str) -> _Finding:
    """Everything but the checksum: both halves, the sidecar, the header against the file size."""
    npy, meta = get_npy_path(cache_dir, key), get_meta_path(cache_dir, key)
    if not meta.is_file():
        return _Damaged(f"{MISSING_SIDECAR}: {meta.name} does not exist beside {npy.name}")
    if not npy.is_file():
        return _Damaged(f"{MISSING_PAYLOAD}: {npy.name} does not exist beside {meta.name}")
    try:
        sidecar, _ = parse_sidecar(read_sidecar_bytes(directory, meta), key, meta)
        sidecar_flags(sidecar, key)
    except ValueError as exc:
        return _Damaged(f"{INVALID_SIDECAR}: {exc}")
    except OSError as exc:
        return _unreadable(exc)
    checksum = sidecar.get(CHECKSUM_FIELD)
    if checksum is not None and not isinstance(checksum, str):
        return _Damaged(f"{INVALID_SIDECAR}: its {CHECKSUM_FIELD!r} is {checksum!r}, not a string")
    try:
        layout = decode_layout(directory, npy)
        size = os.stat(npy).st_size
    except TruncatedPayloadError as exc:
        return _Damaged(f"{SIZE_MISMATCH}: {exc}")
    except ValueError as exc:
        return _Damaged(f"{INVALID_HEADER}: {exc}")
    except OSError as exc:
        return _unreadable(exc)
    expected_size = layout.offset + layout.nbytes
    if size != expected_size:
        return _Damaged(f"{SIZE_MISMATCH}: {npy.name} holds {size} bytes, its header announces {expected_size}")
    if checksum is None or checksum.partition(":")[0] != CHECKSUM_ALGORITHM:
        # No checksum recorded, or one of an algorithm this version does not know.
        return _Unverified()
    return _ToHash(npy.name, checksum, size)


def _check_checksum(directory: CacheDir, finding: _ToHash, meter: ProgressMeter | None) -> _Finding:
    try:
        actual = directory.checksum(finding.name, progress=None if meter is None else meter.advance)
    except OSError as exc:
        return _unreadable(exc)
    if actual != finding.expected:
        return _Damaged(
            f"{CHECKSUM_MISMATCH}: the sidecar records {finding.expected}, {finding.name} hashes to {actual}"
        )
    return _Verified()


def _unreadable(exc: OSError) -> _Finding:
    """An ``EIO`` is damage of the key; any other ``OSError`` (no permission, ...) is the caller's error.

    A file that vanished while it was checked (``ENOENT``) is reported the same way; the identity
    check that follows sees the change and checks the key again.
    """
    if exc.errno not in (errno.EIO, errno.ENOENT):
        raise exc
    return _Damaged(f"{UNREADABLE}: {exc}")
