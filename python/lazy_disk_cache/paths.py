"""Store keys and the file names derived from them.

A key is one path segment. Everything that turns a key into a path goes through this module, so
the key rule and the containment check live in exactly one place. Key validation is pure string
work and never touches the filesystem; the builders and containment helpers resolve symbolic links
(read-only system calls) and never write.

A key is checked once, where it enters the package (``checked_store_key``), and travels inward as a
``StoreKey``; the builders and the store's private entry points take a ``StoreKey`` as checked and
check anything else.

*Legacy keys* break only the portability clauses of the rule (a ``':'``, a reserved device name, a
trailing dot or space, the length limit) while still being one plain POSIX file name: directories
written before the rule existed hold them. They may be read, purged and renamed, never created:
``readable_store_key`` admits them where the store reads, ``checked_store_key`` refuses them.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from pathlib import Path, PurePosixPath, PureWindowsPath
from types import MappingProxyType
from typing import TypeAlias

from lazy_disk_cache._rust import (
    LEGACY_PICKLE_SUFFIX,
    LOCK_FILE_NAME,
    MEMMAP_SUFFIX,
    META_SUFFIX,
    NPY_SUFFIX,
    TMP_SUFFIX,
)
from lazy_disk_cache.errors import StoreContainmentError, StoreKeyError, non_str_key_error

__all__ = [
    "CLAUSE_ABSOLUTE",
    "CLAUSE_CONTROL",
    "CLAUSE_ENCODING",
    "CLAUSE_LENGTH",
    "CLAUSE_RESERVED",
    "CLAUSE_SEPARATOR",
    "CLAUSE_TRAILING",
    "LEGACY_PICKLE_SUFFIX",
    "LOCK_FILE_NAME",
    "MAX_KEY_UTF8_BYTES",
    "MEMMAP_SUFFIX",
    "META_SUFFIX",
    "NPY_SUFFIX",
    "STORE_PATH_BUILDERS",
    "TMP_SUFFIX",
    "StoreContainmentError",
    "StoreKey",
    "StoreKeyError",
    "artefact_suffix",
    "checked_store_key",
    "ensure_contained",
    "ensure_write_contained",
    "get_legacy_pickle_path",
    "get_memmap_path",
    "get_memmap_tmp_path",
    "get_meta_path",
    "get_meta_tmp_path",
    "get_npy_path",
    "get_npy_tmp_path",
    "is_legacy_store_key",
    "is_our_temp_name",
    "is_readable_store_key",
    "is_valid_store_key",
    "key_from_npy_name",
    "legacy_key_from_npy_name",
    "readable_store_key",
    "split_artefact_name",
    "validate_store_key",
    "violated_clause",
]

logger = logging.getLogger(__name__)


CLAUSE_RESERVED = "is empty or a reserved path name"
CLAUSE_CONTROL = "contains a control character"
CLAUSE_ABSOLUTE = "is an absolute or drive-relative path"
CLAUSE_SEPARATOR = "contains a path separator"
CLAUSE_TRAILING = "ends in a space or a dot"
CLAUSE_ENCODING = "is not encodable as a file name"
CLAUSE_LENGTH = "is too long for a file name"

# NAME_MAX on Linux and most POSIX file systems: the longest single file name, in bytes.
_NAME_MAX_BYTES = 255
# The longest name built from a key is '<key>.meta.json.tmp', so the key gets what the 14 bytes
# of that suffix leave of NAME_MAX: 255 - 14 = 241 UTF-8 bytes.
MAX_KEY_UTF8_BYTES = _NAME_MAX_BYTES - len(META_SUFFIX + TMP_SUFFIX)

# A legacy key must leave room for its sidecar '<key>.meta.json' within NAME_MAX (the longest name a
# store reads), so every name a read or a purge builds from it can exist: 255 - 10 = 245 bytes.
_MAX_LEGACY_KEY_UTF8_BYTES = _NAME_MAX_BYTES - len(META_SUFFIX)

_DOT_NAMES = frozenset({"", ".", ".."})
_CONTROL_CHARACTERS = frozenset([*map(chr, range(0x20)), "\x7f"])
# Characters that can make a string anything but one plain segment under either path flavour.
_PATH_SYNTAX_CHARACTERS = frozenset("/\\:")
_DEVICE_NAMES = frozenset(
    {
        "CON",
        "PRN",
        "AUX",
        "NUL",
        "CONIN$",
        "CONOUT$",
        *(f"{port}{digit}" for port in ("COM", "LPT") for digit in "0123456789\u00b9\u00b2\u00b3"),
    }
)

_ARTEFACT_SUFFIXES = tuple(
    sorted(
        (
            suffix + tmp
            for suffix in (NPY_SUFFIX, META_SUFFIX, LEGACY_PICKLE_SUFFIX, MEMMAP_SUFFIX)
            for tmp in ("", TMP_SUFFIX)
        ),
        key=len,
        reverse=True,
    )
)
_OUR_TEMP_SUFFIXES = (NPY_SUFFIX + TMP_SUFFIX, META_SUFFIX + TMP_SUFFIX, MEMMAP_SUFFIX + TMP_SUFFIX)

_StrPath: TypeAlias = str | os.PathLike[str]
_PathBuilder: TypeAlias = Callable[[_StrPath, str], Path]


def _as_plain_str(key: str) -> str:
    # A str subclass may override rstrip, split, __add__ and friends; the rule and the builders
    # must see the exact characters, so they work on an exact str copy.
    return key if type(key) is str else str.__str__(key)


def _has_anchor_or_drive(key: str) -> bool:
    posix, windows = PurePosixPath(key), PureWindowsPath(key)
    return ":" in key or bool(posix.anchor or windows.anchor or windows.drive)


def _device_stem(key: str) -> str:
    stem = key.split(".", 1)[0]
    if "." not in key:
        return stem
    # Spaces before a dot are dropped from the stem ('CON .txt' is CON), but not the spaces of the
    # key's own trailing run ('CON .' keeps 'CON ' and is refused as trailing instead).
    trailing_start = len(key.rstrip(" ."))
    return stem[:trailing_start].rstrip(" ") + stem[trailing_start:]


def _violated_clause(key: str) -> str | None:
    """Return the first clause of the key rule that ``key`` breaks, or ``None`` if it is legal."""
    if key in _DOT_NAMES:
        return CLAUSE_RESERVED
    if not _CONTROL_CHARACTERS.isdisjoint(key):
        return CLAUSE_CONTROL
    # Without '/', '\' or ':' neither flavour sees an anchor, a drive or a second part (the
    # one-part rule of the separator clause), so the pure-path parsing runs only for keys that
    # are refused either way: with no anchor and no ':', a '/' or '\' must be present.
    if not _PATH_SYNTAX_CHARACTERS.isdisjoint(key):
        return CLAUSE_ABSOLUTE if _has_anchor_or_drive(key) else CLAUSE_SEPARATOR
    if _device_stem(key).upper() in _DEVICE_NAMES:
        return CLAUSE_RESERVED
    if key.rstrip(" .") != key:
        return CLAUSE_TRAILING
    try:
        encoded = key.encode("utf-8")
    except UnicodeEncodeError:
        return CLAUSE_ENCODING
    if len(encoded) > MAX_KEY_UTF8_BYTES:
        return CLAUSE_LENGTH
    return None


class StoreKey(str):
    """A store key that passed the key rule: exactly the characters that were checked.

    Only ``checked_store_key`` makes one (a ``StoreKey`` built by hand is not checked by anyone).
    It behaves as the plain ``str`` it holds and pickles as one.
    """

    __slots__ = ()

    def __reduce__(self) -> tuple[type[str], tuple[str]]:
        return (str, (str.__str__(self),))


def _legal_characters(key: object, cache_dir: _StrPath | None) -> str:
    """The exact characters of ``key`` as a plain ``str`` if it is a legal key; raise otherwise."""
    if not isinstance(key, str):
        raise non_str_key_error(key)
    plain = _as_plain_str(key)
    clause = _violated_clause(plain)
    if clause is not None:
        raise StoreKeyError.for_clause(plain, cache_dir, clause)
    return plain


def _is_plain_posix_name(key: str) -> bool:
    """Whether ``key`` is one POSIX file name a store could have written: no separator, no control
    character, not a dot name, UTF-8 encodable and short enough for its sidecar's name."""
    if key in _DOT_NAMES or "/" in key or "\\" in key or not _CONTROL_CHARACTERS.isdisjoint(key):
        return False
    try:
        return len(key.encode("utf-8")) <= _MAX_LEGACY_KEY_UTF8_BYTES
    except UnicodeEncodeError:
        return False


