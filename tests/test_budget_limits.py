"""Effective memory limit detection from fake /proc and cgroup trees (v1, v2, hybrid), and RssAnon."""

from __future__ import annotations

import resource
from pathlib import Path

import pytest

from lazy_disk_cache._memory_limits import (
    MemoryProbe,
    find_memory_cgroups,
    parse_limit_value,
    read_rss_anon,
    rlimit_as_bytes,
)

GIB = 1024**3
PHYSICAL = 16 * GIB
V1_UNLIMITED = "9223372036854771712"

V1_MOUNT = "35 31 0:32 {root} /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory"
V1_CPU_MOUNT = "32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu"
V2_MOUNT = "41 31 0:38 {root} {mountpoint} rw,relatime - cgroup2 cgroup2 rw"
ROOT_MOUNT = "22 1 8:1 / / rw,relatime - ext4 /dev/sda1 rw"


class FakeSystem:
    """A fake ``/proc/self`` and cgroup tree under one directory."""

    def __init__(self, root: Path) -> None:
        self.root = root
        (root / "proc" / "self").mkdir(parents=True)

    def proc(self, cgroup: str, mountinfo: list[str]) -> None:
        (self.root / "proc" / "self" / "cgroup").write_text(cgroup)
        (self.root / "proc" / "self" / "mountinfo").write_text("\n".join([ROOT_MOUNT, *mountinfo]) + "\n")

    def cgroup_files(self, directory: str, **files: str) -> Path:
        path = self.root / directory.lstrip("/")
        path.mkdir(parents=True, exist_ok=True)
        for name, value in files.items():
            (path / name.replace("_", ".", 1)).write_text(value + "\n")
        return path

    def probe(self, *, physical: int = PHYSICAL, rlimit_as: int | None = None) -> MemoryProbe:
        return MemoryProbe(
            proc_root=self.root / "proc",
            fs_root=self.root,
            physical_bytes=lambda: physical,
            rlimit_as=lambda: rlimit_as,
        )


@pytest.fixture
def system(tmp_path: Path) -> FakeSystem:
    return FakeSystem(tmp_path)


def _v1_files(limit: str = V1_UNLIMITED, soft: str = V1_UNLIMITED) -> dict[str, str]:
    return {"memory_limit_in_bytes": limit, "memory_soft_limit_in_bytes": soft}


def test_without_any_cgroup_the_limit_is_physical_memory(system: FakeSystem) -> None:
    system.proc("", [])

    limit = system.probe().effective_limit()

    assert (limit.nbytes, limit.source) == (PHYSICAL, "physical memory")


def test_missing_proc_files_fall_back_to_physical_memory(tmp_path: Path) -> None:
    probe = MemoryProbe(proc_root=tmp_path / "nowhere", fs_root=tmp_path, physical_bytes=lambda: PHYSICAL)

    assert probe.effective_limit().nbytes == PHYSICAL


def test_cgroup_v2_memory_max_limits(system: FakeSystem) -> None:
    system.proc("0::/job.slice/run-1\n", [V2_MOUNT.format(root="/", mountpoint="/sys/fs/cgroup")])
    directory = system.cgroup_files("/sys/fs/cgroup/job.slice/run-1", memory_max=str(GIB), memory_high="max")

    limit = system.probe().effective_limit()

    assert limit.nbytes == GIB
    assert limit.source == f"cgroup v2 {directory / 'memory.max'}"


def test_cgroup_v2_memory_high_below_max_wins(system: FakeSystem) -> None:
    system.proc("0::/job\n", [V2_MOUNT.format(root="/", mountpoint="/sys/fs/cgroup")])
    system.cgroup_files("/sys/fs/cgroup/job", memory_max=str(2 * GIB), memory_high=str(GIB))

    assert system.probe().effective_limit().nbytes == GIB


def test_cgroup_v2_max_means_no_limit(system: FakeSystem) -> None:
    system.proc("0::/job\n", [V2_MOUNT.format(root="/", mountpoint="/sys/fs/cgroup")])
    system.cgroup_files("/sys/fs/cgroup/job", memory_max="max", memory_high="max")

    assert system.probe().effective_limit().source == "physical memory"


