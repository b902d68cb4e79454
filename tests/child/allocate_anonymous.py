"""Child: allocate and touch N bytes of anonymous memory with plain NumPy, then report it.

Usage: allocate_anonymous.py NBYTES

Prints ``allocated NBYTES`` and exits 0 when every page was written; under a memory limit too
small for NBYTES the kernel's OOM killer ends it with SIGKILL first.
"""

import sys

import numpy as np

nbytes = int(sys.argv[1])
block = np.ones(nbytes, dtype=np.uint8)  # np.ones writes every byte, so every page is resident
print(f"allocated {int(block.sum(dtype=np.int64))}")
