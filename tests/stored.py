"""Stores on disk for the integrity and command-line tests: written by this package or as the original wrote them."""

import json
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from lazy_disk_cache import DiskBackedNDArray, DiskBackedStore, LazyDiskCacheConfig

Store = DiskBackedStore[DiskBackedNDArray]

# Arrays of every layout and kind the store writes: contiguous, strided, Fortran-ordered,
# structured, big-endian, 0-d and empty.
VARIED_ARRAYS: dict[str, NDArray[Any]] = {
    "floats": np.random.default_rng(3).random((300, 7)),
    "strided": np.arange(4000, dtype=np.int16).reshape(40, 100)[:, ::3],
    "fortran": np.asfortranarray(np.arange(600, dtype=np.float32).reshape(20, 30)),
    "records": np.array([(1.5, 2), (3.5, 4)], dtype=[("x", "<f8"), ("n", "u1")]),
    "big-endian": np.arange(9, dtype=">i4"),
    "scalar": np.array(7.25),
    "empty": np.zeros((0, 3), dtype=np.float32),
}


def make_store(cache_dir: Path | None, **settings: Any) -> Store:
    """A store of ``DiskBackedNDArray`` entries on ``cache_dir``, configured by ``settings``."""
    config = LazyDiskCacheConfig(cache_path=cache_dir, **settings)
    return DiskBackedStore[DiskBackedNDArray](config=config, factory=DiskBackedNDArray)


def open_store(cache_dir: Path) -> Store:
    """A caching store on ``cache_dir`` that keeps its files when collected."""
    return make_store(cache_dir, enable_caching=True, purge_disk_on_gc=False)


def write_store(cache_dir: Path, arrays: dict[str, NDArray[Any]]) -> Store:
    """Add ``arrays`` to a store on ``cache_dir`` and commit them as pairs, with checksums."""
    store = open_store(cache_dir)
    for key, array in arrays.items():
        store.add_data_to_store(key, array)
    store.offload(pickle_container=True)
    return store


def write_original_pair(cache_dir: Path, key: str, array: NDArray[Any], **overrides: Any) -> None:
    """A pair as the original package writes it: ``np.save`` and a sidecar without a checksum.

    ``overrides`` replace or add sidecar fields.
    """
    cache_dir.mkdir(parents=True, exist_ok=True)
    np.save(cache_dir / f"{key}.npy", array)
    meta: dict[str, Any] = {
        "schema_version": 1,
        "lazy_disk_cache_class": "DiskBackedNDArray",
        "shape": list(array.shape),
        "dtype": array.dtype.str,
        "purge_disk_on_gc": False,
        "automatic_offloading": False,
        "enable_caching": True,
    }
    meta.update(overrides)
    write_sidecar(cache_dir, key, meta)


def write_sidecar(cache_dir: Path, key: str, meta: object) -> None:
    """``meta`` as the JSON sidecar of ``key``."""
    (cache_dir / f"{key}.meta.json").write_text(json.dumps(meta), encoding="utf-8")


def flip_bit(path: Path, bit: int) -> None:
    """Flip bit ``bit`` of the file in place (flipping it again restores the file)."""
    with open(path, "r+b") as handle:
        handle.seek(bit // 8)
        byte = handle.read(1)[0]
        handle.seek(bit // 8)
        handle.write(bytes([byte ^ (1 << (bit % 8))]))
