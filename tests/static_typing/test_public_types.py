"""The public API's static types, as a user's type checker sees them.

``scripts/lint.sh`` runs ``mypy --strict`` over this file, where ``assert_type`` must hold and every
call must type-check without an ignore; pytest runs the same calls, so the runtime agrees.
"""

import os
from pathlib import Path
from typing import Any, assert_type

import numpy as np
from numpy.typing import NDArray

from lazy_disk_cache import DiskBackedNDArray, DiskBackedStore, LazyDiskCacheConfig, LazyDiskCacheKw


class _Place:
    """A path-like object that is not a ``pathlib`` path."""

    def __init__(self, path: str) -> None:
        self._path = path

    def __fspath__(self) -> str:
        return self._path


def test_a_config_takes_a_str_cache_path_and_holds_a_path() -> None:
    config = LazyDiskCacheConfig(enable_caching=True, cache_path="tiles")

    assert_type(config.cache_path, Path | None)
    assert config.cache_path == Path("tiles")


def test_a_config_takes_any_path_like_cache_path_and_holds_a_path() -> None:
    config = LazyDiskCacheConfig(cache_path=_Place("tiles/a"))
    updated = config.updated(cache_path=_Place("tiles/b"))

    assert (config.cache_path, updated.cache_path) == (Path("tiles/a"), Path("tiles/b"))
    assert type(updated.cache_path) is type(Path("x"))


def test_the_keyword_settings_take_a_str_cache_path(tmp_path: Path) -> None:
    settings: LazyDiskCacheKw = {"enable_caching": True, "cache_path": os.fspath(tmp_path / "e")}

    entry = DiskBackedNDArray(np.arange(3), **settings)

    assert entry.cache_path == tmp_path / "e.dat"


def test_store_get_is_typed_as_the_entry_type_or_the_default(tmp_path: Path) -> None:
    store = DiskBackedStore[DiskBackedNDArray](
        config=LazyDiskCacheConfig(cache_path=tmp_path), factory=DiskBackedNDArray
    )
    store.add_data_to_store("k", np.arange(3))
    fallback = DiskBackedNDArray(np.zeros(1))

    present = store.get("k")
    missing = store.get("missing", fallback)
    other = store.get("missing", 0)

    assert_type(present, DiskBackedNDArray | None)
    assert_type(missing, DiskBackedNDArray)
    assert_type(other, DiskBackedNDArray | int)
    assert (present is store["k"], missing is fallback, other) == (True, True, 0)


def test_indexing_an_entry_with_a_slice_is_typed_as_an_array() -> None:
    entry = DiskBackedNDArray(np.arange(6).reshape(2, 3))

    rows = entry[0:1]
    element = entry[1, 2]

    assert_type(rows, NDArray[Any])
    assert_type(element, Any)
    assert isinstance(rows, np.ndarray)
    assert element == 5


def test_indexing_an_entry_is_documented() -> None:
    assert DiskBackedNDArray.__getitem__.__doc__