def test_a_tighter_ancestor_cgroup_limits_its_descendants(system: FakeSystem) -> None:
    system.proc("0::/batch/job/step\n", [V2_MOUNT.format(root="/", mountpoint="/sys/fs/cgroup")])
    system.cgroup_files("/sys/fs/cgroup/batch", memory_max=str(GIB))
    system.cgroup_files("/sys/fs/cgroup/batch/job", memory_max=str(4 * GIB))
    system.cgroup_files("/sys/fs/cgroup/batch/job/step", memory_max="max")

    limit = system.probe().effective_limit()

    assert limit.nbytes == GIB
    assert "/sys/fs/cgroup/batch/memory.max" in limit.source


def test_limits_above_the_mount_root_are_not_read(system: FakeSystem) -> None:
    system.proc("0::/\n", [V2_MOUNT.format(root="/", mountpoint="/sys/fs/cgroup")])
    system.cgroup_files("/sys/fs/cgroup", memory_max="max")
    system.cgroup_files("/sys/fs", memory_max=str(GIB))  # not a cgroup directory

    assert system.probe().effective_limit().nbytes == PHYSICAL


def test_cgroup_v1_limit_in_bytes_limits(system: FakeSystem) -> None:
    system.proc(
        "5:cpu,cpuacct:/docker/abc\n4:memory:/docker/abc\n0::/\n",
        [V1_CPU_MOUNT, V1_MOUNT.format(root="/")],
    )
    directory = system.cgroup_files("/sys/fs/cgroup/memory/docker/abc", **_v1_files(limit=str(3 * GIB)))
    system.cgroup_files("/sys/fs/cgroup/memory/docker", **_v1_files())
    system.cgroup_files("/sys/fs/cgroup/memory", **_v1_files())

    limit = system.probe().effective_limit()

    assert (limit.nbytes, limit.source) == (3 * GIB, f"cgroup v1 {directory / 'memory.limit_in_bytes'}")


def test_cgroup_v1_unlimited_value_means_no_limit(system: FakeSystem) -> None:
    system.proc("4:memory:/docker/abc\n", [V1_MOUNT.format(root="/")])
    system.cgroup_files("/sys/fs/cgroup/memory/docker/abc", **_v1_files())

    assert system.probe().effective_limit().source == "physical memory"


def test_cgroup_v1_soft_limit_below_the_hard_limit_wins(system: FakeSystem) -> None:
    system.proc("4:memory:/job\n", [V1_MOUNT.format(root="/")])
    system.cgroup_files("/sys/fs/cgroup/memory/job", **_v1_files(limit=str(4 * GIB), soft=str(2 * GIB)))

    limit = system.probe().effective_limit()

    assert limit.nbytes == 2 * GIB
    assert limit.source.endswith("memory.soft_limit_in_bytes")


def test_a_container_s_own_cgroup_mounted_at_its_root_is_found(system: FakeSystem) -> None:
    # Docker without a cgroup namespace: /proc/self/cgroup shows the host path, and the
    # container's memory cgroup is mounted with that path as its root.
    system.proc("4:memory:/docker/abc\n", [V1_MOUNT.format(root="/docker/abc")])
    system.cgroup_files("/sys/fs/cgroup/memory", **_v1_files(limit=str(GIB)))

    assert system.probe().effective_limit().nbytes == GIB


def test_a_path_outside_the_cgroup_namespace_resolves_to_the_mount_root(system: FakeSystem) -> None:
    system.proc("0::/../../host.slice\n", [V2_MOUNT.format(root="/", mountpoint="/sys/fs/cgroup")])
    system.cgroup_files("/sys/fs/cgroup", memory_max=str(GIB))

    assert system.probe().effective_limit().nbytes == GIB


