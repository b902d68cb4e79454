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
import shutil
import signal
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from crash_harness import Campaign, Zygote, report_counts

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


def _run(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)


def _make_filesystem(fstype: str, image: Path) -> str | None:
    """Create the image; return why it failed, or ``None``."""
    with image.open("wb") as handle:
        handle.truncate(IMAGE_BYTES[fstype])
    made = _run(f"mkfs.{fstype}", *MKFS_ARGS[fstype], str(image))
    return None if made.returncode == 0 else f"mkfs.{fstype} failed: {made.stderr.strip()}"


def _mount(fstype: str, image: Path, mountpoint: Path) -> str | None:
    mounted = _run("mount", "-t", fstype, "-o", "loop", str(image), str(mountpoint))
    return None if mounted.returncode == 0 else f"mount -o loop failed: {mounted.stderr.strip()}"


def _umount(mountpoint: Path, image: Path) -> None:
    """Unmount and wait until the image's loop device is gone.

    A loop device that outlives the unmount means the filesystem is still mounted elsewhere
    (another mount namespace holds it); mounting the image again would then return that same,
    shut-down filesystem instead of replaying the journal, so this is an error.
    """
    for _ in range(100):
        if _run("umount", str(mountpoint)).returncode == 0:
            break
        time.sleep(0.05)
    else:
        raise RuntimeError(f"could not unmount {mountpoint}: {_run('umount', str(mountpoint)).stderr}")
    for _ in range(100):
        if not _run("losetup", "-j", str(image)).stdout.strip():
            return
        time.sleep(0.05)
    raise RuntimeError(f"{image} stays attached to a loop device: is it mounted in another mount namespace?")


def _shut_down(mountpoint: Path, flags: int) -> None:
    descriptor = os.open(mountpoint, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.ioctl(descriptor, GOINGDOWN, struct.pack("I", flags))
    finally:
        os.close(descriptor)


@functools.cache
def _unavailable(fstype: str, scratch: Path) -> str | None:
    """Why a power cut cannot be simulated on ``fstype`` here, or ``None`` if it can (probed)."""
    if os.geteuid() != 0:
        return "loop-mounting a filesystem image needs root"
    if shutil.which(f"mkfs.{fstype}") is None:
        package = "xfsprogs" if fstype == "xfs" else "e2fsprogs"
        return f"mkfs.{fstype} is not installed (package {package})"
    image, mountpoint = scratch / f"probe.{fstype}", scratch / f"probe-{fstype}"
    mountpoint.mkdir(exist_ok=True)
    reason = _make_filesystem(fstype, image) or _mount(fstype, image, mountpoint)
    if reason is not None:
        return reason
    try:
        _shut_down(mountpoint, NOLOGFLUSH)
    except OSError as exc:
        return f"the GOINGDOWN ioctl is refused on {fstype}: {exc}"
    finally:
        _umount(mountpoint, image)
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
    for failure in (_make_filesystem(fstype, image), _mount(fstype, image, mountpoint)):
        assert failure is None, failure
    yield fstype, image, mountpoint
    if os.path.ismount(mountpoint):
        try:
            _umount(mountpoint, image)
        except RuntimeError:
            # Never leave a mount behind, even when something still holds it open.
            _run("umount", "-l", str(mountpoint))
            raise


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
        _umount(mountpoint, image)
        failure = _mount(fstype, image, mountpoint)
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
    _umount(mountpoint, image)
    assert _mount(fstype, image, mountpoint) is None

    assert sorted(name for name in os.listdir(directory) if name.startswith("k.")) == []
