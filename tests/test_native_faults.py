"""Failure paths of the native layer: injected faults, file size limits, sweeps, fsync counts."""

import errno
import fcntl
import json
import os
import subprocess
import sys
import traceback
from pathlib import Path

import numpy as np
import pytest

from lazy_disk_cache import _rust
from listing import artefacts

CHUNK = 1 << 20
CHILD = Path(__file__).parent / "child"


@pytest.mark.usefixtures("clean_faults")
def test_fsync_failure_raises_eio_with_filename_and_keeps_old_content(
    tmp_path: Path, cache_dir: _rust.CacheDir
) -> None:
    (tmp_path / "x.dat").write_bytes(b"old content")
    _rust._inject_fault("fsync", 1, errno.EIO)

    with pytest.raises(OSError, match="during fsync") as raised:
        cache_dir.write_file("x.dat", b"new content", chunk_bytes=CHUNK, durable=True)

    assert raised.value.errno == errno.EIO
    assert raised.value.filename == str(tmp_path / "x.dat.tmp")
    assert (tmp_path / "x.dat").read_bytes() == b"old content"
    assert sorted(os.listdir(tmp_path)) == ["x.dat"]


@pytest.mark.usefixtures("clean_faults")
@pytest.mark.parametrize(
    ("op", "injected"),
    [("create", errno.EACCES), ("reserve", errno.ENOSPC), ("write", errno.EIO), ("rename", errno.EXDEV)],
)
def test_failed_step_keeps_old_content_and_leaves_no_temp(
    tmp_path: Path, cache_dir: _rust.CacheDir, op: str, injected: int
) -> None:
    (tmp_path / "x.dat").write_bytes(b"old content")
    _rust._inject_fault(op, 1, injected)

    with pytest.raises(OSError) as raised:
        cache_dir.write_file("x.dat", b"new content", chunk_bytes=CHUNK, durable=True)

    assert raised.value.errno == injected
    assert raised.value.filename is not None
    assert (tmp_path / "x.dat").read_bytes() == b"old content"
    assert sorted(os.listdir(tmp_path)) == ["x.dat"]


@pytest.mark.usefixtures("clean_faults")
def test_rename_failure_reports_both_names(tmp_path: Path, cache_dir: _rust.CacheDir) -> None:
    _rust._inject_fault("rename", 1, errno.EXDEV)

    with pytest.raises(OSError) as raised:
        cache_dir.write_file("x.dat", b"new", chunk_bytes=CHUNK, durable=False)

    assert (raised.value.filename, raised.value.filename2) == (str(tmp_path / "x.dat.tmp"), str(tmp_path / "x.dat"))


@pytest.mark.usefixtures("clean_faults")
def test_dir_fsync_failure_is_raised_after_the_new_content_is_in_place(
    tmp_path: Path, cache_dir: _rust.CacheDir
) -> None:
    (tmp_path / "x.dat").write_bytes(b"old content")
    _rust._inject_fault("dir_fsync", 1, errno.EIO)

    with pytest.raises(OSError, match="during dir fsync"):
        cache_dir.write_file("x.dat", b"new content", chunk_bytes=CHUNK, durable=True)

    assert (tmp_path / "x.dat").read_bytes() == b"new content"
    assert sorted(os.listdir(tmp_path)) == ["x.dat"]


@pytest.mark.usefixtures("clean_faults")
def test_map_failure_surfaces_as_oserror(tmp_path: Path, cache_dir: _rust.CacheDir) -> None:
    (tmp_path / "x.dat").write_bytes(b"content")
    _rust._inject_fault("map", 1, errno.ENOMEM)

    with pytest.raises(OSError) as raised:
        _rust.FileMapping.open(cache_dir, "x.dat")

    assert raised.value.errno == errno.ENOMEM


@pytest.mark.usefixtures("clean_faults")
def test_non_durable_write_does_not_fsync(cache_dir: _rust.CacheDir) -> None:
    cache_dir.write_file("x.dat", b"data", chunk_bytes=CHUNK, durable=False)

    counts = _rust._op_counts()

    assert (counts["fsync"], counts["dir_fsync"], counts["rename"]) == (0, 0, 1)