def _is_legacy(plain: str) -> bool:
    # Given no separator, control character or dot name, the clauses a key can still break are
    # exactly the portability ones: ':' (absolute), device names, trailing dot or space, length.
    return _violated_clause(plain) is not None and _is_plain_posix_name(plain)


def violated_clause(key: str) -> str | None:
    """Return the ``CLAUSE_*`` text of the first clause of the key rule ``key`` breaks, or ``None``. Pure."""
    return _violated_clause(_as_plain_str(key))


def validate_store_key(key: object, cache_dir: _StrPath | None = None) -> None:
    """Check that ``key`` is a legal store key: one file-name segment, usable on any platform.

    The characters are taken exactly as given (no case folding, no Unicode normalisation). The
    clauses are checked in a fixed order and the first one broken is reported. Pure string work:
    no filesystem access, whatever ``cache_dir`` is; ``cache_dir`` only names the directory in
    the message.

    Raises:
        StoreKeyError: ``key`` is a ``str`` that breaks the rule; the message contains the clause.
        StoreKeyError: ``key`` is not a ``str``; the error is also a ``TypeError``.
    """
    _legal_characters(key, cache_dir)


def checked_store_key(key: object, cache_dir: _StrPath | None = None) -> StoreKey:
    """Return ``key`` as a ``StoreKey`` after checking it like ``validate_store_key`` (same errors).

    A ``StoreKey`` is returned as it is, unchecked: it was checked when it was made. A ``str``
    subclass is reduced to its exact characters, so its overrides never reach a path. Pure string
    work.
    """
    if type(key) is StoreKey:
        return key
    return StoreKey(_legal_characters(key, cache_dir))


