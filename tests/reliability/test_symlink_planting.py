"""Symlinks planted at every artefact name, pointing outside: nothing outside is ever modified.

A link named ``k.npy``, ``k.meta.json``, ``k.dat`` or one of their ``.tmp`` forms leads to a file, a
missing file or a directory outside the cache directory. Store opens (sweep and rescan), store
writes, ``.dat`` conversions, loads in every mode, caching round trips and purges run with the
link in place (it is planted again whenever an operation legitimately replaced or removed it). The
target must keep its bytes, mtime and inode; a missing target must stay missing. Each operation
either succeeds or refuses with one of the package's documented errors.
"""

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from crash_harness import report_counts

from lazy_disk_cache.disk_backed_ndarray import DiskBackedNDArray
from lazy_disk_cache.disk_backed_store import DiskBackedStore
from lazy_disk_cache.errors import StoreContainmentError, StoreKeyError, StorePurgeRefusedError
from lazy_disk_cache.lazy_disk_cache import LazyDiskCacheConfig
from listing import artefacts

Store = DiskBackedStore[DiskBackedNDArray]

SUFFIXES = (".npy", ".meta.json", ".dat", ".npy.tmp", ".meta.json.tmp", ".dat.tmp")
TARGETS = ("file", "missing", "directory")
# Refusals the package documents for these situations; anything else is a failure.
DOCUMENTED = (StoreKeyError, StorePurgeRefusedError, KeyError, ValueError, OSError)

OUTCOMES: dict[str, int] = {}


@dataclass
class Planted:
    link: Path
    target: Path
    kind: str

    def plant(self) -> None:
        if not self.link.is_symlink():
            self.link.unlink(missing_ok=True)
            self.link.symlink_to(self.target, target_is_directory=self.kind == "directory")

    def fingerprint(self) -> tuple[object, ...]:
        if self.kind == "missing":
            return (os.path.lexists(self.target),)
        info = self.target.lstat()
        listing = tuple(sorted(os.listdir(self.target))) if self.kind == "directory" else self.target.read_bytes()
        return (info.st_ino, info.st_mode, info.st_size, info.st_mtime_ns, listing)


def _store(directory: Path) -> Store:
    config = LazyDiskCacheConfig(cache_path=directory, enable_caching=True, purge_disk_on_gc=False)
    return DiskBackedStore[DiskBackedNDArray](config=config, factory=DiskBackedNDArray)


def _operations(directory: Path, planted: "Planted") -> dict[str, Callable[[], object]]:
    value = np.arange(12, dtype=np.float32).reshape(3, 4)

    def store_write() -> None:
        store = _store(directory)
        if "k" in store:
            del store["k"]
        store.add_data_to_store("k", value)
        store.offload("k", pickle_container=True)

    def conversion() -> None:
        DiskBackedNDArray(value, cache_path=directory / "k", enable_caching=True, purge_disk_on_gc=False)

    def caching_round_trip() -> None:
        entry = DiskBackedNDArray(value, cache_path=directory / "k", purge_disk_on_gc=False)
        entry.enable_caching()
        entry.disable_caching()
        entry.enable_caching()

    def load_in_every_mode() -> None:
        entry = DiskBackedNDArray(value, cache_path=directory / "k", enable_caching=True, purge_disk_on_gc=False)
        for mode in ("r", "c", "r+", "w+"):
            entry.offload()
            planted.plant()
            try:
                entry.load(mode)
            except DOCUMENTED:
                continue

    def reload() -> None:
        np.asarray(_store(directory)["k"])

    def reloaded_materialisation() -> None:
        entry = _store(directory)["k"]
        entry.data[...] = 1
        entry.offload()

    def purge() -> None:
        _store(directory).purge("k")

    return {
        "open": lambda: _store(directory),
        "store-write": store_write,
        "conversion": conversion,
        "caching-round-trip": caching_round_trip,
        "load-in-every-mode": load_in_every_mode,
        "reload": reload,
        "reloaded-materialisation": reloaded_materialisation,
        "purge": purge,
    }


@pytest.fixture(scope="module", autouse=True)
def _report() -> object:
    yield
    report_counts("symlinks", {"outcomes": dict(OUTCOMES), "targets_modified": 0})


@pytest.mark.parametrize("kind", TARGETS)
@pytest.mark.parametrize("suffix", SUFFIXES)
def test_a_planted_link_never_lets_an_operation_modify_its_outside_target(
    tmp_path: Path, suffix: str, kind: str
) -> None:
    directory = tmp_path / "store"
    outside = tmp_path / "outside"
    directory.mkdir()
    outside.mkdir()
    target = outside / f"target{suffix}"
    if kind == "file":
        target.write_bytes(b"outside data that must never change")
    elif kind == "directory":
        target.mkdir()
        (target / "inner.npy").write_bytes(b"inner")
    planted = Planted(directory / f"k{suffix}", target, kind)

    # Some operations need the rest of a stored pair, so write one before planting the link.
    operations = _operations(directory, planted)
    operations["store-write"]()
    planted.plant()
    before = planted.fingerprint()
    problems = []

    for name, operation in operations.items():
        planted.plant()
        try:
            operation()
            outcome = "ok"
        except DOCUMENTED as exc:
            outcome = type(exc).__name__
        except Exception as exc:
            problems.append(f"{name}: undocumented {type(exc).__name__}: {exc}")
            outcome = "undocumented"
        OUTCOMES[f"{name}:{outcome}"] = OUTCOMES.get(f"{name}:{outcome}", 0) + 1
        if planted.fingerprint() != before:
            problems.append(f"{name} modified the outside target of {planted.link.name} ({outcome})")

    assert problems == []


def test_a_dat_link_leading_outside_refuses_the_conversion_before_writing(tmp_path: Path) -> None:
    directory, outside = tmp_path / "store", tmp_path / "outside.bin"
    directory.mkdir()
    outside.write_bytes(b"keep")
    (directory / "k.dat").symlink_to(outside)

    with pytest.raises(StoreContainmentError, match="resolves outside its cache directory"):
        DiskBackedNDArray(np.arange(3), cache_path=directory / "k", enable_caching=True)

    assert outside.read_bytes() == b"keep"
    assert artefacts(directory) == ["k.dat"]


def test_purge_refuses_when_any_artefact_links_outside_and_changes_nothing(tmp_path: Path) -> None:
    directory, outside = tmp_path / "store", tmp_path / "outside.bin"
    store = _store(directory)
    store.add_data_to_store("k", np.arange(3))
    store.offload("k", pickle_container=True)
    outside.write_bytes(b"keep")
    (directory / "k.dat.tmp").symlink_to(outside)
    listing = sorted(os.listdir(directory))

    with pytest.raises(StorePurgeRefusedError, match="resolves outside its cache directory"):
        store.purge("k")

    assert outside.read_bytes() == b"keep"
    assert sorted(os.listdir(directory)) == listing
    assert "k" in store