@pytest.mark.usefixtures("clean_faults")
def test_group_commit_of_many_pairs_fsyncs_the_directory_once(tmp_path: Path, cache_dir: _rust.CacheDir) -> None:
    pairs = 50
    with cache_dir.begin_commit(chunk_bytes=CHUNK) as batch:
        for index in range(pairs):
            values = np.full(8, index, dtype=np.int64)
            batch.add_npy(
                f"k{index}", descr="'<i8'", fortran_order=False, shape=(8,), nbytes=64, meta=b"{}", source=values.data
            )
        batch.commit()

    counts = _rust._op_counts()

    assert counts["dir_fsync"] == 1
    assert counts["fsync"] == 2 * pairs
    assert counts["rename"] == 2 * pairs
    assert len(artefacts(tmp_path)) == 2 * pairs


@pytest.mark.usefixtures("clean_faults")
def test_rename_failure_in_group_commit_keeps_earlier_keys_and_removes_the_rest(
    tmp_path: Path, cache_dir: _rust.CacheDir
) -> None:
    with cache_dir.begin_commit(chunk_bytes=CHUNK) as batch:
        for key in ("a", "b", "c"):
            batch.add_npy(key, descr="'|u1'", fortran_order=False, shape=(1,), nbytes=1, meta=b"{}", source=b"x")
        _rust._inject_fault("rename", 3, errno.EIO)

        with pytest.raises(OSError):
            batch.commit()

    assert artefacts(tmp_path) == ["a.meta.json", "a.npy"]
    assert _rust._op_counts()["dir_fsync"] == 1


@pytest.mark.usefixtures("clean_faults")
def test_unknown_fault_operation_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="unknown operation"):
        _rust._inject_fault("teleport", 1, errno.EIO)


