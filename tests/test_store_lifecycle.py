"""Opening, reopening and pickling stores: temp sweep, rescan, other processes, read-only directories."""

import errno
import fcntl
import gc
import json
import logging
import os
import pickle
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypeGuard

import numpy as np
import pytest

from lazy_disk_cache.disk_backed_ndarray import DiskBackedNDArray
from lazy_disk_cache.disk_backed_store import DiskBackedStore
from lazy_disk_cache.errors import LazyDiskCacheWarning
from lazy_disk_cache.lazy_disk_cache import LazyDiskCacheConfig
from listing import artefacts
from stored import make_store
from unprivileged import read_only_directory, unprivileged_uid

LOGGER = "lazy_disk_cache.disk_backed_store"
CHILDREN = Path(__file__).parent / "child"

Store = DiskBackedStore[DiskBackedNDArray]


def write_keys(cache_dir: Path, arrays: dict[str, Any], **settings: Any) -> None:
    store = make_store(cache_dir, enable_caching=True, **settings)
    for key, array in arrays.items():
        store.add_data_to_store(key, np.asarray(array))
    store.offload(pickle_container=True)


def messages(caplog: pytest.LogCaptureFixture, level: int) -> list[tuple[str, tuple[Any, ...]]]:
    return [
        (str(record.msg), tuple(record.args or ()))
        for record in caplog.records
        if record.name == LOGGER and record.levelno == level
    ]


# -- temp sweep ----------------------------------------------------------------------------------


