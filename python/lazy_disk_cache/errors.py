"""Every exception and warning the package raises of its own, and the texts callers match on.

Each class is defined here once; ``paths``, ``disk_backed_store`` and the package root re-export
the same class objects. The ``for_*`` constructors build the exact messages, so the code that
detects a problem raises it in one line and the wording lives in a single place;
``non_str_key_error`` builds the private error for a key that is not a ``str``, and ``warn_user``
issues a ``LazyDiskCacheWarning`` at the caller's line.
"""

from __future__ import annotations

import inspect
import os
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Self

__all__ = [
    "LazyDiskCacheWarning",
    "StoreContainmentError",
    "StoreKeyError",
    "StorePurgeAliasedArtefactError",
    "StorePurgeForeignArtefactError",
    "StorePurgeIncompleteError",
    "StorePurgeRefusedError",
]

# purge() removes, per key: the sidecar, the three temps, the payload and the live memmap.
_PURGED_NAMES_PER_KEY = 6

_KEY_RULE_SUMMARY = (
    "a store key must be a single path segment \u2014 no '/', '\\' or ':', not an absolute or "
    "drive-relative path, not '', '.', '..' or a reserved Win32 device name such as CON or COM1, "
    "free of control characters, and not ending in a space or a dot."
)

_OUTSIDE = "resolves outside its cache directory"


class LazyDiskCacheWarning(UserWarning):
    """The data is not where, or not what, the caller may expect, though nothing failed.

    Issued for data-affecting fallbacks and skips (a store path that is an existing file, files a
    rescan skips or adopts as legacy keys, a stale sidecar, entries ``offload(pickle_container=True)``
    leaves unwritten), in addition to the log record, so it is seen without any logging setup.
    """


# Frames of these modules are the package's own machinery (pydantic wraps validated calls): a
# warning is attributed to the first frame outside them, the caller's own line.
_MACHINERY_MODULES = ("lazy_disk_cache.", "pydantic.", "pydantic_core.")


def warn_user(message: str) -> None:
    """Issue ``message`` as a ``LazyDiskCacheWarning`` attributed to the first caller outside the package."""
    level = 1
    frame = inspect.currentframe()
    while frame is not None and frame.f_globals.get("__name__", "").startswith(_MACHINERY_MODULES):
        frame = frame.f_back
        level += 1
    warnings.warn(message, LazyDiskCacheWarning, stacklevel=level)


def _repr_of(value: object) -> str:
    # A key object with a broken __repr__ must still produce the key error, not its own failure.
    try:
        return repr(value)
    except Exception:
        return f"<{type(value).__name__} object with a failing __repr__>"


class StoreKeyError(ValueError):
    """A store key breaks the key rule (one legal path segment)."""

    @classmethod
    def for_clause(cls, key: str, cache_dir: str | os.PathLike[str] | None, clause: str) -> Self:
        """Build the error for a ``str`` key that violates ``clause`` (one of ``paths.CLAUSE_*``).

        ``cache_dir`` appears as ``repr(str(cache_dir))``, or ``<unset>`` when it is ``None``.
        """
        where = "<unset>" if cache_dir is None else repr(str(cache_dir))
        return cls(f"Invalid store key {key!r} for cache directory {where}: the key {clause}; {_KEY_RULE_SUMMARY}")


class _NonStrStoreKeyError(StoreKeyError, TypeError):
    """A key that is not a ``str``: both ``except ValueError`` and ``except TypeError`` catch it."""

    @classmethod
    def for_key(cls, key: object) -> Self:
        """Build the error for a key of the wrong type."""
        return cls(
            f"Invalid store key {_repr_of(key)}: a store key must be a str, but got {type(key).__name__}. "
            "Convert it explicitly (for example with str()) before using it as a key."
        )

    def __reduce__(self) -> tuple[Callable[..., _NonStrStoreKeyError], tuple[Any, ...], dict[str, Any] | None]:
        # Pickle finds a class by its qualified name, which is the public one (below): revive
        # through a function instead, keeping the arguments and the notes.
        return (_revive_non_str_key_error, self.args, self.__dict__ or None)


