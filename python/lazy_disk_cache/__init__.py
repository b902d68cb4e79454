"""Disk-backed NumPy arrays: offload to crash-safe memory-mapped files, load back on first touch."""

from lazy_disk_cache._rust import __version__

__all__ = ["__version__"]
