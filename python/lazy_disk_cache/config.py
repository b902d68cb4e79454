"""The settings of an entry: ``LazyDiskCacheKw`` (keyword arguments) and ``LazyDiskCacheConfig``.

Both are re-exported by ``lazy_disk_cache.lazy_disk_cache``, the module path users import them
from, and by the package root. A config pickled when the class was defined in that module still
loads, because the name it records is still importable there.
"""

import dataclasses
import difflib
import logging
import os
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Self

from pydantic import BeforeValidator, ConfigDict, StrictStr, model_validator, validate_call
from pydantic.dataclasses import dataclass as pydantic_dataclass
from pydantic_core import ArgsKwargs
from typing_extensions import TypedDict, Unpack

from lazy_disk_cache.paths import ensure_write_contained, validate_store_key

__all__ = ["LazyDiskCacheConfig", "LazyDiskCacheKw"]

# The config belongs to the entry module's public surface, and callers match its log records on
# that module's logger.
logger = logging.getLogger("lazy_disk_cache.lazy_disk_cache")


class LazyDiskCacheKw(TypedDict, total=False):
    """Keyword arguments accepted by ``LazyDiskCache`` constructors (all optional).

    ``enable_caching``: back the live buffer by a memory-mapped ``.dat`` file instead of RAM.
    ``cache_path``: where the ``.dat`` lives, a ``str`` or path-like (``None``: a private temporary
    file, created on first need). ``purge_disk_on_gc``: delete the ``.dat`` when the entry is
    collected. ``automatic_offloading``: offload again after every access that had to load.
    """

    enable_caching: bool
    cache_path: str | os.PathLike[str] | None
    purge_disk_on_gc: bool
    automatic_offloading: bool


def _path_like_as_text(value: object) -> object:
    # pydantic's lax Path validation takes a str or a Path, but not other os.PathLike objects. A
    # Path goes through as it is: turning it into text would only make pydantic parse it again.
    return os.fspath(value) if isinstance(value, os.PathLike) and not isinstance(value, Path) else value


@pydantic_dataclass(frozen=True, config=ConfigDict(arbitrary_types_allowed=True))
class LazyDiskCacheConfig:
    """Frozen, validated mirror of ``LazyDiskCacheKw``.

    Values are coerced leniently (``"yes"`` → ``True``, ``"x"`` → ``Path("x")``); bad values
    raise ``pydantic.ValidationError`` and unknown keyword arguments ``TypeError`` (naming the
    closest setting: a typo must not silently turn caching off). Hashable, comparable by value and
    picklable, so one instance can be threaded through factory chains.
    """

    enable_caching: bool = False
    cache_path: Annotated[Path | None, BeforeValidator(_path_like_as_text)] = None
    purge_disk_on_gc: bool = True
    automatic_offloading: bool = False

    if TYPE_CHECKING:
        # What a type checker should accept: ``cache_path`` takes any str or path-like and is held
        # as a ``Path``; the other values are coerced leniently at run time, but typed strictly.
        def __init__(
            self,
            enable_caching: bool = False,
            cache_path: str | os.PathLike[str] | None = None,
            purge_disk_on_gc: bool = True,
            automatic_offloading: bool = False,
        ) -> None: ...

    @model_validator(mode="before")
    @classmethod
    def _refuse_unknown_settings(cls, data: Any) -> Any:
        # pydantic passes a TypeError raised here through unchanged (it wraps only ValueErrors).
        if isinstance(data, ArgsKwargs):
            refuse_unknown_settings(data.kwargs or {}, f"{cls.__name__}()")
        elif isinstance(data, dict):
            refuse_unknown_settings(data, f"{cls.__name__}()")
        return data

    def as_kwargs(self) -> LazyDiskCacheKw:
        """Return the four settings as a plain ``dict``."""
        return LazyDiskCacheKw(
            enable_caching=self.enable_caching,
            cache_path=self.cache_path,
            purge_disk_on_gc=self.purge_disk_on_gc,
            automatic_offloading=self.automatic_offloading,
        )

    @classmethod
    def from_kwargs(cls, settings: LazyDiskCacheKw) -> Self:
        """Build a configuration from a ``LazyDiskCacheKw``-shaped mapping; extra keys are ignored.

        The mapping may be a larger settings dict: only the four setting names are read.
        """
        known: dict[str, Any] = {name: value for name, value in settings.items() if name in SETTING_NAMES}
        return cls(**known)

    def updated(self, **overrides: Unpack[LazyDiskCacheKw]) -> Self:
        """Return a re-validated copy with ``overrides`` applied; an unknown name raises ``TypeError``."""
        refuse_unknown_settings(overrides, "updated()")
        # Typed loosely: the values are validated (and a path-like ``cache_path`` normalised) by
        # the constructor that replace() calls.
        changes: dict[str, Any] = dict(overrides)
        return dataclasses.replace(self, **changes)

    @validate_call
    def extend_cache_path(self, new_folder: StrictStr) -> Self:
        """Return a copy whose ``cache_path`` is ``cache_path / new_folder``. Creates nothing on disk.

        ``new_folder`` must be a ``str`` (``pydantic.ValidationError`` otherwise) and one legal
        path segment (``StoreKeyError``), even when ``cache_path`` is ``None``, in which case the
        copy keeps ``cache_path=None``. An existing symlink at the new path that resolves outside
        ``cache_path`` raises ``StoreContainmentError``.
        """
        validate_store_key(new_folder, self.cache_path)
        if self.cache_path is None:
            logger.info("Cache path is None; cannot extend.")
            return dataclasses.replace(self, cache_path=None)
        extended = self.cache_path / new_folder
        ensure_write_contained(extended, self.cache_path, new_folder)
        return dataclasses.replace(self, cache_path=extended)


SETTING_NAMES: tuple[str, ...] = tuple(field.name for field in dataclasses.fields(LazyDiskCacheConfig))
"""The names of the four settings, in their positional order."""


def refuse_unknown_settings(settings: Iterable[str], caller: str) -> None:
    """Raise ``TypeError`` for the first name in ``settings`` that is not a setting.

    The message names ``caller`` (such as ``'DiskBackedNDArray()'``), the unknown keyword, the
    closest setting when one is close, and every setting.
    """
    for name in settings:
        if name in SETTING_NAMES:
            continue
        close = difflib.get_close_matches(name, SETTING_NAMES, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        listed = ", ".join(map(repr, SETTING_NAMES[:-1])) + f" and {SETTING_NAMES[-1]!r}"
        raise TypeError(f"{caller} got an unexpected keyword argument {name!r}{hint}; the settings are {listed}")


# Pickles name a class by its module: keep naming the module path the original package exposes (which
# re-exports this class), so configs pickled by any version load in any other.
LazyDiskCacheConfig.__module__ = "lazy_disk_cache.lazy_disk_cache"
