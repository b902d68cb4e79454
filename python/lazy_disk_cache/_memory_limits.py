"""How much RAM the process may use, and how much anonymous RAM it holds now.

The *effective memory limit* is the smallest of:

- physical memory;
- for the memory cgroup the process belongs to, and each ancestor up to the root of its mount:
  cgroup v2 ``memory.max`` and ``memory.high``, cgroup v1 ``memory.limit_in_bytes`` and
  ``memory.soft_limit_in_bytes`` (v1, v2 and hybrid hierarchies alike);
- the soft ``RLIMIT_AS``, when set.

The process's own cgroup is found through ``/proc/self/cgroup`` and ``/proc/self/mountinfo``,
never guessed from a fixed path, so containers, cgroup namespaces and bind mounts resolve to the
directory that really limits this process. ``max``, cgroup v1's "no limit" (PAGE_COUNTER_MAX
pages, just under 2**63) and non-positive values mean "no limit"; a file that is missing or
unreadable is no limit either. Nothing here raises for what the system lacks.

Every reader takes its roots (``proc_root``, ``fs_root``) and callables as arguments, so tests
feed fake cgroup trees and limits. This module reads; it does not cache (the budget decides how
often to ask) and it never writes.
"""

from __future__ import annotations

import logging
import os
import resource
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

__all__ = [
    "CGROUP_LIMIT_FILES",
    "UNLIMITED_FLOOR",
    "CgroupLimitFile",
    "EffectiveLimit",
    "MemoryCgroup",
    "MemoryProbe",
    "cgroup_limit_files",
    "find_memory_cgroups",
    "parse_limit_value",
    "physical_memory_bytes",
    "read_rss_anon",
    "rlimit_as_bytes",
]

logger = logging.getLogger(__name__)

# cgroup v1 writes "no limit" as PAGE_COUNTER_MAX pages in bytes (9223372036854771712 with 4 KiB
# pages); other page sizes give other values just under 2**63. Nothing real comes close to 2**62.
UNLIMITED_FLOOR = 1 << 62

_KIB = 1024

# What each cgroup version calls its limits, in the order they are reported.
CGROUP_LIMIT_FILES: dict[int, tuple[str, ...]] = {
    2: ("memory.max", "memory.high"),
    1: ("memory.limit_in_bytes", "memory.soft_limit_in_bytes"),
}


@dataclass(frozen=True, slots=True)
class EffectiveLimit:
    """The smallest memory limit in force: ``nbytes`` and what imposes it (``source``)."""

    nbytes: int
    source: str


@dataclass(frozen=True, slots=True)
class MemoryCgroup:
    """The process's own memory cgroup in one hierarchy: its directory and the mount it lives in."""

    version: Literal[1, 2]
    path: Path
    mountpoint: Path

    def lineage(self) -> Iterator[Path]:
        """The cgroup's directory, then each ancestor up to and including the mount's root."""
        current = self.path
        yield current
        while current != self.mountpoint and self.mountpoint in current.parents:
            current = current.parent
            yield current


@dataclass(frozen=True, slots=True)
class CgroupLimitFile:
    """One limit found in the cgroup tree."""

    path: Path
    nbytes: int


@dataclass(frozen=True, slots=True)
class _Mount:
    root: str
    mountpoint: str
    fstype: str
    super_options: frozenset[str]


def parse_limit_value(text: str) -> int | None:
    """Bytes in a cgroup limit file, or ``None`` for "no limit" (``max``, huge, non-positive, garbage)."""
    text = text.strip()
    if text == "max":
        return None
    try:
        value = int(text)
    except ValueError:
        return None
    if value <= 0 or value >= UNLIMITED_FLOOR:
        return None
    return value


def physical_memory_bytes() -> int:
    """Physical memory of the machine in bytes (``sysconf``), or 0 when the system will not say."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        return 0


def rlimit_as_bytes() -> int | None:
    """The soft ``RLIMIT_AS`` in bytes, or ``None`` when it is unlimited."""
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft == resource.RLIM_INFINITY or soft <= 0:
        return None
    return soft


def read_rss_anon(proc_root: Path = Path("/proc")) -> int | None:
    """The process's resident anonymous memory (``RssAnon`` of ``/proc/self/status``) in bytes.

    ``None`` when the kernel does not report it. One open + read + close of a procfs file
    (tens of microseconds); never cached, and never kept open (a forked child must read its own).
    """
    try:
        with open(proc_root / "self" / "status", "rb") as status:
            text = status.read()
    except OSError:
        return None
    start = text.find(b"\nRssAnon:")
    if start < 0:
        return None
    fields = text[start + len(b"\nRssAnon:") : text.find(b"\n", start + 1)].split()
    try:
        return int(fields[0]) * _KIB
    except (IndexError, ValueError):
        return None


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None


def _unescape_mount_field(field: str) -> str:
    """Mountinfo escapes space, tab, newline and backslash as octal (``\\040``)."""
    if "\\" not in field:
        return field
    out: list[str] = []
    index = 0
    while index < len(field):
        octal = field[index + 1 : index + 4]
        if field[index] == "\\" and len(octal) == 3 and all(c in "01234567" for c in octal):
            out.append(chr(int(octal, 8)))
            index += 4
        else:
            out.append(field[index])
            index += 1
    return "".join(out)


def _parse_mountinfo(text: str) -> list[_Mount]:
    mounts: list[_Mount] = []
    for line in text.splitlines():
        left, separator, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if not separator or len(fields) < 5 or len(tail) < 3:
            continue
        mounts.append(
            _Mount(
                root=_unescape_mount_field(fields[3]),
                mountpoint=_unescape_mount_field(fields[4]),
                fstype=tail[0],
                super_options=frozenset(tail[2].split(",")),
            )
        )
    return mounts


def _own_cgroup_paths(text: str) -> dict[int, str]:
    """The process's cgroup path per version: the v2 line and the v1 hierarchy holding ``memory``."""
    paths: dict[int, str] = {}
    for line in text.splitlines():
        hierarchy, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if not path:
            continue
        if hierarchy == "0" and controllers == "":
            paths[2] = path
        elif "memory" in controllers.split(","):
            paths[1] = path
    return paths


