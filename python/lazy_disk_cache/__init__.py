"""Disk-backed NumPy arrays: offload to crash-safe memory-mapped files, load back on first touch.

``DiskBackedNDArray`` wraps one array; ``DiskBackedStore`` keeps many named arrays in one
directory as ``<key>.npy`` + ``<key>.meta.json`` pairs. The native module ``_rust`` stays private.
"""

import logging

from lazy_disk_cache._budget import MemoryStats, memory_budget, memory_stats
from lazy_disk_cache._rust import __version__
from lazy_disk_cache.config import LazyDiskCacheConfig, LazyDiskCacheKw
from lazy_disk_cache.disk_backed_ndarray import DiskBackedNDArray
from lazy_disk_cache.disk_backed_store import DiskBackedStore, register_lazy_disk_cache_class
from lazy_disk_cache.errors import (
    LazyDiskCacheWarning,
    StoreContainmentError,
    StoreKeyError,
    StorePurgeAliasedArtefactError,
    StorePurgeForeignArtefactError,
    StorePurgeIncompleteError,
    StorePurgeRefusedError,
)
from lazy_disk_cache.lazy_disk_cache import LazyDiskCache
from lazy_disk_cache.paths import get_legacy_pickle_path, get_meta_path, get_npy_path, is_valid_store_key

__all__ = [
    "DiskBackedNDArray",
    "DiskBackedStore",
    "LazyDiskCache",
    "LazyDiskCacheConfig",
    "LazyDiskCacheKw",
    "LazyDiskCacheWarning",
    "MemoryStats",
    "StoreContainmentError",
    "StoreKeyError",
    "StorePurgeAliasedArtefactError",
    "StorePurgeForeignArtefactError",
    "StorePurgeIncompleteError",
    "StorePurgeRefusedError",
    "__version__",
    "get_legacy_pickle_path",
    "get_meta_path",
    "get_npy_path",
    "is_valid_store_key",
    "memory_budget",
    "memory_stats",
    "register_lazy_disk_cache_class",
]

# Library code never configures logging; an application that does not either stays silent.
logging.getLogger(__name__).addHandler(logging.NullHandler())
