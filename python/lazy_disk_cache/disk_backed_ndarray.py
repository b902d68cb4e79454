"""``DiskBackedNDArray``: one NumPy array that can live in RAM or in a memory-mapped file.

The entry behaves like an array where it matters: it answers ``shape``, ``dtype``, ``ndim``,
``size``, ``nbytes`` and ``len()`` from its metadata (never loading), and indexing, ``np.asarray``,
ufuncs, operators and NumPy functions (NEP 18) work on its live buffer. It has no item assignment
and no array methods: writes go through ``entry.data[...] = value``. ``to_dask()`` reads it from
its file in a dask graph (the ``dask`` extra).
"""

import logging
import math
from collections.abc import Callable, Iterable
from contextlib import ExitStack
from types import EllipsisType
from typing import TYPE_CHECKING, Any, TypeAlias, overload

import numpy as np
from numpy.lib.mixins import NDArrayOperatorsMixin
from numpy.typing import DTypeLike, NDArray
from typing_extensions import Unpack

from lazy_disk_cache._budget import use_clock
from lazy_disk_cache.lazy_disk_cache import LazyDiskCache, LazyDiskCacheKw

if TYPE_CHECKING:
    import dask.array

__all__ = ["DiskBackedNDArray"]

logger = logging.getLogger(__name__)

# Keys whose result is always an array, whatever the entry's shape and dtype.
_ArrayIndex: TypeAlias = slice | EllipsisType | NDArray[np.bool_] | NDArray[np.integer[Any]] | list[int] | None


