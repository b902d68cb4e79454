"""Power cuts on real filesystems: shut the filesystem down at random instants, remount, verify.

An ext4 (and, when ``mkfs.xfs`` is installed, an xfs) image is loop-mounted; the crash-campaign
writer runs on it with its acknowledgement log outside the image. At a random instant (mostly
inside a write call) the writer is frozen, the filesystem is shut down with the ``GOINGDOWN``
ioctl (what ``xfs_io -x -c "shutdown [-f]"`` issues; ext4 implements the same request), with or
without flushing its log, and the writer is killed. After unmount and remount (journal replay)
a fresh store must read every key as its last acknowledged (fsynced) value or the one being
written, with nothing torn and no temp left. Needs root and loop devices; skipped with the
reason otherwise. ``LDC_POWER_CUTS`` sets the number of cuts per filesystem (default 10).
"""

import fcntl
import functools
import os
import random
import signal
import struct
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from crash_harness import Campaign, Zygote, report_counts

from loop_mount import loop_mount_refusal, make_filesystem, mount, release, umount

CUTS = int(os.environ.get("LDC_POWER_CUTS", "10"))
PURGE_CHILD = Path(__file__).parent / "child" / "commit_then_purge.py"

# _IOR('X', 125, __u32): XFS_IOC_GOINGDOWN, which ext4 implements as EXT4_IOC_SHUTDOWN.
GOINGDOWN = 0x8004587D
# Flush the log first (xfs_io "shutdown -f") or drop it (plain "shutdown"): both model a power cut
# for data that was never fsynced; fsynced data must survive either.
LOGFLUSH = 1
NOLOGFLUSH = 2

IMAGE_BYTES = {"ext4": 256 * 1024**2, "xfs": 512 * 1024**2}
MKFS_ARGS = {
    "ext4": ["-q", "-F", "-b", "4096", "-E", "lazy_itable_init=0,lazy_journal_init=0"],
    "xfs": ["-q", "-f"],
}


def _make_filesystem(fstype: str, image: Path) -> str | None:
    return make_filesystem(fstype, image, IMAGE_BYTES[fstype], MKFS_ARGS[fstype])


def _shut_down(mountpoint: Path, flags: int) -> None:
    descriptor = os.open(mountpoint, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.ioctl(descriptor, GOINGDOWN, struct.pack("I", flags))
    finally:
        os.close(descriptor)


@functools.cache
def _unavailable(fstype: str, scratch: Path) -> str | None:
    """Why a power cut cannot be simulated on ``fstype`` here, or ``None`` if it can (probed)."""
    image, mountpoint = scratch / f"probe.{fstype}", scratch / f"probe-{fstype}"
    mountpoint.mkdir(exist_ok=True)
    reason = loop_mount_refusal(fstype) or _make_filesystem(fstype, image) or mount(fstype, image, mountpoint)
    if reason is not None:
        return reason
    try:
        _shut_down(mountpoint, NOLOGFLUSH)
    except OSError as exc:
        return f"the GOINGDOWN ioctl is refused on {fstype}: {exc}"
    finally:
        umount(mountpoint, image)
        image.unlink()
    return None


@pytest.fixture(scope="module")
def probe_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("power-cut-probe")


@pytest.fixture
def mounted(request: pytest.FixtureRequest, tmp_path: Path, probe_dir: Path) -> Iterator[tuple[str, Path, Path]]:
    """``(fstype, image, mountpoint)`` of a freshly made, mounted filesystem; unmounted afterwards."""
    fstype: str = request.param
    reason = _unavailable(fstype, probe_dir)
    if reason is not None:
        pytest.skip(reason)
    image, mountpoint = tmp_path / f"{fstype}.img", tmp_path / "mnt"
    mountpoint.mkdir()
    for failure in (_make_filesystem(fstype, image), mount(fstype, image, mountpoint)):
        assert failure is None, failure
    yield fstype, image, mountpoint
    release(mountpoint, image)


def _cutter(mountpoint: Path, rng: random.Random, flags_used: list[int]) -> Callable[[int], None]:
    def cut(pid: int) -> None:
        # Everything stops at once: the writer gets no chance to run after the filesystem died.
        os.kill(pid, signal.SIGSTOP)
        flags = rng.choice((LOGFLUSH, NOLOGFLUSH))
        flags_used.append(flags)
        _shut_down(mountpoint, flags)
        os.kill(pid, signal.SIGKILL)

    return cut


@pytest.mark.slow
@pytest.mark.timeout(max(300, CUTS * 20))
@pytest.mark.parametrize("mounted", ["ext4", "xfs"], indirect=True)
def test_power_cut_at_random_instants_keeps_every_acknowledged_value(
    tmp_path: Path, mounted: tuple[str, Path, Path]
) -> None:
    fstype, image, mountpoint = mounted
    seed = int(os.environ.get("LDC_RELIABILITY_SEED", random.SystemRandom().getrandbits(32)))
    rng = random.Random(seed)
    flags_used: list[int] = []

    def remount() -> None:
        umount(mountpoint, image)
        failure = mount(fstype, image, mountpoint)
        assert failure is None, failure

    zygote = Zygote(tmp_path / "zygote.stderr")
    try:
        # Aim later than the SIGKILL campaign does, so that every run has fsynced acknowledgements
        # that the cut must not take back.
        campaign = Campaign(zygote, mountpoint / "store", tmp_path / "acks.jsonl", seed, aim_at_call=(2, 6))
        for _ in range(CUTS):
            campaign.cycle(_cutter(mountpoint, rng, flags_used), after_interrupt=remount)
    finally:
        zygote.close()

    counts = campaign.counts
    report_counts(f"power-cut-{fstype}", {**counts.summary(), "log_flushed_cuts": flags_used.count(LOGFLUSH)})
    context = f"{fstype}, seed {seed}, counts {counts.summary()}:\n" + "\n".join(counts.details)
    assert counts.details == [], context
    assert (counts.torn, counts.lost, counts.temps_left) == (0, 0, 0), context
    assert counts.interruptions == CUTS, context
    assert counts.acknowledged_writes > 0, context


@pytest.mark.parametrize("mounted", ["ext4", "xfs"], indirect=True)
def test_an_acknowledged_purge_survives_a_power_cut(mounted: tuple[str, Path, Path]) -> None:
    fstype, image, mountpoint = mounted
    directory = mountpoint / "store"
    subprocess.run([sys.executable, str(PURGE_CHILD), str(directory)], capture_output=True, timeout=120, check=True)

    # Drop the journal's uncommitted tail: only what was made durable survives.
    _shut_down(mountpoint, NOLOGFLUSH)
    umount(mountpoint, image)
    assert mount(fstype, image, mountpoint) is None

    assert sorted(name for name in os.listdir(directory) if name.startswith("k.")) == []