# Tracebacks and reprs show the public type: that the error is also a TypeError is a detail.
_NonStrStoreKeyError.__name__ = _NonStrStoreKeyError.__qualname__ = StoreKeyError.__name__


def _revive_non_str_key_error(*args: Any) -> _NonStrStoreKeyError:
    return _NonStrStoreKeyError(*args)


def non_str_key_error(key: object) -> StoreKeyError:
    """Build the error for a key that is not a ``str``: a ``StoreKeyError`` that is also a ``TypeError``."""
    return _NonStrStoreKeyError.for_key(key)


class StoreContainmentError(StoreKeyError):
    """A store path would land outside its cache directory (through ``..`` or a symbolic link)."""

    @classmethod
    def for_path(cls, candidate: str | os.PathLike[str], key: str, cache_dir: str | os.PathLike[str]) -> Self:
        """Build the error for ``candidate``, derived from ``key``, escaping ``cache_dir``."""
        return cls(f"Store path {str(candidate)!r} for key {key!r} {_OUTSIDE} {str(cache_dir)!r}.")


class StorePurgeRefusedError(RuntimeError):
    """``purge`` refused to act; nothing was changed, on disk or in the store."""

    @classmethod
    def for_foreign_process(cls, key: str, owner_pid: int, current_pid: int) -> Self:
        """Build the refusal for a purge called from a process other than the store's constructor."""
        return cls(
            f"Refusing to purge {key!r}: this store was constructed by process {owner_pid} and purge was "
            f"called from process {current_pid}. A copy of a store in another process (a fork, or an "
            "unpickled copy in a worker) cannot know which of these files the owning process still maps "
            f"or is about to write, so only process {owner_pid} may delete them. Call purge() there, or "
            "open a new DiskBackedStore on the same directory in this process and purge through it."
        )


class StorePurgeForeignArtefactError(StorePurgeRefusedError):
    """``purge`` found an artefact name that leads outside the cache directory."""

    @classmethod
    def for_path(cls, key: str, path: str | os.PathLike[str]) -> Self:
        """Build the refusal for ``path``, an artefact of ``key`` that escapes the cache directory."""
        return cls(
            f"Refusing to purge {key!r}: {str(path)!r} {_OUTSIDE}, so unlinking it could destroy data "
            "this store does not own. Nothing was removed. Delete or re-point that path yourself so "
            "that it stays inside the cache directory, then purge again."
        )


class StorePurgeAliasedArtefactError(StorePurgeRefusedError):
    """``purge`` found a symbolic link from one of the key's names to another store artefact."""

    @classmethod
    def for_link(cls, key: str, link: str | os.PathLike[str], target: str | os.PathLike[str]) -> Self:
        """Build the refusal for ``link`` (a name of ``key``) pointing at the artefact ``target``."""
        return cls(
            f"Refusing to purge {key!r}: {str(link)!r} is a symbolic link to {str(target)!r}, which is "
            "named like a store artefact, so removing the link's target could destroy another key's "
            "data. Nothing was removed. Rename the linked payload to a name with a non-artefact suffix "
            "such as '.bin', re-point the link at it, then purge again."
        )


class StorePurgeIncompleteError(OSError):
    """``purge`` dropped the key but could not unlink some of its files.

    ``survivors`` lists the paths still on disk; the first underlying ``OSError`` is chained as
    ``__cause__``.
    """

    survivors: tuple[Path, ...] = ()

    @classmethod
    def for_survivors(cls, key: str, survivors: Iterable[str | os.PathLike[str]]) -> Self:
        """Build the error naming every path of ``key`` that could not be unlinked."""
        paths = tuple(Path(survivor) for survivor in survivors)
        listed = ", ".join(repr(str(path)) for path in paths)
        error = cls(
            f"Purge of {key!r} was incomplete: {len(paths)} of {_PURGED_NAMES_PER_KEY} artefacts could "
            f"not be unlinked and survive on disk \u2014 {listed}. The key is no longer tracked by the "
            "store; fix the cause shown in the chained error, then delete these files by hand or purge "
            "the key again."
        )
        error.survivors = paths
        return error
