"""Per-path leases inside one process: the owner process's last lease on a path removes it.

Several live objects in one process (an entry and its unpickled copies, a store and its copies)
can stand for one file or directory. Each holds a :class:`PathLease` tied to its lifetime by a
``weakref.finalize``. When one is collected the path is removed only if no other live lease in
this process holds it and this process is the owner the lease names. A forked child gets a fresh
lock, since another thread of the parent may have held it at the fork.
"""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Callable

__all__ = ["PathLease"]

_holders: dict[str, set[PathLease]] = {}
_holders_lock = threading.Lock()


def _reset_lock_after_fork() -> None:
    global _holders_lock
    _holders_lock = threading.Lock()


os.register_at_fork(after_in_child=_reset_lock_after_fork)


class PathLease:
    """One object's claim on removing ``path`` once the object is collected.

    The lease holds the path while its finalizer is alive, so a finalizer detached by any route
    (:meth:`release` or a direct ``finalizer.detach()``) stops holding it. When the finalizer runs,
    ``remove(path)`` is called only if no other live lease in this process holds the path and this
    process is ``owner_pid``; an ``owner_pid`` of ``None`` never removes. ``owner_pid`` may be
    changed while the lease lives.
    """

    __slots__ = ("_remove", "finalizer", "owner_pid", "path")

    def __init__(self, holder: object, path: str, owner_pid: int | None, remove: Callable[[str], None]) -> None:
        self.path = path
        self.owner_pid = owner_pid
        self._remove = remove
        self.finalizer = weakref.finalize(holder, self._expire)
        with _holders_lock:
            _holders.setdefault(path, set()).add(self)

    def release(self) -> None:
        """Detach the finalizer and give up the claim; nothing is removed."""
        self.finalizer.detach()
        self._leave()

    def _leave(self) -> bool:
        """Drop this lease; return whether no other live lease holds the path any more."""
        with _holders_lock:
            holders = _holders.pop(self.path, set())
            holders.discard(self)
            alive = {lease for lease in holders if lease.finalizer.alive}
            if alive:
                _holders[self.path] = alive
            return not alive

    def _expire(self) -> None:
        if self._leave() and self.owner_pid is not None and os.getpid() == self.owner_pid:
            self._remove(self.path)
