"""Per-path leases inside one process: a file goes when the last live object on it goes.

Several live objects in one process can stand for one file or directory: an entry and its copies
(``copy.copy``, a pickle round trip, dask's tokenising), or a store and its copies. Each holds a
:class:`PathLease` for as long as it lives. A lease may carry *purge duty* (it is armed). The rule:

* A holder collected (or alive at interpreter exit) while armed leaves its duty behind on the path.
* When the last live lease on a path in this process goes, the path is removed if a duty was left
  behind and this process is the owner that duty names. No other process ever removes it.
* Pickling hands an armed holder's duty to the pickled copy (:meth:`PathLease.hand_off`). A copy
  revived in the owner process arms its own lease and takes the duty back. A copy revived elsewhere
  cannot remove the file, so the owner process removes it when it exits, if the path still names
  the same file it named at the hand-off.

A forked child gets a fresh lock, since another thread of the parent may have held it at the fork;
its leases name the parent as owner, so it never removes anything.

A lease on an entry's ``.dat`` in a cache directory may also *announce* the path to other processes
(:meth:`PathLease.announce`): the first announcement on a path in this process takes the key's holder
lock (``_key_locks.hold_key_if_writable``; an announcement that could not take it is made again by
the next one), and the last lease on the path releases it, so garbage collection elsewhere leaves the
``.dat`` alone while any object here holds it. That costs one ``fcntl`` per path per process, none
per lease or access. The lock belongs to the process that took it: in a forked child the inherited
leases keep the parent's lock (which the child can never release: the core checks the pid), and the
child's first announcement on such a path takes one of the child's own.

What a lease removes is given by its creator: an entry's ``.dat`` (:func:`lease_backing_file`,
here) or a store's private directory (``_store_dir.lease_directory``).
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

from lazy_disk_cache._directories import open_directory
from lazy_disk_cache._key_locks import hold_key_if_writable
from lazy_disk_cache._rust import KeyHolder
from lazy_disk_cache.paths import TMP_SUFFIX

__all__ = ["PathLease", "file_identity", "lease_backing_file"]

# Removing an entry's file is the entry's work: its records go to the entry module's logger.
logger = logging.getLogger("lazy_disk_cache.lazy_disk_cache")


class _PathState:
    """The live leases on one path, the owner pids of the duties left behind on it, and its announcement."""

    __slots__ = ("announced_by", "announcement", "duty_owners", "leases")

    def __init__(self) -> None:
        self.leases: set[PathLease] = set()
        self.duty_owners: set[int] = set()
        self.announcement: KeyHolder | None = None
        """The key's holder lock, taken by the process ``announced_by``."""
        self.announced_by: int | None = None

    def announced_here(self) -> bool:
        """Whether this process holds the holder lock of the path's key already."""
        return self.announcement is not None and self.announced_by == os.getpid()

    def keep(self, holder: KeyHolder) -> None:
        """Keep ``holder``, the holder lock this process just took, until the last lease goes.

        An announcement inherited from a parent stays the parent's: replacing it releases nothing.
        """
        self.announcement = holder
        self.announced_by = os.getpid()


class _HandedOff(NamedTuple):
    """A duty that left this process inside a pickle: who owns it and which file it was."""

    owner_pid: int
    identity: tuple[int, int]
    remove: Callable[[str], None]


_paths: dict[str, _PathState] = {}
_handed_off: dict[str, _HandedOff] = {}
# Re-entrant: a finalizer may run from a garbage collection triggered inside a locked section.
_lock = threading.RLock()


def _reset_lock_after_fork() -> None:
    global _lock
    _lock = threading.RLock()


os.register_at_fork(after_in_child=_reset_lock_after_fork)


def file_identity(path: str | os.PathLike[str]) -> tuple[int, int] | None:
    """Device and inode of the file ``path`` names, ``None`` when it names none (one ``stat``)."""
    try:
        info = os.stat(path)
    except OSError:
        return None
    return info.st_dev, info.st_ino