def test_hybrid_hierarchy_reads_the_memory_controller_on_v1(system: FakeSystem) -> None:
    system.proc(
        "4:memory:/job\n1:name=systemd:/job\n0::/job\n",
        [V1_MOUNT.format(root="/"), V2_MOUNT.format(root="/", mountpoint="/sys/fs/cgroup/unified")],
    )
    system.cgroup_files("/sys/fs/cgroup/memory/job", **_v1_files(limit=str(2 * GIB)))
    system.cgroup_files("/sys/fs/cgroup/unified/job", cgroup_procs="1")  # no memory controller on v2

    cgroups = find_memory_cgroups(system.root / "proc", system.root)
    limit = system.probe().effective_limit()

    assert [cgroup.version for cgroup in cgroups] == [1, 2]
    assert limit.nbytes == 2 * GIB


def test_hybrid_hierarchy_takes_the_smallest_of_v1_and_v2_limits(system: FakeSystem) -> None:
    system.proc(
        "4:memory:/job\n0::/job\n",
        [V1_MOUNT.format(root="/"), V2_MOUNT.format(root="/", mountpoint="/sys/fs/cgroup/unified")],
    )
    system.cgroup_files("/sys/fs/cgroup/memory/job", **_v1_files(limit=str(2 * GIB)))
    system.cgroup_files("/sys/fs/cgroup/unified/job", memory_max=str(GIB))

    assert system.probe().effective_limit().source.startswith("cgroup v2 ")


def test_escaped_mountpoints_are_unescaped(system: FakeSystem) -> None:
    system.proc("0::/job\n", [V2_MOUNT.format(root="/", mountpoint="/sys/fs/my\\040cgroup")])
    system.cgroup_files("/sys/fs/my cgroup/job", memory_max=str(GIB))

    assert system.probe().effective_limit().nbytes == GIB


def test_rlimit_as_below_every_other_limit_wins(system: FakeSystem) -> None:
    system.proc("0::/job\n", [V2_MOUNT.format(root="/", mountpoint="/sys/fs/cgroup")])
    system.cgroup_files("/sys/fs/cgroup/job", memory_max=str(2 * GIB))

    limit = system.probe(rlimit_as=GIB).effective_limit()

    assert (limit.nbytes, limit.source) == (GIB, "RLIMIT_AS")


def test_rlimit_as_bytes_reports_a_finite_soft_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    lowered = 1 << 40 if hard == resource.RLIM_INFINITY else min(hard, 1 << 40)
    resource.setrlimit(resource.RLIMIT_AS, (lowered, hard))
    try:
        reported = rlimit_as_bytes()
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))

    assert reported == lowered


@pytest.mark.parametrize(
    ("text", "expected"),
    [("1073741824\n", GIB), ("max\n", None), (V1_UNLIMITED, None), ("0", None), ("-1", None), ("junk", None)],
)
def test_limit_values_parse_to_bytes_or_no_limit(text: str, expected: int | None) -> None:
    assert parse_limit_value(text) == expected


def test_rss_anon_is_read_from_proc_status_in_bytes(tmp_path: Path) -> None:
    (tmp_path / "self").mkdir()
    (tmp_path / "self" / "status").write_text(
        "Name:\tpython\nVmRSS:\t  900000 kB\nRssAnon:\t  123456 kB\nRssFile: 1 kB\n"
    )

    assert read_rss_anon(tmp_path) == 123456 * 1024


def test_rss_anon_is_none_when_the_kernel_does_not_report_it(tmp_path: Path) -> None:
    (tmp_path / "self").mkdir()
    (tmp_path / "self" / "status").write_text("Name:\tpython\nVmRSS:\t  900000 kB\n")

    assert read_rss_anon(tmp_path) is None


def test_rss_anon_of_this_process_grows_with_an_anonymous_allocation() -> None:
    before = read_rss_anon()
    block = bytearray(64 * 1024**2)
    block[::4096] = b"\x01" * len(block[::4096])
    after = read_rss_anon()

    assert before is not None and after is not None
    assert after - before >= 60 * 1024**2, (before, after)
