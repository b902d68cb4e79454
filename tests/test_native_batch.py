"""Group commits at scale: bounded descriptors, and the directory lock that fends off sweeps."""

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from lazy_disk_cache import _rust
from listing import artefacts

CHUNK = 1 << 20
CHILD = Path(__file__).parent / "child"
LOW_SOFT_LIMIT = 256


def _run_child(script: str, *args: str) -> dict[str, Any]:
    child = subprocess.run(
        [sys.executable, str(CHILD / script), *args],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert child.returncode == 0, f"child ended with {child.returncode}: {child.stderr}"
    outcome: dict[str, Any] = json.loads(child.stdout)
    return outcome


def _stage(batch: _rust.CommitBatch, key: str, values: np.ndarray) -> None:
    batch.add_npy(
        key,
        descr=repr(values.dtype.str),
        fortran_order=False,
        shape=values.shape,
        nbytes=values.nbytes,
        meta=b"{}",
        source=values.data,
    )


def _temps(directory: Path) -> list[str]:
    return sorted(name for name in os.listdir(directory) if name.endswith(".tmp"))


@pytest.mark.parametrize(("mode", "keys"), [("batch", 1500), ("store", 1000)])
def test_group_commit_of_many_keys_succeeds_under_a_256_descriptor_soft_limit(
    tmp_path: Path, mode: str, keys: int
) -> None:
    outcome = _run_child("native_many_keys.py", str(tmp_path), mode, str(keys), str(LOW_SOFT_LIMIT))

    assert outcome == {"committed": keys, "mismatched": []}, outcome
    root = tmp_path if mode == "batch" else tmp_path / "store"
    assert _temps(root) == []
    np.testing.assert_array_equal(np.load(root / f"k{keys - 1}.npy"), np.arange(4) + 4 * (keys - 1))


def test_sweep_from_another_handle_keeps_staged_keys_temps_and_removes_a_crashs(tmp_path: Path) -> None:
    (tmp_path / "crashed.npy.tmp").write_bytes(b"left by a crash")
    writer = _rust.CacheDir.open(tmp_path)
    other = _rust.CacheDir.open(tmp_path)

    with writer.begin_commit(chunk_bytes=CHUNK) as batch:
        _stage(batch, "a", np.arange(3))
        _stage(batch, "b", np.arange(5))
        during = other.sweep_temps()
        temps_during = _temps(tmp_path)
    after = other.sweep_temps()

    assert during == (["crashed.npy.tmp"], [])
    assert temps_during == ["a.meta.json.tmp", "a.npy.tmp", "b.meta.json.tmp", "b.npy.tmp"]
    assert after == ([], [])
    assert os.listdir(tmp_path) == [_rust.LOCK_FILE_NAME]


def test_sweep_in_another_process_keeps_a_staged_keys_temps(tmp_path: Path, cache_dir: _rust.CacheDir) -> None:
    (tmp_path / "crashed.dat.tmp").write_bytes(b"left by a crash")
    values = np.arange(6, dtype=np.float32)

    with cache_dir.begin_commit(chunk_bytes=CHUNK) as batch:
        _stage(batch, "k", values)
        during = _run_child("native_sweep.py", str(tmp_path))
        temps_during = _temps(tmp_path)
        batch.commit()

    assert during == {"removed": ["crashed.dat.tmp"], "failed": []}
    assert temps_during == ["k.meta.json.tmp", "k.npy.tmp"]
    np.testing.assert_array_equal(np.load(tmp_path / "k.npy"), values)


def test_batch_without_staged_keys_does_not_hold_off_the_sweep(tmp_path: Path, cache_dir: _rust.CacheDir) -> None:
    (tmp_path / "crashed.meta.json.tmp").write_bytes(b"left by a crash")

    with cache_dir.begin_commit(chunk_bytes=CHUNK):
        removed, failed = _rust.CacheDir.open(tmp_path).sweep_temps()

    assert (removed, failed) == (["crashed.meta.json.tmp"], [])


def test_aborted_batch_releases_the_directory_for_the_next_sweep(tmp_path: Path, cache_dir: _rust.CacheDir) -> None:
    (tmp_path / "crashed.npy.tmp").write_bytes(b"left by a crash")
    batch = cache_dir.begin_commit(chunk_bytes=CHUNK)
    _stage(batch, "k", np.arange(2))

    batch.abort()
    removed, _ = cache_dir.sweep_temps()

    assert batch.keys == []
    assert removed == ["crashed.npy.tmp"]
    assert artefacts(tmp_path) == []