def _is_memory_mount(mount: _Mount, version: int) -> bool:
    if version == 2:
        return mount.fstype == "cgroup2"
    return mount.fstype == "cgroup" and "memory" in mount.super_options


def _resolve(mount: _Mount, cgroup_path: str, fs_root: Path) -> MemoryCgroup | None:
    """Map a cgroup path (as ``/proc/self/cgroup`` shows it) into ``mount``'s directory tree."""
    mountpoint = fs_root / mount.mountpoint.lstrip("/")
    root = mount.root.rstrip("/")
    if cgroup_path == root or cgroup_path.startswith(root + "/"):
        relative = cgroup_path[len(root) :]
    else:
        # Outside the mount's root (a cgroup namespace shows "/.." paths): the mount's root is
        # the closest directory we can see.
        relative = ""
    candidate = mountpoint / relative.lstrip("/")
    # Containers without a cgroup namespace may mount their own cgroup at the mountpoint while
    # /proc/self/cgroup still shows the host path; the mountpoint is then the process's cgroup.
    for directory in (candidate, mountpoint):
        if directory.is_dir():
            version: Literal[1, 2] = 2 if mount.fstype == "cgroup2" else 1
            return MemoryCgroup(version=version, path=directory, mountpoint=mountpoint)
    return None


def find_memory_cgroups(proc_root: Path = Path("/proc"), fs_root: Path = Path("/")) -> list[MemoryCgroup]:
    """The process's own memory cgroup directories: v1, v2 or both (hybrid), in that order.

    Reads ``/proc/self/cgroup`` and ``/proc/self/mountinfo`` under ``proc_root``; mountpoints are
    taken under ``fs_root``. An empty list when there is no cgroup filesystem or nothing readable.
    """
    cgroup_text = _read_text(proc_root / "self" / "cgroup")
    mountinfo_text = _read_text(proc_root / "self" / "mountinfo")
    if cgroup_text is None or mountinfo_text is None:
        return []
    mounts = _parse_mountinfo(mountinfo_text)
    found: list[MemoryCgroup] = []
    for version, cgroup_path in sorted(_own_cgroup_paths(cgroup_text).items()):
        for mount in mounts:
            if _is_memory_mount(mount, version):
                resolved = _resolve(mount, cgroup_path, fs_root)
                if resolved is not None:
                    found.append(resolved)
                    break
    return found


def cgroup_limit_files(cgroup: MemoryCgroup) -> Iterator[CgroupLimitFile]:
    """Every limit set on ``cgroup`` or an ancestor (a hierarchy limits all of its descendants)."""
    for directory in cgroup.lineage():
        for name in CGROUP_LIMIT_FILES[cgroup.version]:
            text = _read_text(directory / name)
            value = None if text is None else parse_limit_value(text)
            if value is not None:
                yield CgroupLimitFile(directory / name, value)


class MemoryProbe:
    """Reads the effective memory limit and the process's anonymous RAM.

    Every source is injectable: ``proc_root`` and ``fs_root`` move the ``/proc`` and cgroup trees
    (tests build fake ones), ``physical_bytes`` and ``rlimit_as`` replace the system calls.
    """

    def __init__(
        self,
        *,
        proc_root: Path = Path("/proc"),
        fs_root: Path = Path("/"),
        physical_bytes: Callable[[], int] = physical_memory_bytes,
        rlimit_as: Callable[[], int | None] = rlimit_as_bytes,
    ) -> None:
        self.proc_root = proc_root
        self.fs_root = fs_root
        self._physical_bytes = physical_bytes
        self._rlimit_as = rlimit_as

    def effective_limit(self) -> EffectiveLimit:
        """The smallest limit in force. Reads a few small procfs/cgroupfs files; no caching."""
        best = EffectiveLimit(self._physical_bytes(), "physical memory")
        if best.nbytes <= 0:
            best = EffectiveLimit(UNLIMITED_FLOOR, "no limit found")
        for cgroup in find_memory_cgroups(self.proc_root, self.fs_root):
            for limit in cgroup_limit_files(cgroup):
                if limit.nbytes < best.nbytes:
                    best = EffectiveLimit(limit.nbytes, f"cgroup v{cgroup.version} {limit.path}")
        address_space = self._rlimit_as()
        if address_space is not None and address_space < best.nbytes:
            best = EffectiveLimit(address_space, "RLIMIT_AS")
        return best

    def rss_anon(self) -> int | None:
        """``RssAnon`` in bytes (see :func:`read_rss_anon`)."""
        return read_rss_anon(self.proc_root)
