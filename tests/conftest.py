"""Shared fixtures for the test suite."""

import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from extents import reflink_refusal
from lazy_disk_cache import _rust, paths
from loop_mount import loop_mount_refusal, make_filesystem, mount, release


@pytest.fixture
def cache_dir(tmp_path: Path) -> _rust.CacheDir:
    """An open native cache directory in a fresh temporary directory."""
    return _rust.CacheDir.open(tmp_path)


@pytest.fixture
def private_tempdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point tempfile at an empty directory so ephemeral files and private store directories are observable."""
    directory = tmp_path / "tmp"
    directory.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(directory))
    return directory


@pytest.fixture
def judged_keys(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every key the key rule judges from now on, in order."""
    judged: list[str] = []
    real = paths._violated_clause

    def counting(key: str) -> str | None:
        judged.append(key)
        return real(key)

    monkeypatch.setattr(paths, "_violated_clause", counting)
    return judged


@pytest.fixture
def clean_faults() -> Iterator[None]:
    """Resets the native fault seam (faults and counters) before and after the test."""
    _rust._clear_faults()
    yield
    _rust._clear_faults()


XFS_IMAGE_BYTES = 300 * 1024**2


@pytest.fixture
def reflink_dir(tmp_path: Path) -> Iterator[Path]:
    """A directory on a filesystem that can reflink, or a skip saying why there is none.

    ``tmp_path`` itself when its filesystem reflinks, else a fresh xfs image made with reflink
    support (sparse, under ``tmp_path``), loop-mounted for the test and always unmounted after.
    """
    here = reflink_refusal(tmp_path)
    if here is None:
        yield tmp_path
        return
    image, mountpoint = tmp_path / "reflink.xfs", tmp_path / "reflink"
    mountpoint.mkdir()
    reason = (
        loop_mount_refusal("xfs")
        or make_filesystem("xfs", image, XFS_IMAGE_BYTES, ["-q", "-f", "-m", "reflink=1"])
        or mount("xfs", image, mountpoint)
    )
    try:
        reason = reason or reflink_refusal(mountpoint)
        if reason is not None:
            pytest.skip(f"{here}, and no reflink-capable xfs image can be loop-mounted here: {reason}")
        yield mountpoint
    finally:
        release(mountpoint, image)
