"""An entry's files and what their bytes can hold.

The ``.dat`` path a configured ``cache_path`` names, the store payload ``<stem>.npy`` beside a
``.dat``, the length of a ``.dat``, and the rules that refuse data whose meaning the bytes on disk
would not keep (object dtypes, masked arrays). Plain functions over paths and arrays: they hold no
entry state, and do no I/O but a ``stat``.
"""

import os
import stat
import sys
from pathlib import Path

import numpy as np
from numpy.typing import DTypeLike

from lazy_disk_cache.paths import MEMMAP_SUFFIX, NPY_SUFFIX

__all__ = [
    "check_cacheable_array",
    "check_cacheable_dtype",
    "dat_length",
    "entry_dat_path",
    "is_symlink",
    "npy_beside",
]


def is_symlink(path: Path) -> bool:
    try:
        return stat.S_ISLNK(os.lstat(path).st_mode)
    except OSError:
        return False


def entry_dat_path(given: Path, *, given_is_a_file: bool = False) -> Path:
    """Turn a configured ``cache_path`` into the absolute ``.dat`` path (no symlink resolution).

    ``given_is_a_file``: the caller just opened ``given`` as a file (a store reloading its
    ``.npy``), so only the ``.dat`` form needs checking.
    """
    if not given.name:
        raise ValueError(f"cache_path {given!r} has an empty name; pass a file path")
    dat = given.absolute().with_suffix(MEMMAP_SUFFIX)
    # os.path.isdir: the same stat as Path.is_dir without its per-call cost (a store reload runs this).
    if (not given_is_a_file and os.path.isdir(given)) or os.path.isdir(dat):
        raise ValueError(
            f"cache_path {given!r} is an existing directory; pass a file path "
            "(the entry stores its data in '<name>.dat')"
        )
    return dat


def check_cacheable_dtype(dtype: DTypeLike) -> None:
    """Refuse (``TypeError``) a dtype that is or contains Python objects: pointers cannot go to disk."""
    resolved = np.dtype(dtype)
    if resolved.hasobject:
        raise TypeError(f"cannot cache an array of dtype {resolved!r} on disk: it contains Python objects")


def check_cacheable_array(array: object) -> None:
    """Refuse (``TypeError``) an array whose meaning the bytes on disk would not keep.

    A ``numpy.ma.MaskedArray`` stores its mask beside its data; the ``.dat`` and ``.npy`` files hold
    only the data, so caching it would silently unmask it. The dtype rule applies too.
    """
    # Looked up, not imported: numpy loads numpy.ma lazily, and no array can be a MaskedArray before
    # it is loaded (importing it here would cost time and could fail in a process that has since
    # dropped the rights to read the installation).
    masked = sys.modules.get("numpy.ma")
    if masked is not None and isinstance(array, masked.MaskedArray):
        raise TypeError(
            "cannot cache a numpy.ma.MaskedArray on disk: its mask would be lost. Cache array.filled(fill_value) "
            "(and np.ma.getmaskarray(array) as a second array if the mask matters), or keep caching off"
        )


# mmap cannot map an empty file, so np.memmap writes one byte for a zero-size array; a .dat is never
# shorter either, so anyone can map it. The shape, not the file length, says the array is empty.
_MIN_DAT_BYTES = 1


def dat_length(payload_nbytes: int) -> int:
    """The length of the ``.dat`` that holds a payload of ``payload_nbytes`` (zero-padded to one byte)."""
    return max(payload_nbytes, _MIN_DAT_BYTES)


def npy_beside(dat: Path) -> Path:
    """The store payload ``<stem>.npy`` next to the ``.dat`` ``<stem>.dat`` (a reloaded entry's data)."""
    return dat.with_name(dat.name.removesuffix(MEMMAP_SUFFIX) + NPY_SUFFIX)