class DiskBackedNDArray(LazyDiskCache, NDArrayOperatorsMixin):
    """A ``numpy.ndarray`` wrapped in the ``LazyDiskCache`` state machine.

    With caching off the caller's array is held as is (aliased, not copied). With caching on it
    is copied into the entry's ``.dat`` (an entry a store adds: into RAM, until its ``.dat`` is
    needed) and the caller's array is no longer referenced. Indexing
    and ``np.asarray`` load the data on demand (and offload again with ``automatic_offloading``);
    ``data`` and ufuncs load and stay loaded.
    """

    _data: NDArray[Any]
    _shape: tuple[int, ...]
    _dtype: np.dtype[Any]

    def __init__(self, data: NDArray[Any], **settings: Unpack[LazyDiskCacheKw]) -> None:
        if not isinstance(data, np.ndarray):
            raise TypeError(f"DiskBackedNDArray data must be a numpy.ndarray; got {type(data).__name__}")
        self._data = data
        self._shape = data.shape
        self._dtype = data.dtype
        super().__init__(**settings)

    @property
    def data(self) -> NDArray[Any]:
        """The live buffer itself (the ``np.memmap`` when mapped), loading it if offloaded.

        Never offloads again, even with ``automatic_offloading``; ``e.data[...] = v`` is the way
        to write, and with caching on the write persists across offload and load.
        """
        with self._lock:
            self._used_at = use_clock.now
            if not self._in_memory:
                self.load(self._reload_mode())
            return self._data

    # -- array metadata: answered from what the entry recorded, never by loading ---------------

    @property
    def shape(self) -> tuple[int, ...]:
        """The array's shape. O(1), never loads."""
        return tuple(self._shape)

    @property
    def dtype(self) -> np.dtype[Any]:
        """The array's dtype. O(1), never loads."""
        return self._dtype

    @property
    def ndim(self) -> int:
        """The number of axes. O(1), never loads."""
        return len(self._shape)

    @property
    def size(self) -> int:
        """The number of elements. O(1), never loads."""
        return math.prod(self._shape)

    @property
    def nbytes(self) -> int:
        """The bytes the elements take. O(1), never loads."""
        return self.size * self._dtype.itemsize

    def __len__(self) -> int:
        """The length of the first axis; ``TypeError`` for a 0-d entry, as NumPy raises. Never loads."""
        if not self._shape:
            raise TypeError("len() of unsized object")
        return int(self._shape[0])

    @overload
    def __getitem__(self, key: _ArrayIndex) -> NDArray[Any]: ...
    @overload
    def __getitem__(self, key: Any) -> Any: ...
    @LazyDiskCache.ensure_loaded
    def __getitem__(self, key: Any) -> Any:
        """``data[key]``: loads the entry if offloaded (and offloads it again with ``automatic_offloading``).

        Slices, ``...``, ``None`` and index arrays give arrays; while mapped they are ``np.memmap``
        views that stay valid after a later offload and write through to the ``.dat``. Integers
        give scalars when they pick one element. O(1) for views; a fancy index copies.
        """
        return self._data[key]

    @LazyDiskCache.ensure_loaded
    def __array__(self, dtype: DTypeLike | None = None, copy: bool | None = None) -> NDArray[Any]:
        """NumPy-2 conversion: a copy unless ``copy=False``, which returns the live buffer itself.

        ``copy=False`` with a dtype that needs conversion raises ``ValueError``.
        """
        live = self._data
        if copy is False:
            if dtype is None or np.dtype(dtype) == live.dtype:
                return live
            raise ValueError(
                f"cannot convert {type(self).__name__} of dtype {live.dtype} to {np.dtype(dtype)} "
                "without a copy (copy=False)"
            )
        return np.array(live, dtype=dtype, copy=True)

    def __array_ufunc__(self, ufunc: np.ufunc, method: str, *inputs: Any, **kwargs: Any) -> Any:
        """Apply ``ufunc`` to the live buffers; the result is returned raw and nothing re-offloads.

        Every entry among the inputs and ``out=`` is locked (in ascending ``id()`` order, so two
        threads combining the same entries cannot deadlock) and loaded if offloaded.
        """
        out = kwargs.get("out")
        outputs = out if isinstance(out, tuple) else (() if out is None else (out,))
        entries = {id(item): item for item in (*inputs, *outputs) if isinstance(item, DiskBackedNDArray)}
        with ExitStack() as stack:
            for key in sorted(entries):
                stack.enter_context(entries[key]._lock)
            arrays = tuple(_live(item) for item in inputs)
            if out is not None:
                kwargs["out"] = tuple(_live(item) for item in outputs)
            return getattr(ufunc, method)(*arrays, **kwargs)

    def __array_function__(
        self, func: Callable[..., Any], types: Iterable[type], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        """Run a NumPy function (NEP 18) on the live buffers; same contract as ``__array_ufunc__``.

        Entries among the arguments, also inside lists and tuples (``np.concatenate([a, b])``) and
        as keyword values (``out=``), are locked in ascending ``id()`` order and loaded if
        offloaded, then replaced by their live buffers: no extra copy. The result is returned raw
        and nothing re-offloads.
        """
        entries: dict[int, DiskBackedNDArray] = {}
        _collect_entries((args, tuple(kwargs.values())), entries)
        with ExitStack() as stack:
            for key in sorted(entries):
                stack.enter_context(entries[key]._lock)
            live_args = _with_live_buffers(args)
            live_kwargs = {name: _with_live_buffers(value) for name, value in kwargs.items()}
            return func(*live_args, **live_kwargs)

    def to_dask(self, chunks: Any = "auto") -> "dask.array.Array":
        """A dask array that reads this entry's file by path, block by block, in any process.

        Each task maps the file read-only, copies its block and drops the mapping: no task holds
        the entry or the whole array. ``chunks`` takes anything dask accepts; ``"auto"`` is whole
        rows of about 128 MiB, page-aligned where the row size allows. The graph reads the file as
        it is when each task runs. O(1) here: no data is read and the token comes from the file's
        identity. ``ValueError`` when no file holds the value (caching off, or a private
        copy-on-write mapping: ``offload()`` first); ``ImportError`` without the ``dask`` extra.
        """
        # Imported here: dask is an optional dependency, loaded only when a graph is asked for.
        from lazy_disk_cache.dask import entry_to_dask

        return entry_to_dask(self, chunks)

    def _describe_buffer(self) -> tuple[tuple[int, ...], DTypeLike, NDArray[Any]]:
        return self._shape, self._dtype, self._data

    def _describe_shape_dtype(self) -> tuple[tuple[int, ...], DTypeLike]:
        return self._shape, self._dtype

    def _drop_buffer(self) -> None:
        self.__dict__.pop("_data", None)

    def _set_buffer(self, buf: NDArray[Any]) -> None:
        self._data = buf


def _collect_entries(value: object, found: dict[int, "DiskBackedNDArray"]) -> None:
    """Record every entry in ``value``, looking inside lists and tuples."""
    if isinstance(value, DiskBackedNDArray):
        found[id(value)] = value
    elif isinstance(value, (list, tuple)):
        for item in value:
            _collect_entries(item, found)


def _with_live_buffers(value: Any) -> Any:
    """``value`` with every entry (also inside lists and tuples) replaced by its live buffer."""
    if isinstance(value, DiskBackedNDArray):
        return value.data
    if isinstance(value, list):
        return [_with_live_buffers(item) for item in value]
    if isinstance(value, tuple):
        return tuple(_with_live_buffers(item) for item in value)
    return value


def _live(item: object) -> object:
    """The live buffer of an entry (loaded if needed; the caller holds its lock), else ``item``."""
    if isinstance(item, DiskBackedNDArray):
        return item.data
    return item
