"""Hostile keys on every route: refused with StoreKeyError before any I/O; 0 escapes, 0 neighbours hit.

Legacy keys (legal POSIX names that break only portability clauses) are refused wherever they would be
created and read as a miss where the store reads, without touching anything either.

The child (``child/hostile_routes.py``) pushes every key of the shared hostile table through every
store and ``paths`` route while an audit hook records filesystem events and the native seam counts
file operations. Around the cache directory sits a sentinel tree (files at the names a traversal
would reach); its bytes and mtimes, and the store's own files, must be unchanged afterwards.
"""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from crash_harness import report_counts

from hostile_keys import HOSTILE_KEYS
from lazy_disk_cache.disk_backed_ndarray import DiskBackedNDArray
from lazy_disk_cache.disk_backed_store import DiskBackedStore
from lazy_disk_cache.errors import StoreKeyError
from lazy_disk_cache.lazy_disk_cache import LazyDiskCacheConfig

CHILD = Path(__file__).parent / "child" / "hostile_routes.py"
Snapshot = dict[str, tuple[int, int, int, str]]

SENTINELS = (
    "x.npy",
    "x.meta.json",
    "x.dat",
    "passwd.npy",
    "k.npy",
    "store.npy",
    "parent/x.npy",
    "parent/x.dat",
    "parent/x.meta.json.tmp",
    "parent/store.npy",
    "parent/sibling/b.npy",
    "outside/tree/deep.bin",
)


def snapshot(root: Path) -> Snapshot:
    """Every path under ``root``: mode, size, mtime and content digest (links not followed)."""
    tree: Snapshot = {}
    for directory, subdirectories, files in os.walk(root):
        for name in (*subdirectories, *files):
            path = Path(directory) / name
            info = path.lstat()
            regular = path.is_file() and not path.is_symlink()
            digest = hashlib.sha256(path.read_bytes()).hexdigest() if regular else ""
            tree[str(path.relative_to(root))] = (info.st_mode, info.st_size, info.st_mtime_ns, digest)
    return tree


@pytest.mark.slow
def test_every_hostile_key_is_refused_on_every_route_without_touching_anything(tmp_path: Path) -> None:
    for index, name in enumerate(SENTINELS):
        sentinel = tmp_path / name
        sentinel.parent.mkdir(parents=True, exist_ok=True)
        sentinel.write_bytes(f"sentinel {index}".encode())
    store_dir = tmp_path / "parent" / "store"
    store_dir.mkdir()
    outside_before = _outside(snapshot(tmp_path))
    command = [sys.executable, "-X", "faulthandler", str(CHILD), str(tmp_path)]

    child = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False, env=_ENV)

    assert child.returncode == 0, child.stderr
    report = json.loads(child.stdout)
    escapes = sorted(_diff(outside_before, _outside(snapshot(tmp_path))))
    report_counts(
        "hostile-keys",
        {
            "keys": report["keys"],
            "routes": report["routes"],
            "refusals": report["refusals"],
            "absorbed": report["absorbed"],
            "failures": report["failure_count"],
            "escapes": len(escapes),
            "neighbours_clobbered": len(report["clobbered"]),
        },
    )
    assert report["controls"]["reload_native_ops"] > 0, "the native operation count sees nothing"
    assert report["controls"]["write_audit_events"] > 0, "the audit hook sees nothing"
    assert report["failures"] == [], f"{report['failure_count']} failures:\n" + "\n".join(report["failures"])
    assert escapes == []
    assert report["clobbered"] == []
    assert report["keys"] == len(HOSTILE_KEYS) >= 65
    assert report["tracked_after"] == ["live", "n1", "n2"]
    assert report["live_still_mapped"] is True


_ENV = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
_STORE = str(Path("parent") / "store")


def _outside(tree: Snapshot) -> Snapshot:
    """The snapshot without the store directory and what is in it."""
    return {path: entry for path, entry in tree.items() if path != _STORE and not path.startswith(_STORE + os.sep)}


def _diff(before: Snapshot, after: Snapshot) -> set[str]:
    return {path for path in before.keys() | after.keys() if before.get(path) != after.get(path)}


class _LyingAdd(str):
    def __add__(self, other: str) -> str:
        return "../escaped" + other


class _LyingStr(str):
    def __str__(self) -> str:
        return "../escaped"

    def __format__(self, spec: str) -> str:
        return "../escaped"


class _LyingFspath(str):
    def __fspath__(self) -> str:
        return "../escaped"


@pytest.mark.parametrize("lying", [_LyingAdd, _LyingStr, _LyingFspath], ids=lambda cls: cls.__name__)
def test_a_str_subclass_that_lies_about_itself_never_steers_a_path(tmp_path: Path, lying: type[str]) -> None:
    directory = tmp_path / "parent" / "store"
    config = LazyDiskCacheConfig(cache_path=directory, enable_caching=True)
    store = DiskBackedStore[DiskBackedNDArray](config=config, factory=DiskBackedNDArray)
    key = lying("k")

    store.add_data_to_store(key, np.arange(4))
    store.offload(key, pickle_container=True)
    reloaded = np.asarray(DiskBackedStore[DiskBackedNDArray](config=config, factory=DiskBackedNDArray)["k"])
    store.purge(key)

    assert np.array_equal(reloaded, np.arange(4))
    assert sorted(os.listdir(tmp_path)) == ["parent"]
    assert sorted(os.listdir(tmp_path / "parent")) == ["store"]
    with pytest.raises(StoreKeyError):
        store.add_data_to_store(lying("../x"), np.arange(4))
