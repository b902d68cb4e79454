"""Loop-mounted filesystem images, for tests that need one filesystem's real behaviour.

Making and mounting an image needs root, ``losetup``/``mount`` and the filesystem's ``mkfs``:
:func:`loop_mount_refusal` says which is missing, and :func:`make_filesystem` and :func:`mount`
return why they failed, so a caller can skip with the precise reason. :func:`release` is the
teardown: it unmounts and detaches, and never leaves a mount behind.
"""

import os
import shutil
import subprocess
import time
from pathlib import Path

__all__ = ["loop_mount_refusal", "make_filesystem", "mount", "release", "run", "umount"]

MKFS_PACKAGES = {"ext4": "e2fsprogs", "xfs": "xfsprogs"}


def run(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)


def loop_mount_refusal(fstype: str) -> str | None:
    """Why an ``fstype`` image cannot be loop-mounted here (privilege or tools), or ``None``."""
    if os.geteuid() != 0:
        return "loop-mounting a filesystem image needs root"
    for tool, package in ((f"mkfs.{fstype}", MKFS_PACKAGES[fstype]), ("losetup", "util-linux"), ("mount", "mount")):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (package {package})"
    return None


def make_filesystem(fstype: str, image: Path, size: int, mkfs_args: list[str]) -> str | None:
    """Create a sparse ``size``-byte image holding a fresh ``fstype``; return why it failed, or ``None``."""
    with image.open("wb") as handle:
        handle.truncate(size)
    made = run(f"mkfs.{fstype}", *mkfs_args, str(image))
    return None if made.returncode == 0 else f"mkfs.{fstype} failed: {made.stderr.strip()}"


def mount(fstype: str, image: Path, mountpoint: Path) -> str | None:
    """Loop-mount ``image`` on ``mountpoint``; return why it failed, or ``None``."""
    mounted = run("mount", "-t", fstype, "-o", "loop", str(image), str(mountpoint))
    return None if mounted.returncode == 0 else f"mount -o loop failed: {mounted.stderr.strip()}"


def umount(mountpoint: Path, image: Path) -> None:
    """Unmount and wait until the image's loop device is gone.

    A loop device that outlives the unmount means the filesystem is still mounted elsewhere
    (another mount namespace holds it); mounting the image again would then return that same
    filesystem, in whatever state it was left, instead of a freshly mounted one, so this is an
    error.
    """
    for _ in range(100):
        if run("umount", str(mountpoint)).returncode == 0:
            break
        time.sleep(0.05)
    else:
        raise RuntimeError(f"could not unmount {mountpoint}: {run('umount', str(mountpoint)).stderr}")
    for _ in range(100):
        if not run("losetup", "-j", str(image)).stdout.strip():
            return
        time.sleep(0.05)
    raise RuntimeError(f"{image} stays attached to a loop device: is it mounted in another mount namespace?")


def release(mountpoint: Path, image: Path) -> None:
    """Teardown: unmount ``mountpoint`` if still mounted and detach ``image``'s loop device.

    When something still holds the filesystem, it is detached lazily (``umount -l``, and the loop
    device is freed when the last user lets go) and the error is raised.
    """
    if not os.path.ismount(mountpoint):
        return
    try:
        umount(mountpoint, image)
    except RuntimeError:
        run("umount", "-l", str(mountpoint))
        for line in run("losetup", "-j", str(image)).stdout.splitlines():
            run("losetup", "-d", line.partition(":")[0])
        raise