def readable_store_key(key: object, cache_dir: _StrPath | None = None) -> StoreKey:
    """Return ``key`` as a ``StoreKey`` if it is a legal key or a legacy key; raise like ``checked_store_key``.

    For the routes that read, purge or rename what is already on disk. A legacy key breaks only the
    portability clauses (``':'``, a device name, a trailing dot or space, the length limit) and is
    one plain POSIX file name, so its paths stay inside the directory. Pure string work.
    """
    if type(key) is StoreKey:
        return key
    if not isinstance(key, str):
        raise non_str_key_error(key)
    plain = _as_plain_str(key)
    clause = _violated_clause(plain)
    if clause is not None and not _is_plain_posix_name(plain):
        raise StoreKeyError.for_clause(plain, cache_dir, clause)
    return StoreKey(plain)


def is_valid_store_key(key: object) -> bool:
    """Return whether ``validate_store_key(key)`` would accept ``key``; ``False`` for any non-``str``."""
    return isinstance(key, str) and _violated_clause(_as_plain_str(key)) is None


def is_legacy_store_key(key: object) -> bool:
    """Return whether ``key`` is a legacy key: illegal only for portability, readable but never created.

    Such keys (``'tile:0_0'``, ``'CON'``, ``'a.'``, 242 to 245 bytes long) are single POSIX file
    names that stores written before the key rule may hold. ``False`` for legal keys and non-``str``.
    """
    return isinstance(key, str) and _is_legacy(_as_plain_str(key))


def is_readable_store_key(key: object) -> bool:
    """Return whether ``key`` is legal or legacy, i.e. whether ``readable_store_key`` accepts it."""
    # Every legal key is a plain POSIX name too (the rule is stricter on every point).
    return isinstance(key, str) and _is_plain_posix_name(_as_plain_str(key))


def _is_strictly_inside(path: str, root: str) -> bool:
    # Both come from os.path.realpath (absolute, normalised, no trailing separator except for the
    # root itself), so a prefix test on whole components is exact and cheaper than PurePath logic.
    prefix = root if root.endswith(os.sep) else root + os.sep
    return path.startswith(prefix) and len(path) > len(prefix)


def _check_containment(candidate: Path, cache_dir: Path, key: str, *, follow_final_link: bool) -> None:
    # '..' as the final component would step out after the parent was judged; '' is a root.
    if candidate.name in _DOT_NAMES:
        raise _refuse(candidate, cache_dir, key, "its final component is not a file name")
    # os.path.realpath rather than Path.resolve: on Python 3.11 resolve() turns a symlink loop into
    # RuntimeError, while realpath stops at the loop and reports where it is, which we can judge.
    # A candidate directly in ``cache_dir`` is inside whatever the directory resolves to, so the
    # two realpath walks are only needed for a candidate named through another parent.
    root: str | None = None
    if candidate.parent != cache_dir:
        root = os.path.realpath(cache_dir)
        if not _is_strictly_inside(os.path.join(os.path.realpath(candidate.parent), candidate.name), root):
            raise _refuse(candidate, cache_dir, key, "its parent resolves elsewhere")
    if follow_final_link and os.path.islink(candidate):
        root = root if root is not None else os.path.realpath(cache_dir)
        if not _is_strictly_inside(os.path.realpath(candidate), root):
            raise _refuse(candidate, cache_dir, key, "it is a symbolic link leading elsewhere")


