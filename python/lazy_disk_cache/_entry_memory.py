"""The part of an entry the memory budget sees: the RAM it reports, and spilling.

Entries report the anonymous RAM they hold to the budget's ledger (``_budget``) at every
transition. The budget may *spill* an entry that holds anonymous RAM, through ``spill()``: an entry
with caching is offloaded as by ``offload()``; an entry without caching is written to the private
spill directory (``_spill_dir``) and is then OFFLOADED with that spill file standing in for its
``.dat`` until the entry goes or enables caching. The write itself is a transition of the state
machine (``LazyDiskCache._spill_to_file``); this module decides whether an entry may spill, and
holds, maps and releases its spill file.
"""

import math
import operator
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from lazy_disk_cache import _budget
from lazy_disk_cache._array_memory import anonymous_nbytes, held_elsewhere, private_bytes
from lazy_disk_cache._directories import open_directory
from lazy_disk_cache._entry_state import WRITING_MODES, EntryState, LoadMode
from lazy_disk_cache._leases import lease_backing_file
from lazy_disk_cache._memmap import as_memmap, mapping_of, open_memmap
from lazy_disk_cache._rust import FileMapping

__all__ = ["EntryMemory"]

_last_used: Callable[[Any], int] = operator.attrgetter("_used_at")
"""How the budget's ledger reads an entry's last use back (a shared getter: it holds no entry)."""


class EntryMemory(EntryState):
    """An entry's share of the memory budget: what it reports to the ledger, and how it spills."""

    def spill(self) -> int | None:
        """Give this entry's anonymous RAM back now, for the memory budget (``_budget.Spillable``).

        Never waits: returns ``None`` when the entry is in use, i.e. another thread holds its lock,
        this thread holds it further up the stack, it is pinned, or something outside the entry
        references its buffer (a view, a buffer export, the array given to the constructor):
        spilling would free nothing then, and later writes through that reference would miss
        the entry. Otherwise an entry reopened copy-on-write from a store is offloaded as by
        ``offload()`` (materialising its ``.dat``) when it has written pages; a store entry still
        waiting in RAM for its file is offloaded too (writing its ``.dat``); an entry without
        caching is written to the private spill directory and dropped from RAM (it maps its spill
        file on its next access); any other entry holds no anonymous RAM. Returns the bytes of
        RAM let go. An ``OSError`` (a full disk) leaves the entry exactly as it was.
        """
        lock = self._lock
        # An RLock re-acquires for its owner: a spill started further down this thread's stack
        # (a check() after taking RAM) must not take the buffer from an operation in progress.
        if lock._is_owned() or not lock.acquire(blocking=False):  # type: ignore[attr-defined]
            return None
        try:
            return self._spill_locked()
        finally:
            lock.release()

    def _spill_locked(self) -> int | None:
        if _budget.ledger.is_pinned(self):
            return None
        if not self._in_memory:
            self._forget_memory()
            return 0
        live = self._describe_buffer()[2]
        if held_elsewhere(live, self._references_to(live) + 1):  # + 1: the local `live`
            return None
        mapping = mapping_of(live)
        if mapping is None:
            nbytes = anonymous_nbytes(live)
            if nbytes == 0:
                self._forget_memory()
                return 0
            if self._enable_caching:
                self.offload()  # a deferred working copy: its own .dat takes the data
            else:
                self._spill_to_file(live)
            return nbytes
        if not self._holds_private_copy(mapping):
            self._forget_memory()
            return 0
        written = private_bytes(live)
        if written == 0:
            return 0  # nothing written yet: its pages are the file's; it stays mapped and tracked
        self.offload()
        return int(live.nbytes) if written is None else written

    def _references_to(self, live: object) -> int:
        """How many of this entry's own attributes reference ``live`` (the buffer, and ``_mmap``)."""
        count = 0
        for value in self.__dict__.values():
            if value is live:
                count += 1
        return count

    def _hold_spill(self, path: Path) -> None:
        """Hold the spill file ``path``; the last holder in this process to go removes it."""
        lease = lease_backing_file(self, str(path), os.getpid())
        lease.arm()
        self._spill_path = path
        self._spill_lease = lease

    def _release_spill(self) -> None:
        """Let go of the spill file (the data lives elsewhere now); removed if no copy holds it."""
        lease = self._spill_lease
        if self._spill_path is None and lease is None:
            return
        self._spill_path = None
        self._spill_lease = None
        if lease is not None:
            lease.release()

    def _map_spill(self, mode: LoadMode) -> np.memmap[Any, np.dtype[Any]]:
        """Map the spill file that holds this spilled entry's data in ``mode`` (copy-on-write in a forked child)."""
        path = self._spill_path
        if path is None:
            raise RuntimeError(f"{type(self).__name__} is not spilled")
        shape, dtype = self._describe_shape_dtype()
        shape = tuple(shape)
        directory = open_directory(path.parent)
        lease = self._spill_lease
        if lease is not None and lease.owner_pid != os.getpid() and mode in WRITING_MODES:
            # A forked child works on a private copy: its parent's entry must not see its writes,
            # as it would not have if the entry had stayed in RAM.
            private = open_memmap(directory, path.name, shape, dtype, mode="c", filename=str(path))
            if mode == "w+":
                private[...] = 0
            return private
        if mode == "w+":
            nbytes = math.prod(shape) * np.dtype(dtype).itemsize
            mapping = directory.write_zeroed(path.name, nbytes, durable=False)
            return as_memmap(mapping, shape, dtype, filename=str(path))
        return open_memmap(directory, path.name, shape, dtype, mode=mode, filename=str(path))

    def _holds_private_copy(self, mapping: FileMapping) -> bool:
        """Whether the live mapping is a store reload's copy-on-write view (offload keeps its written pages).

        Its written pages are private anonymous memory. A copy-on-write ``load("c")`` of the
        entry's own file is not: offloading it discards what was written, as asked.
        """
        adopted = self._adopted
        return adopted is not None and not adopted.readonly and mapping.mode == "c"

    def _anonymous_bytes(self) -> int:
        """The anonymous RAM the buffer may hold: all of a RAM buffer, all of a private copy's pages."""
        if not self._in_memory:
            return 0
        live = self._describe_buffer()[2]
        mapping = mapping_of(live)
        if mapping is None:
            return anonymous_nbytes(live)
        return int(live.nbytes) if self._holds_private_copy(mapping) else 0

    def _report_memory(self) -> None:
        """Tell the budget's ledger what the buffer holds now (under the lock).

        A caller that made the entry take RAM calls ``_budget.ledger.check()`` after releasing the lock.
        """
        nbytes = self._anonymous_bytes()
        if nbytes:
            _budget.ledger.track(self, nbytes, use_stamp=_last_used)
            self._tracked = True
        else:
            self._forget_memory()

    def _forget_memory(self) -> None:
        if self._tracked:
            _budget.ledger.untrack(self)
            self._tracked = False
