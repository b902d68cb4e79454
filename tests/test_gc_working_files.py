"""``gc`` and working files: a ``.dat`` goes only when no live entry in any process holds it and its
committed pair holds the same bytes; holders are counted per process, also across ``fork``."""

import copy
import gc
import os
import subprocess
import sys
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray

from lazy_disk_cache import DiskBackedNDArray, _rust
from lazy_disk_cache.cli import EXIT_OK
from lazy_disk_cache.paths import LOCK_FILE_NAME
from listing import artefacts
from paused_child import paused_child
from stored import open_store, write_original_pair, write_store
from unprivileged import read_only_directory, unprivileged_uid

CHILD = Path(__file__).parent / "child"
VALUES: dict[str, NDArray[Any]] = {
    "big": np.arange(3 * 2**20 // 8, dtype=np.float64),
    "small": np.arange(12, dtype=np.int16).reshape(3, 4),
}
HELD = "an entry in a live process holds it"
REFUSED = "this process may not lock the directory"


def run_gc(directory: Path, *options: str) -> list[str]:
    """``gc DIR`` in a process of its own; its output lines."""
    completed = subprocess.run(
        [sys.executable, "-m", "lazy_disk_cache", "gc", str(directory), *options],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert completed.returncode == EXIT_OK, completed.stderr
    return completed.stdout.splitlines()


def copy_payload_to_dat(directory: Path, key: str) -> None:
    """A ``<key>.dat`` holding exactly the payload of the committed ``<key>.npy``."""
    np.ascontiguousarray(np.load(directory / f"{key}.npy")).tofile(directory / f"{key}.dat")


def fill_store(directory: Path) -> None:
    """Commit ``VALUES`` in ``directory``, each key with a ``.dat`` that no entry holds and its pair duplicates."""
    write_store(directory, VALUES)
    gc.collect()
    for key in VALUES:
        copy_payload_to_dat(directory, key)


@pytest.fixture
def store_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "store"
    fill_store(directory)
    return directory


def holder_process(directory: Path, mode: str, *keys: str) -> AbstractContextManager[list[str]]:
    """``entry_holder.py`` holding its entries for the block; yields what it printed until then."""
    return paused_child(CHILD / "entry_holder.py", str(directory), mode, *keys, ready="holding")


def test_a_store_entry_in_another_process_keeps_its_dat_through_gc_until_that_process_exits(store_dir: Path) -> None:
    with holder_process(store_dir, "store", "big"):
        while_held = run_gc(store_dir)
        kept = (store_dir / "big.dat").exists()

    after_exit = run_gc(store_dir)

    assert kept
    assert while_held == ["removed small.dat", f"kept big.dat: {HELD}"]
    assert after_exit == ["removed big.dat"]
    assert sorted(path.name for path in store_dir.glob("*.dat")) == []
    for key, value in VALUES.items():
        np.testing.assert_array_equal(np.load(store_dir / f"{key}.npy"), value)


def test_a_dat_whose_bytes_differ_from_its_pair_or_that_has_no_pair_survives_gc(store_dir: Path) -> None:
    changed = np.load(store_dir / "small.npy")
    changed[2, 3] += 1
    changed.tofile(store_dir / "small.dat")
    (store_dir / "orphan.dat").write_bytes(b"the only copy")
    (store_dir / "big.dat").write_bytes((store_dir / "big.dat").read_bytes() + b"\0")

    lines = run_gc(store_dir)

    assert lines == [
        "kept big.dat: its committed pair holds other bytes, so it may be the only copy of its data",
        "kept orphan.dat: no committed pair beside it, so it may be the only copy of its data",
        "kept small.dat: its committed pair holds other bytes, so it may be the only copy of its data",
    ]
    assert (store_dir / "orphan.dat").read_bytes() == b"the only copy"
    np.testing.assert_array_equal(np.fromfile(store_dir / "small.dat", dtype=np.int16).reshape(3, 4), changed)


def test_gc_dry_run_names_the_dat_it_would_remove_and_removes_nothing(store_dir: Path) -> None:
    before = sorted(path.name for path in store_dir.iterdir())

    lines = run_gc(store_dir, "--dry-run")

    assert lines == ["would remove big.dat", "would remove small.dat"]
    assert sorted(path.name for path in store_dir.iterdir()) == before


def test_a_forked_child_exiting_leaves_its_parents_entries_announced(store_dir: Path) -> None:
    with holder_process(store_dir, "fork", "big", "small") as printed:
        after_child = run_gc(store_dir)
        kept = [(store_dir / f"{key}.dat").exists() for key in VALUES]

    after_parent = run_gc(store_dir)

    assert printed == ["child exited 0", "holding"]
    assert after_child == [f"kept big.dat: {HELD}", f"kept small.dat: {HELD}"]
    assert kept == [True, True]
    assert after_parent == ["removed big.dat", "removed small.dat"]


def test_copies_of_an_entry_in_this_process_keep_its_dat_until_the_last_goes(store_dir: Path) -> None:
    entry = DiskBackedNDArray(
        VALUES["small"], cache_path=store_dir / "small", enable_caching=True, purge_disk_on_gc=False
    )
    twin = copy.copy(entry)
    del entry
    gc.collect()

    with_copy = run_gc(store_dir)
    del twin
    gc.collect()
    without = run_gc(store_dir)

    assert with_copy == ["removed big.dat", f"kept small.dat: {HELD}"]
    assert without == ["removed small.dat"]


def _write_a_value_and_offload(entry: DiskBackedNDArray) -> None:
    entry.data[0, 0] = 99
    entry.offload()


def _offload_and_load_read_write(entry: DiskBackedNDArray) -> None:
    entry.offload()
    entry.load("r+")


def _offload_and_load_zero_filled(entry: DiskBackedNDArray) -> None:
    entry.offload()
    entry.load("w+")


@pytest.mark.parametrize(
    "materialise",
    [_write_a_value_and_offload, _offload_and_load_read_write, _offload_and_load_zero_filled],
    ids=["written-then-offloaded", "load-r+", "load-w+"],
)
def test_an_entry_reloaded_from_a_store_announces_its_dat_only_once_its_data_lives_there(
    store_dir: Path, materialise: Callable[[DiskBackedNDArray], None]
) -> None:
    directory = _rust.CacheDir.open(store_dir)
    entry = open_store(store_dir)["small"]

    while_adopted, _ = directory.collect_working_files(["small"], dry_run=True)
    materialise(entry)
    once_written, _ = directory.collect_working_files(["small"], dry_run=True)

    assert while_adopted == [("small", "removed")]
    assert once_written == [("small", "held")]


def test_a_key_held_twice_in_a_process_stays_held_until_the_last_release(tmp_path: Path) -> None:
    directory = _rust.CacheDir.open(tmp_path)
    write_store(tmp_path, {"k": VALUES["small"]})
    gc.collect()
    copy_payload_to_dat(tmp_path, "k")
    first, second = directory.hold_key("k"), directory.hold_key("k")
    assert first is not None and second is not None

    first.release()
    one_left, _ = directory.collect_working_files(["k"], dry_run=True)
    second.release()
    none_left, _ = directory.collect_working_files(["k"], dry_run=True)

    assert (first.held, second.held) == (False, False)
    assert one_left == [("k", "held")]
    assert none_left == [("k", "removed")]


def test_gc_without_the_lock_file_removes_the_dat_no_entry_holds_and_keeps_the_pairs(store_dir: Path) -> None:
    (store_dir / LOCK_FILE_NAME).unlink()
    pairs = sorted(f"{key}{suffix}" for key in VALUES for suffix in (".npy", ".meta.json"))

    lines = run_gc(store_dir)

    assert lines == ["removed big.dat", "removed small.dat"]
    assert artefacts(store_dir) == pairs


@pytest.mark.parametrize("lock_file", ["present", "absent"])
def test_gc_in_a_directory_it_may_not_write_keeps_every_dat_and_changes_nothing(lock_file: str) -> None:
    uid = unprivileged_uid()
    with read_only_directory() as directory:
        fill_store(directory)
        if lock_file == "absent":
            (directory / LOCK_FILE_NAME).unlink()
        for path in directory.iterdir():
            path.chmod(0o644)
        directory.chmod(0o555)
        before = sorted(os.listdir(directory))

        completed = subprocess.run(
            [sys.executable, str(CHILD / "cli_as_user.py"), "-" if uid is None else str(uid), "gc", str(directory)],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

        assert completed.returncode == EXIT_OK, completed.stderr
        assert completed.stdout.splitlines() == [f"kept big.dat: {REFUSED}", f"kept small.dat: {REFUSED}"]
        assert sorted(os.listdir(directory)) == before


def test_an_entry_in_a_directory_it_created_keeps_its_dat_through_gc_in_another_process(tmp_path: Path) -> None:
    directory = tmp_path / "new"
    entry = DiskBackedNDArray(
        VALUES["small"], cache_path=directory / "small", enable_caching=True, purge_disk_on_gc=False
    )
    write_original_pair(directory, "small", VALUES["small"])

    while_held = run_gc(directory)
    del entry
    gc.collect()
    after = run_gc(directory)

    assert while_held == [f"kept small.dat: {HELD}"]
    assert after == ["removed small.dat"]