def _refuse(candidate: Path, cache_dir: Path, key: str, reason: str) -> StoreContainmentError:
    logger.debug("Refusing store path %s for key %r: %s", candidate, key, reason)
    return StoreContainmentError.for_path(candidate, key, cache_dir)


def ensure_contained(candidate: _StrPath, cache_dir: _StrPath, key: str) -> None:
    """Check that ``candidate`` names an entry directly or indirectly inside ``cache_dir``.

    The parent of ``candidate`` is fully resolved and joined with its final component, which is
    deliberately left unresolved: a symbolic link adopted into the directory stays usable, and
    a cache directory that is itself a link works. Reads the filesystem (``realpath``), writes
    nothing.

    Raises:
        StoreContainmentError: the candidate lands outside ``cache_dir`` or is the directory itself.
    """
    _check_containment(Path(candidate), Path(cache_dir), key, follow_final_link=False)


def ensure_write_contained(candidate: _StrPath, cache_dir: _StrPath, key: str) -> None:
    """Check containment before writing through ``candidate`` (see ``ensure_contained``).

    In addition, when ``candidate`` is a symbolic link, the link's full resolution must be inside
    ``cache_dir`` too, so that a write or an unlink never reaches a file elsewhere. Reads the
    filesystem (``lstat``, ``realpath``), writes nothing.

    Raises:
        StoreContainmentError: the candidate, or the file its link leads to, is outside ``cache_dir``.
    """
    _check_containment(Path(candidate), Path(cache_dir), key, follow_final_link=True)


def _artefact_name(key: str, suffix: str) -> str:
    # String concatenation, never with_suffix: 'a.b' must become 'a.b.npy', not 'a.npy'.
    return key + suffix


def _build(cache_dir: _StrPath, key: str, suffix: str) -> Path:
    checked = checked_store_key(key, cache_dir)
    directory = cache_dir if isinstance(cache_dir, Path) else Path(cache_dir)
    name = _artefact_name(checked, suffix)
    candidate = directory / name
    # The containment rule holds by construction here, with no need to resolve anything: the
    # candidate's parent is ``directory`` itself and its final component is one checked segment
    # (never '', '.' or '..'), which containment deliberately leaves unresolved. Checking it
    # anyway would cost two realpath walks per artefact name on every store operation. A
    # ``StoreKey`` built by hand around the rule still cannot leave the directory. (String tests:
    # a name without a separator is the candidate's final component, and its parent ``directory``.)
    if "/" in name or "\\" in name or name in _DOT_NAMES:
        ensure_contained(candidate, directory, checked)
    return candidate


def get_npy_path(cache_dir: _StrPath, key: str) -> Path:
    """Return ``<cache_dir>/<key>.npy``, the payload of a stored entry.

    Validates ``key`` (``StoreKeyError``, before any filesystem access; a ``StoreKey`` is already
    checked) and checks containment (``StoreContainmentError``; reads the filesystem, writes
    nothing).
    """
    return _build(cache_dir, key, NPY_SUFFIX)


def get_meta_path(cache_dir: _StrPath, key: str) -> Path:
    """Return ``<cache_dir>/<key>.meta.json``, the sidecar of a stored entry (checks as ``get_npy_path``)."""
    return _build(cache_dir, key, META_SUFFIX)


def get_legacy_pickle_path(cache_dir: _StrPath, key: str) -> Path:
    """Return ``<cache_dir>/<key>.pkl``, a legacy file that is never read or written (checks as ``get_npy_path``)."""
    return _build(cache_dir, key, LEGACY_PICKLE_SUFFIX)


def get_npy_tmp_path(cache_dir: _StrPath, key: str) -> Path:
    """Return ``<cache_dir>/<key>.npy.tmp``, the payload's commit temp (checks as ``get_npy_path``)."""
    return _build(cache_dir, key, NPY_SUFFIX + TMP_SUFFIX)