def test_write_past_rlimit_fsize_raises_efbig_and_keeps_old_content(tmp_path: Path) -> None:
    (tmp_path / "x.dat").write_bytes(b"old content")

    child = subprocess.run(
        [sys.executable, str(CHILD / "native_fsize_limit.py"), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    assert child.returncode == 0, f"child ended with {child.returncode}: {child.stderr}"
    outcome = json.loads(child.stdout)
    assert outcome["errno"] in (errno.EFBIG, errno.ENOSPC)
    assert outcome["filename"] == str(tmp_path / "x.dat.tmp")
    assert (tmp_path / "x.dat").read_bytes() == b"old content"
    assert sorted(os.listdir(tmp_path)) == ["x.dat"]


def test_sweep_removes_our_temps_and_nothing_else(tmp_path: Path, cache_dir: _rust.CacheDir) -> None:
    for name in ("a.npy.tmp", "b.meta.json.tmp", "c.dat.tmp", "keep.tmp", ".npy.tmp", "d.npy", "e.txt.tmp"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "dir.dat.tmp").mkdir()

    removed, failed = cache_dir.sweep_temps()

    assert sorted(removed) == ["a.npy.tmp", "b.meta.json.tmp", "c.dat.tmp"]
    assert failed == []
    assert artefacts(tmp_path) == [".npy.tmp", "d.npy", "dir.dat.tmp", "e.txt.tmp", "keep.tmp"]


@pytest.mark.usefixtures("clean_faults")
def test_a_stale_temp_that_cannot_be_unlinked_fails_the_write_and_keeps_the_old_file(
    tmp_path: Path, cache_dir: _rust.CacheDir
) -> None:
    (tmp_path / "x.dat").write_bytes(b"old content")
    (tmp_path / "x.dat.tmp").write_bytes(b"stale")
    _rust._inject_fault("unlink", 1, errno.EIO)

    with pytest.raises(OSError) as failure:
        cache_dir.write_file("x.dat", b"new content", chunk_bytes=4, durable=True)

    assert failure.value.errno == errno.EIO
    assert failure.value.filename == str(tmp_path / "x.dat.tmp")
    assert (tmp_path / "x.dat").read_bytes() == b"old content"
    assert (tmp_path / "x.dat.tmp").read_bytes() == b"stale"


def test_a_stale_temp_is_replaced_by_the_next_write(tmp_path: Path, cache_dir: _rust.CacheDir) -> None:
    outside = tmp_path / "outside.bin"
    outside.write_bytes(b"keep me")
    (tmp_path / "x.dat.tmp").symlink_to(outside)

    cache_dir.write_file("x.dat", b"new content", chunk_bytes=4, durable=True)

    assert (tmp_path / "x.dat").read_bytes() == b"new content"
    assert outside.read_bytes() == b"keep me"
    assert not (tmp_path / "x.dat.tmp").is_symlink()


def test_sweep_with_names_considers_only_those_names(tmp_path: Path, cache_dir: _rust.CacheDir) -> None:
    for name in ("a.npy.tmp", "CON.npy.tmp", "b.dat.tmp", "notes.txt"):
        (tmp_path / name).write_bytes(b"x")

    removed, failed = cache_dir.sweep_temps(["a.npy.tmp", "notes.txt", "gone.meta.json.tmp"])

    assert (removed, failed) == (["a.npy.tmp"], [])
    assert artefacts(tmp_path) == ["CON.npy.tmp", "b.dat.tmp", "notes.txt"]


def test_sweep_unlinks_a_symlinked_temp_without_following_it(tmp_path: Path) -> None:
    cache_root = tmp_path / "cache"
    cache_root.mkdir()
    outside = tmp_path / "outside.bin"
    outside.write_bytes(b"keep me")
    (cache_root / "k.npy.tmp").symlink_to(outside)

    removed, _ = _rust.CacheDir.open(cache_root).sweep_temps()

    assert removed == ["k.npy.tmp"]
    assert outside.read_bytes() == b"keep me"


def test_sweep_skips_a_temp_locked_by_a_live_writer(tmp_path: Path, cache_dir: _rust.CacheDir) -> None:
    temp = tmp_path / "live.dat.tmp"
    temp.write_bytes(b"being written")

    with open(temp, "rb") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        removed, failed = cache_dir.sweep_temps()

    assert (removed, failed) == ([], [])
    assert temp.exists()


@pytest.mark.usefixtures("clean_faults")
def test_sweep_of_a_read_only_directory_does_not_raise(tmp_path: Path, cache_dir: _rust.CacheDir) -> None:
    (tmp_path / "k.npy.tmp").write_bytes(b"x")
    _rust._inject_fault("unlink", 1, errno.EROFS)

    removed, failed = cache_dir.sweep_temps()

    assert (removed, failed) == ([], [])
    assert (tmp_path / "k.npy.tmp").exists()


@pytest.mark.usefixtures("clean_faults")
def test_sweep_reports_other_unlink_failures_with_their_error(tmp_path: Path, cache_dir: _rust.CacheDir) -> None:
    (tmp_path / "k.npy.tmp").write_bytes(b"x")
    _rust._inject_fault("unlink", 1, errno.EIO)

    removed, failed = cache_dir.sweep_temps()

    assert removed == []
    assert [(name, error.errno, error.filename) for name, error in failed] == [
        ("k.npy.tmp", errno.EIO, str(tmp_path / "k.npy.tmp"))
    ]


# -- the operation goes into a note; strerror stays the system's text ------------------------------


def test_a_missing_directory_raises_with_the_plain_strerror_and_the_operation_in_a_note(tmp_path: Path) -> None:
    missing = tmp_path / "missing"

    with pytest.raises(FileNotFoundError) as raised:
        _rust.CacheDir.open(missing)

    error = raised.value
    assert error.strerror == os.strerror(errno.ENOENT)
    assert error.filename == str(missing)
    assert str(error) == f"[Errno {errno.ENOENT}] {os.strerror(errno.ENOENT)}: {str(missing)!r}"
    assert len(error.__notes__) == 1
    assert error.__notes__[0].startswith("during ")


@pytest.mark.usefixtures("clean_faults")
def test_a_failed_rename_keeps_strerror_pure_and_names_the_operation_in_the_traceback(
    tmp_path: Path, cache_dir: _rust.CacheDir
) -> None:
    _rust._inject_fault("rename", 1, errno.EXDEV)

    with pytest.raises(OSError) as raised:
        cache_dir.write_file("x.dat", b"new", chunk_bytes=CHUNK, durable=False)

    error = raised.value
    shown = "".join(traceback.format_exception(error))
    assert error.strerror == os.strerror(errno.EXDEV)
    assert error.__notes__ == ["during rename"]
    assert shown.rstrip().endswith(f"{str(tmp_path / 'x.dat')!r}\nduring rename")