def test_opening_a_store_sweeps_only_its_own_orphaned_temps(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    cache_dir = tmp_path / "store"
    cache_dir.mkdir()
    outside = tmp_path / "outside.txt"
    outside.write_bytes(b"untouched")
    illegal_stems = ("CON.npy.tmp", "a .dat.tmp", "b..meta.json.tmp")
    for name in (
        "k.npy.tmp",
        "k.meta.json.tmp",
        "k.dat.tmp",
        "notes.txt",
        "k.tmp",
        "k.npy.tmp.bak",
        ".npy.tmp",
        *illegal_stems,
    ):
        (cache_dir / name).write_bytes(b"x")
    (cache_dir / "link.npy.tmp").symlink_to(outside)
    (cache_dir / "sub.dat.tmp").mkdir()

    with caplog.at_level(logging.INFO, logger=LOGGER):
        make_store(cache_dir)

    assert artefacts(cache_dir) == sorted(
        [".npy.tmp", "k.npy.tmp.bak", "k.tmp", "notes.txt", "sub.dat.tmp", *illegal_stems]
    )
    assert outside.read_bytes() == b"untouched"
    removed = sorted(args[0] for message, args in messages(caplog, logging.INFO) if "orphaned" in message)
    assert removed == ["k.dat.tmp", "k.meta.json.tmp", "k.npy.tmp", "link.npy.tmp"]
    assert messages(caplog, logging.INFO)[0] == (
        "Removed orphaned temp file %r from cache directory %r.",
        (messages(caplog, logging.INFO)[0][1][0], str(cache_dir)),
    )


def test_the_sweep_skips_a_temp_a_live_writer_holds_locked(tmp_path: Path) -> None:
    temp = tmp_path / "k.npy.tmp"
    temp.write_bytes(b"being written")

    with open(temp, "rb") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        make_store(tmp_path)
        assert temp.exists()

    make_store(tmp_path)
    assert not temp.exists()


def test_a_crash_between_the_two_renames_reads_the_new_payload(tmp_path: Path) -> None:
    write_keys(tmp_path, {"k": np.arange(3)})
    new_sidecar = (tmp_path / "k.meta.json").read_bytes()
    write_keys(tmp_path / "next", {"k": np.arange(5) * 2.0})
    os.replace(tmp_path / "next" / "k.npy", tmp_path / "k.npy")
    (tmp_path / "k.meta.json.tmp").write_bytes(new_sidecar)

    store = make_store(tmp_path)

    with pytest.warns(LazyDiskCacheWarning, match="sidecar for key 'k' is stale; the .npy header wins"):
        reloaded = store["k"]
    np.testing.assert_array_equal(np.asarray(reloaded), np.arange(5) * 2.0)
    assert not (tmp_path / "k.meta.json.tmp").exists()


# -- rescan --------------------------------------------------------------------------------------


def test_rescan_adopts_every_npy_by_stripping_only_the_final_suffix(tmp_path: Path) -> None:
    for name in ("b.npy", "a.npy.npy", "x.y.npy", ".hidden.npy"):
        np.save(tmp_path / name, np.arange(2))
    (tmp_path / "linked.npy").symlink_to(tmp_path / "b.npy")

    store = make_store(tmp_path)

    assert store.keys() == [".hidden", "a.npy", "b", "linked", "x.y"]
    assert all(value is None for value in store.values())


def test_rescan_never_adopts_other_files(tmp_path: Path) -> None:
    for name in ("k.pkl", "orphan.dat", "k.meta.json", ".npy", "k.NPY", "k.npz", "k.npy.bak"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "dir.npy").mkdir()
    (tmp_path / "dangling.npy").symlink_to(tmp_path / "missing")

    store = make_store(tmp_path)

    assert store.keys() == []


def test_rescan_skips_illegal_names_with_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    skipped = ("..npy", "a\\b.npy", "b\x7f.npy")
    for name in (*skipped, "ok.npy"):
        np.save(tmp_path / name, np.arange(2)) if name == "ok.npy" else (tmp_path / name).write_bytes(b"x")

    with caplog.at_level(logging.WARNING, logger=LOGGER), pytest.warns(LazyDiskCacheWarning) as caught:
        store = make_store(tmp_path)

    assert store.keys() == ["ok"]
    assert messages(caplog, logging.WARNING) == [
        ("Skipping %r in cache directory %r: its name is not a legal store key.", (name, str(tmp_path)))
        for name in sorted(skipped)
    ]
    assert [str(warning.message) for warning in caught] == [
        f"Skipping {name!r} in cache directory {str(tmp_path)!r}: its name is not a legal store key. "
        "The file is not loaded and stays on disk untouched."
        for name in sorted(skipped)
    ]


def test_an_npy_without_sidecar_is_adopted_and_reads_as_a_miss(tmp_path: Path) -> None:
    np.save(tmp_path / "alone.npy", np.arange(2))

    store = make_store(tmp_path)

    assert store.keys() == ["alone"]
    with pytest.raises(KeyError):
        store["alone"]


# -- another process ---------------------------------------------------------------------------


def test_a_store_reopened_in_a_new_process_holds_identical_data(tmp_path: Path) -> None:
    arrays = {
        "floats": np.linspace(0, 1, 12).reshape(3, 4),
        "ints.v2": np.arange(7, dtype=">i8"),
        "record": np.array([(1, 2.5)], dtype=[("a", "i2"), ("b", "f4")]),
        "scalar": np.array(3.5),
        "\u00e9t\u00e9": np.array(["x", "yz"]),
    }
    cache_dir = tmp_path / "store"
    store = make_store(cache_dir, enable_caching=True)
    for key, array in arrays.items():
        store.add_data_to_store(key, array)
    store.offload(pickle_container=True)
    del store
    gc.collect()

    completed = subprocess.run(
        [sys.executable, str(CHILDREN / "store_reopen.py"), str(cache_dir), str(tmp_path / "out.npz")],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )

    assert sorted(json.loads(completed.stdout)) == sorted(arrays)
    with np.load(tmp_path / "out.npz") as dumped:
        for key, array in arrays.items():
            assert dumped[key].dtype == array.dtype, key
            np.testing.assert_array_equal(dumped[key], array)


@pytest.fixture
def readonly_dir() -> Iterator[Path]:
    with read_only_directory() as directory:
        yield directory


def test_a_read_only_store_directory_loads_every_entry_and_creates_nothing(readonly_dir: Path) -> None:
    uid = unprivileged_uid()
    arrays = {"mapped": np.arange(6.0).reshape(2, 3), "auto": np.arange(4), "ram": np.arange(3) * 7}
    write_keys(readonly_dir, {"mapped": arrays["mapped"]}, purge_disk_on_gc=False)
    write_keys(readonly_dir, {"auto": arrays["auto"]}, automatic_offloading=True)
    store = make_store(readonly_dir)
    store["ram"] = DiskBackedNDArray(arrays["ram"])
    store._store_entry("ram", store["ram"])
    (readonly_dir / "orphan.npy.tmp").write_bytes(b"left by a crash")
    for path in readonly_dir.iterdir():
        path.chmod(0o644)
    readonly_dir.chmod(0o555)
    before = sorted(os.listdir(readonly_dir))
    drop = [] if uid is None else [str(uid)]

    completed = subprocess.run(
        [sys.executable, str(CHILDREN / "store_readonly_load.py"), str(readonly_dir), *drop],
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert completed.returncode == 0, completed.stderr
    result = json.loads(completed.stdout)
    assert sorted(os.listdir(readonly_dir)) == before
    assert "orphan" not in completed.stderr
    for key in ("mapped", "auto"):
        assert result[key]["values"] == arrays[key].tolist()
        assert result[key]["load_r"] == arrays[key].tolist()
        assert (result[key]["cache_enabled"], result[key]["writeable"]) == (True, False)
        assert result[key]["cache_path"] == str(readonly_dir / f"{key}.dat")
        assert (result[key]["offloaded"], result[key]["load_c_writeable"]) == (True, True)
        assert result[key]["load_r_plus"] == "PermissionError"
    assert (result["ram"]["values"], result["ram"]["cache_enabled"]) == (arrays["ram"].tolist(), False)


# -- pickling ------------------------------------------------------------------------------------


def test_pickling_writes_cached_entries_and_the_copy_reloads_them(tmp_path: Path) -> None:
    store = make_store(tmp_path, enable_caching=True)
    store.add_data_to_store("a", np.arange(3))
    store.add_data_to_store("b", np.arange(4.0))

    copy: Store = pickle.loads(pickle.dumps(store))

    assert store._store == {"a": None, "b": None}
    assert all(value is not None for value in copy.values())
    np.testing.assert_array_equal(np.asarray(copy["b"]), np.arange(4.0))
    assert copy.cache_dir == tmp_path
    assert copy._owner_pid == store._owner_pid
    assert sorted(copy._entry_registry) == ["a", "b"]


def test_a_worker_that_unpickles_a_store_never_deletes_the_parents_dat(tmp_path: Path) -> None:
    store = make_store(tmp_path, enable_caching=True)
    store.add_data_to_store("k", np.arange(10.0))
    blob = pickle.dumps(store)
    reloaded = store["k"]
    reloaded.data[0] = 0.0  # written, so its offload materialises the .dat
    reloaded.offload()
    dat = tmp_path / "k.dat"
    assert dat.exists()

    worker = subprocess.run(
        [sys.executable, "-c", "import pickle, sys; s = pickle.loads(sys.stdin.buffer.read()); print(s['k'][3])"],
        input=blob,
        capture_output=True,
        check=False,
        timeout=120,
    )

    assert worker.returncode == 0, worker.stderr.decode()
    assert worker.stdout.decode().strip() == "3.0"
    assert dat.exists()
    np.testing.assert_array_equal(np.asarray(store["k"]), np.arange(10.0))


def test_an_automatic_offloading_store_pickles(tmp_path: Path) -> None:
    store = make_store(tmp_path, enable_caching=True, automatic_offloading=True)
    store.add_data_to_store("a", np.arange(3))
    assert store["a"].offloaded

    copy: Store = pickle.loads(pickle.dumps(store))

    np.testing.assert_array_equal(copy["a"][:], np.arange(3))
    assert copy["a"].offloaded


def test_a_store_without_caching_pickles_its_entries_inline(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    store.add_data_to_store("a", np.arange(3))

    copy: Store = pickle.loads(pickle.dumps(store))

    assert os.listdir(tmp_path) == []
    assert store._store["a"] is not None
    np.testing.assert_array_equal(copy["a"].data, np.arange(3))


def test_the_pickled_state_leaves_transient_parts_behind(private_tempdir: Path) -> None:
    store = make_store(None)

    state = store.__getstate__()

    assert {"_lock", "_entry_registry", "_directory_finalizer"}.isdisjoint(state)
    assert {"_factory", "_validator", "_owner_pid", "_store", "_cache_dir"} <= set(state)
    assert state["_store"] is not store._store


def test_an_unpicklable_validator_makes_the_store_unpicklable(tmp_path: Path) -> None:
    def local_validator(value: object) -> TypeGuard[DiskBackedNDArray]:
        return True

    store = DiskBackedStore[DiskBackedNDArray](
        config=LazyDiskCacheConfig(cache_path=tmp_path), factory=DiskBackedNDArray, validator=local_validator
    )

    with pytest.raises((pickle.PicklingError, AttributeError)):
        pickle.dumps(store)


def test_unpickling_warns_about_a_pair_that_is_gone_and_keeps_it_offloaded(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = make_store(tmp_path, enable_caching=True)
    store.add_data_to_store("a", np.arange(3))
    blob = pickle.dumps(store)
    (tmp_path / "a.npy").unlink()

    with caplog.at_level(logging.WARNING, logger=LOGGER):
        copy: Store = pickle.loads(blob)

    assert copy._store == {"a": None}
    assert messages(caplog, logging.WARNING) == [("File for key %s not found in cache directory %s.", ("a", tmp_path))]


@pytest.mark.parametrize(
    ("damage", "expected"), [("removed", errno.ENOENT), ("replaced-by-a-file", errno.ENOTDIR)], ids=lambda x: str(x)
)
def test_unpickling_a_store_whose_directory_is_unusable_names_the_directory_first(
    tmp_path: Path, damage: str, expected: int
) -> None:
    directory = tmp_path / "store"
    store = make_store(directory, enable_caching=True)
    store.add_data_to_store("a", np.arange(3))
    blob = pickle.dumps(store)
    shutil.rmtree(directory)
    if damage == "replaced-by-a-file":
        directory.write_bytes(b"not a directory")

    with pytest.raises(OSError) as caught:
        pickle.loads(blob)

    assert (caught.value.errno, caught.value.filename) == (expected, str(directory))
    assert caught.value.__notes__[-1] == (
        f"while restoring a pickled DiskBackedStore: its cache directory {str(directory)!r} is unusable, so "
        "its 1 stored key cannot be reloaded"
    )


def test_unpickling_a_store_without_stored_keys_does_not_need_its_directory(tmp_path: Path) -> None:
    directory = tmp_path / "store"
    store = make_store(directory, enable_caching=True)
    blob = pickle.dumps(store)
    shutil.rmtree(directory)

    copy: Store = pickle.loads(blob)

    assert copy.keys() == []


def test_unpickling_neither_sweeps_nor_rescans(tmp_path: Path) -> None:
    store = make_store(tmp_path, enable_caching=True)
    store.add_data_to_store("a", np.arange(3))
    blob = pickle.dumps(store)
    write_keys(tmp_path / "other", {"extra": np.arange(2)})
    for name in ("extra.npy", "extra.meta.json"):
        os.replace(tmp_path / "other" / name, tmp_path / name)
    (tmp_path / "a.npy.tmp").write_bytes(b"x")

    copy: Store = pickle.loads(blob)

    assert copy.keys() == ["a"]
    assert (tmp_path / "a.npy.tmp").exists()


def test_the_private_directory_outlives_the_store_while_a_same_process_copy_lives(private_tempdir: Path) -> None:
    store = make_store(None, enable_caching=True)
    store.add_data_to_store("a", np.arange(3))
    directory = store.cache_dir
    copy: Store = pickle.loads(pickle.dumps(store))

    del store
    gc.collect()
    assert directory.is_dir()
    np.testing.assert_array_equal(np.asarray(copy["a"]), np.arange(3))

    del copy
    gc.collect()
    assert not directory.exists()


def test_a_forked_child_never_removes_the_private_directory(private_tempdir: Path) -> None:
    store = make_store(None)
    directory = store.cache_dir

    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        del store
        gc.collect()
        os._exit(0)
    os.waitpid(pid, 0)

    assert directory.is_dir()


@pytest.mark.parametrize(("policy", "survives"), [("purge", False), ("keep", True)])
def test_the_private_directory_is_removed_at_interpreter_exit_only_with_purge(
    tmp_path: Path, policy: str, survives: bool
) -> None:
    completed = subprocess.run(
        [sys.executable, str(CHILDREN / "store_exit_tempdir.py"), policy],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
        env=os.environ | {"TMPDIR": str(tmp_path)},
    )

    directory = Path(completed.stdout.strip())
    assert directory.parent == tmp_path
    assert directory.is_dir() is survives


def test_a_symlinked_cache_root_writes_and_reloads(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    write_keys(tmp_path / "link", {"k": np.arange(3)})

    reloaded = make_store(tmp_path / "link")["k"]

    assert reloaded.cache_path == tmp_path / "link" / "k.dat"
    assert isinstance(reloaded.data, np.memmap)
    assert not (tmp_path / "real" / "k.dat").exists()
    np.testing.assert_array_equal(np.asarray(reloaded), np.arange(3))
    assert artefacts(tmp_path / "real") == ["k.meta.json", "k.npy"]


def test_concurrent_writers_on_one_store_commit_every_key(tmp_path: Path) -> None:
    store = make_store(tmp_path, enable_caching=True)
    start = threading.Barrier(4)

    def writer(worker: int) -> None:
        start.wait()
        for index in range(25):
            key = f"w{worker}-{index}"
            store.add_data_to_store(key, np.full(3, index))
            store.offload(key, pickle_container=True)

    threads = [threading.Thread(target=writer, args=(worker,)) for worker in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    reopened = make_store(tmp_path)
    assert len(reopened) == 100
    for key in reopened.keys():
        np.testing.assert_array_equal(np.asarray(reopened[key]), np.full(3, int(key.split("-")[1])))
