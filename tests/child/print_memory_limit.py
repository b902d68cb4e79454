"""Child: print the effective memory limit the package detects, as ``BYTES SOURCE``.

Usage: print_memory_limit.py
"""

from lazy_disk_cache._memory_limits import MemoryProbe

limit = MemoryProbe().effective_limit()
print(limit.nbytes, limit.source)