class PathLease:
    """One live object's hold on ``path``, armed with purge duty or not.

    The lease lives exactly as long as its holder (a ``weakref.finalize`` with ``atexit=True``).
    :meth:`arm` returns the duty finalizer; detaching that finalizer by any route (:meth:`disarm`
    or a direct ``finalizer.detach()``) drops the duty but keeps the hold. ``owner_pid`` may be
    changed while the lease lives; ``None`` never removes.
    """

    __slots__ = ("__weakref__", "_duty", "_holder", "_life", "_remove", "owner_pid", "path")

    def __init__(self, holder: object, path: str, owner_pid: int | None, remove: Callable[[str], None]) -> None:
        self.path = path
        self.owner_pid = owner_pid
        self._remove = remove
        self._holder = weakref.ref(holder)
        self._duty: weakref.finalize[[bool], object] | None = None
        with _lock:
            _paths.setdefault(path, _PathState()).leases.add(self)
        self._life = weakref.finalize(holder, self._expire, False)

    @property
    def armed(self) -> bool:
        """Whether this lease currently carries purge duty."""
        return self._duty is not None and self._duty.alive

    def arm(self) -> weakref.finalize[[bool], object]:
        """Carry purge duty (idempotent); return the duty finalizer.

        Arming in the owner process takes back a duty that an earlier pickle handed off.
        """
        if self._duty is None or not self._duty.alive:
            holder = self._holder()
            if holder is None:
                raise ReferenceError("the holder of this lease is gone")
            self._duty = weakref.finalize(holder, self._expire, True)
        with _lock:
            handed = _handed_off.get(self.path)
            if handed is not None and handed.owner_pid == os.getpid():
                del _handed_off[self.path]
        return self._duty

    def held_alone(self) -> bool:
        """Whether this lease is the only live one on its path in this process (no copy holds it)."""
        with _lock:
            state = _paths.get(self.path)
            return state is not None and state.leases == {self}

    def announce(self) -> None:
        """Keep the path announced to other processes until the last lease on it here goes.

        For an entry's ``.dat`` in a cache directory (see the module docs). Idempotent; blocks briefly
        on disk until the path is announced in this process.
        """
        with _lock:
            state = _paths.get(self.path)
            if state is None or self not in state.leases or state.announced_here():
                return
        # Taking the holder lock may wait for another process's collection: never under the
        # process-wide lease lock. An attempt that fails (no directory yet, a read-only one, a
        # collection in the way) is made again at the next announcement.
        holder = hold_key_if_writable(Path(self.path))
        if holder is None:
            return
        with _lock:
            if _paths.get(self.path) is state and state.leases and not state.announced_here():
                state.keep(holder)
                return
        holder.release()

    def disarm(self) -> None:
        """Drop purge duty without removing anything; the hold stays."""
        if self._duty is not None:
            self._duty.detach()
            self._duty = None

    def hand_off(self) -> None:
        """Give this lease's duty to a pickled copy: disarm, and remember the file for exit.

        If no copy takes the duty back in this process (by arming its own lease), the owner
        removes the path when the process exits, provided it still names the same file.
        """
        if not self.armed or self.owner_pid is None:
            return
        identity = file_identity(self.path)
        self.disarm()
        if identity is not None:
            with _lock:
                _handed_off[self.path] = _HandedOff(self.owner_pid, identity, self._remove)

    def release(self) -> None:
        """The holder lets go of the path now, as if it had been collected (its duty stays behind)."""
        self._expire(False)

    def _expire(self, armed_now: bool) -> None:
        """The holder is gone: leave the duty behind if armed; the last lease removes the path."""
        armed = armed_now or self.armed
        self._life.detach()
        self.disarm()
        with _lock:
            state = _paths.get(self.path)
            if state is None or self not in state.leases:
                return
            state.leases.discard(self)
            if armed and self.owner_pid is not None:
                state.duty_owners.add(self.owner_pid)
            if state.leases:
                return
            del _paths[self.path]
            remove = os.getpid() in state.duty_owners
            if remove:
                _handed_off.pop(self.path, None)
        if state.announcement is not None:
            state.announcement.release()
        if remove:
            self._remove(self.path)


@atexit.register
def _remove_handed_off_files() -> None:
    """At exit, remove the files whose duty left in a pickle and never came back (owner only)."""
    with _lock:
        pending = list(_handed_off.items())
        _handed_off.clear()
    for path, handed in pending:
        if handed.owner_pid == os.getpid() and file_identity(path) == handed.identity:
            handed.remove(path)


def lease_backing_file(holder: object, path: str, owner_pid: int | None) -> PathLease:
    """Hold an entry's ``.dat`` at ``path`` for as long as ``holder`` lives.

    The last lease on the path in the owner process, if a duty was left on it, removes the
    ``.dat`` and its stale ``.dat.tmp`` by name. ``owner_pid=None`` holds without the right to remove.
    """
    return PathLease(holder, path, owner_pid, _unlink_backing_file)


def _unlink_backing_file(path: str) -> None:
    """Remove a ``.dat`` by name, and its ``.dat.tmp`` unless a live writer (any process) holds it.

    Failures are logged, never raised: this runs at GC or interpreter exit, where nobody could
    handle an error. Blocks on disk.
    """
    target = Path(path)
    try:
        directory = open_directory(target.parent)
        failures = directory.unlink_all([target.name])
        _, swept_failures = directory.sweep_temps([target.name + TMP_SUFFIX])
        failures.extend(swept_failures)
    except (OSError, ValueError):
        logger.debug("Could not remove cache file %s", path, exc_info=True)
        return
    for name, error in failures:
        logger.debug("Could not remove %s in %s: %s", name, target.parent, error)