def get_meta_tmp_path(cache_dir: _StrPath, key: str) -> Path:
    """Return ``<cache_dir>/<key>.meta.json.tmp``, the sidecar's commit temp (checks as ``get_npy_path``)."""
    return _build(cache_dir, key, META_SUFFIX + TMP_SUFFIX)


def get_memmap_path(cache_dir: _StrPath, key: str) -> Path:
    """Return ``<cache_dir>/<key>.dat``, the live memory-mapped file (checks as ``get_npy_path``)."""
    return _build(cache_dir, key, MEMMAP_SUFFIX)


def get_memmap_tmp_path(cache_dir: _StrPath, key: str) -> Path:
    """Return ``<cache_dir>/<key>.dat.tmp``, the live file's conversion temp (checks as ``get_npy_path``)."""
    return _build(cache_dir, key, MEMMAP_SUFFIX + TMP_SUFFIX)


STORE_PATH_BUILDERS: Mapping[str, _PathBuilder] = MappingProxyType(
    {
        "npy": get_npy_path,
        "meta": get_meta_path,
        "legacy_pickle": get_legacy_pickle_path,
        "npy_tmp": get_npy_tmp_path,
        "meta_tmp": get_meta_tmp_path,
        "memmap": get_memmap_path,
        "memmap_tmp": get_memmap_tmp_path,
    }
)


def artefact_suffix(name: str) -> str | None:
    """Return the longest store artefact suffix ``name`` ends with, or ``None``.

    The artefact suffixes are ``.npy``, ``.meta.json``, ``.pkl``, ``.dat`` and their ``.tmp``
    forms; ``'k.meta.json.tmp'`` gives ``'.meta.json.tmp'``, ``'k.json'`` gives ``None``. Purely
    lexical and case-sensitive.
    """
    return next((suffix for suffix in _ARTEFACT_SUFFIXES if name.endswith(suffix)), None)


def key_from_npy_name(name: str) -> str | None:
    """Return the store key a ``<key>.npy`` file name stands for, or ``None`` if it is not one.

    Only the final ``.npy`` is stripped: ``'a.npy.npy'`` is key ``'a.npy'``. The key must be legal
    and must rebuild exactly ``name``. Pure string work.
    """
    if len(name) <= len(NPY_SUFFIX) or not name.endswith(NPY_SUFFIX):
        return None
    key = name[: -len(NPY_SUFFIX)]
    return key if _is_name_of(key, NPY_SUFFIX, name) else None


def legacy_key_from_npy_name(name: str) -> str | None:
    """Return the legacy key a ``<key>.npy`` file name stands for, or ``None`` if it is not one.

    Like ``key_from_npy_name``, for names whose key is a legacy key (``'CON.npy'``, ``'a:b.npy'``).
    Pure string work.
    """
    if len(name) <= len(NPY_SUFFIX) or not name.endswith(NPY_SUFFIX):
        return None
    key = name[: -len(NPY_SUFFIX)]
    return key if is_legacy_store_key(key) and _artefact_name(key, NPY_SUFFIX) == name else None


def split_artefact_name(name: str) -> tuple[str, str] | None:
    """Return ``(key, suffix)`` for a store artefact name (``'k.meta.json.tmp'`` gives ``('k', '.meta.json.tmp')``).

    The suffix is the longest artefact suffix ``name`` ends with (see ``artefact_suffix``); the key
    must be readable (legal, or a legacy key) and rebuild exactly ``name``. ``None`` for anything
    else. Pure string work.
    """
    suffix = artefact_suffix(name)
    if suffix is None:
        return None
    key = name[: -len(suffix)]
    return (key, suffix) if is_readable_store_key(key) and _artefact_name(key, suffix) == name else None


def is_our_temp_name(name: str) -> bool:
    """Return whether ``name`` is a temp the store writes: ``<key>.npy.tmp``, ``.meta.json.tmp`` or ``.dat.tmp``.

    ``<key>`` must be a legal key. Used by the temp sweep, which must never touch anything else.
    Pure string work.
    """
    for suffix in _OUR_TEMP_SUFFIXES:
        if name.endswith(suffix):
            return _is_name_of(name[: -len(suffix)], suffix, name)
    return False


def _is_name_of(key: str, suffix: str, name: str) -> bool:
    # The rebuild comparison ties the parsers to the builders: a name is ours only if the builder
    # would produce it from the parsed key.
    return is_valid_store_key(key) and _artefact_name(key, suffix) == name
