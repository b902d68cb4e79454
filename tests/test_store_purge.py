"""DiskBackedStore.purge: what goes, in which order, who may purge, and the refusals that change nothing."""

import errno
import gc
import json
import logging
import os
import pickle
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from lazy_disk_cache import _purge, _rust
from lazy_disk_cache import disk_backed_store as dbs
from lazy_disk_cache.disk_backed_ndarray import DiskBackedNDArray
from lazy_disk_cache.disk_backed_store import DiskBackedStore
from lazy_disk_cache.errors import (
    StorePurgeAliasedArtefactError,
    StorePurgeForeignArtefactError,
    StorePurgeIncompleteError,
    StorePurgeRefusedError,
)
from listing import artefacts
from stored import make_store

LOGGER = "lazy_disk_cache.disk_backed_store"
CHILD = Path(__file__).parent / "child" / "store_purge_refused.py"
SIX = ("k.meta.json", "k.meta.json.tmp", "k.npy.tmp", "k.dat.tmp", "k.npy", "k.dat")

Store = DiskBackedStore[DiskBackedNDArray]


pytestmark = pytest.mark.usefixtures("clean_faults")


def written_store(cache_dir: Path, *keys: str, **settings: Any) -> Store:
    """A caching store whose keys each have a committed pair and a live entry offloaded to its ``.dat``.

    A reloaded entry writes its ``.dat`` only once it was written: each entry is written (with the
    value it has) before its offload, so every key has all three files.
    """
    store = make_store(cache_dir, enable_caching=True, **settings)
    for key in keys:
        store.add_data_to_store(key, np.arange(4))
    store.offload(list(keys), pickle_container=True)
    for key in keys:
        entry = store[key]
        entry.data[0] = 0
        entry.offload()
    return store


def plant(directory: Path, *names: str) -> None:
    for name in names:
        (directory / name).write_bytes(b"x")


def state_of(root: Path) -> dict[str, tuple[int, int, bytes]]:
    """Every path under ``root`` with its mode, size and content (link targets for links)."""
    tree: dict[str, tuple[int, int, bytes]] = {}
    for directory, subdirectories, files in os.walk(root):
        for name in [*subdirectories, *files]:
            path = Path(directory) / name
            info = path.lstat()
            if path.is_symlink():
                content = os.readlink(path).encode()
            elif path.is_file():
                content = path.read_bytes()
            else:
                content = b""
            tree[str(path.relative_to(root))] = (info.st_mode, info.st_size, content)
    return tree


@pytest.fixture
def unlinked(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record the paths purge hands to the unlinker, in order (they are still unlinked)."""
    recorded: list[str] = []
    real = _purge.unlink_in_order

    def recording(paths: Iterable[Path]) -> list[tuple[Path, OSError]]:
        ordered = list(paths)
        recorded.extend(str(path) for path in ordered)
        return real(ordered)

    monkeypatch.setattr(dbs, "unlink_in_order", recording)
    return recorded


# -- what goes -----------------------------------------------------------------------------------


def test_purge_unlinks_the_six_names_and_keeps_the_pickle_and_other_keys(tmp_path: Path) -> None:
    store = written_store(tmp_path, "k", "other")
    plant(tmp_path, "k.meta.json.tmp", "k.npy.tmp", "k.dat.tmp", "k.pkl")

    store.purge("k")

    assert artefacts(tmp_path) == ["k.pkl", "other.dat", "other.meta.json", "other.npy"]
    assert "k" not in store
    assert "k" not in store._entry_registry


def test_purge_unlinks_sidecars_and_temps_first_and_payloads_last(tmp_path: Path, unlinked: list[str]) -> None:
    store = written_store(tmp_path, "k")
    plant(tmp_path, "k.meta.json.tmp", "k.npy.tmp", "k.dat.tmp")

    store.purge("k")

    assert unlinked == [str(tmp_path / name) for name in SIX]


def test_purge_fsyncs_the_directory_after_unlinking(tmp_path: Path) -> None:
    store = written_store(tmp_path, "k")
    _rust._clear_faults()

    store.purge("k")

    counts = _rust._op_counts()
    # The three committed names go (the temps are missing), then one directory fsync makes
    # the removal survive a power cut; the core pins that the fsync follows the unlinks.
    assert counts["unlink"] >= 3
    assert counts["dir_fsync"] == 1
    assert not (tmp_path / "k.npy").exists()


def test_purging_twice_raises_keyerror_the_second_time(tmp_path: Path) -> None:
    store = written_store(tmp_path, "k")
    store.purge("k")

    with pytest.raises(KeyError) as caught:
        store.purge("k")

    assert caught.value.args == ("k",)


def test_a_tracked_key_without_files_purges_silently(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    store["k"] = DiskBackedNDArray(np.arange(3))

    store.purge("k")

    assert "k" not in store


def test_an_untracked_key_with_only_a_dat_left_is_purged(tmp_path: Path) -> None:
    store = written_store(tmp_path, "k", purge_disk_on_gc=False)
    del store["k"]
    gc.collect()
    (tmp_path / "k.npy").unlink()
    (tmp_path / "k.meta.json").unlink()
    assert artefacts(tmp_path) == ["k.dat"]

    store.purge("k")

    assert artefacts(tmp_path) == []


def test_purge_leaves_a_live_reloaded_entry_readable(tmp_path: Path) -> None:
    written_store(tmp_path, "k")
    store = make_store(tmp_path)
    reloaded = store["k"]

    store.purge("k")

    assert artefacts(tmp_path) == []
    np.testing.assert_array_equal(np.asarray(reloaded.data), np.arange(4))


def test_an_in_directory_link_loses_its_target_first_then_itself(tmp_path: Path, unlinked: list[str]) -> None:
    store = make_store(tmp_path, enable_caching=True)
    np.save(tmp_path / "payload.bin.npy", np.arange(3))
    (tmp_path / "payload.bin.npy").rename(tmp_path / "payload.bin")
    (tmp_path / "k.npy").symlink_to("payload.bin")

    store.purge("k")

    assert unlinked == [str(tmp_path / "payload.bin"), str(tmp_path / "k.npy")]
    assert artefacts(tmp_path) == []


# -- who may purge -------------------------------------------------------------------------------


def test_purge_is_refused_in_a_forked_child(tmp_path: Path) -> None:
    store = written_store(tmp_path, "k")
    before = state_of(tmp_path)
    parent = os.getpid()

    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        try:
            store.purge("k")
        except StorePurgeRefusedError as exc:
            expected = f"Refusing to purge 'k': this store was constructed by process {parent} and purge was"
            os._exit(0 if str(exc).startswith(expected) and type(exc) is StorePurgeRefusedError else 2)
        except BaseException:
            os._exit(3)
        os._exit(1)
    _, status = os.waitpid(pid, 0)

    assert os.waitstatus_to_exitcode(status) == 0
    assert state_of(tmp_path) == before
    assert "k" in store


def test_purge_is_refused_in_an_unpickled_copy_in_another_process(tmp_path: Path) -> None:
    store = written_store(tmp_path / "store", "k")
    blob = tmp_path / "store.pickle"
    blob.write_bytes(pickle.dumps(store))
    before = state_of(tmp_path / "store")

    completed = subprocess.run(
        [sys.executable, str(CHILD), str(blob), "k"], capture_output=True, text=True, check=True, timeout=120
    )

    outcome = json.loads(completed.stdout)
    assert outcome["type"] == "StorePurgeRefusedError"
    assert outcome["message"].startswith(
        f"Refusing to purge 'k': this store was constructed by process {os.getpid()} and purge was called from "
        f"process {outcome['pid']}."
    )
    assert {"k.npy", "k.meta.json"} <= set(os.listdir(tmp_path / "store"))
    assert {name: entry for name, entry in state_of(tmp_path / "store").items() if name != "k.dat"} == {
        name: entry for name, entry in before.items() if name != "k.dat"
    }


def test_the_pid_check_comes_before_the_miss_check(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = make_store(tmp_path)
    monkeypatch.setattr(store, "_owner_pid", os.getpid() + 1)

    with pytest.raises(StorePurgeRefusedError):
        store.purge("never-existed")


# -- refusals are no-ops -------------------------------------------------------------------------


def _assert_refusal_changes_nothing(store: Store, root: Path, error: type[Exception], key: str = "k") -> str:
    before_tree = state_of(root)
    before_tracking = dict(store._store)
    before_registry = {name: [ref() for ref in refs] for name, refs in store._entry_registry.items()}
    finalizers = {id(entry): entry.__dict__.get("_finalizer") for entry in store._live_entries()}

    with pytest.raises(error) as caught:
        store.purge(key)

    assert type(caught.value) is error
    assert state_of(root) == before_tree
    assert store._store == before_tracking
    assert {name: [ref() for ref in refs] for name, refs in store._entry_registry.items()} == before_registry
    for entry in store._live_entries():
        finalizer = finalizers[id(entry)]
        assert entry.__dict__.get("_finalizer") is finalizer
        assert finalizer is None or finalizer.alive
    return str(caught.value)


@pytest.mark.parametrize("name", SIX)
def test_a_name_linking_outside_is_refused_as_foreign(tmp_path: Path, name: str) -> None:
    outside = tmp_path / "outside.bin"
    outside.write_bytes(b"precious")
    store = written_store(tmp_path / "store", "k")
    link = tmp_path / "store" / name
    link.unlink(missing_ok=True)
    link.symlink_to(outside)

    message = _assert_refusal_changes_nothing(store, tmp_path, StorePurgeForeignArtefactError)

    assert "resolves outside its cache directory" in message
    assert "'k'" in message and str(link) in message
    assert outside.read_bytes() == b"precious"


def test_a_live_entry_whose_dat_lies_outside_is_refused_as_foreign(tmp_path: Path) -> None:
    store = make_store(tmp_path / "store")
    outside = DiskBackedNDArray(np.arange(3), cache_path=tmp_path / "elsewhere" / "e", enable_caching=True)
    store["k"] = outside

    message = _assert_refusal_changes_nothing(store, tmp_path, StorePurgeForeignArtefactError)

    assert str(tmp_path / "elsewhere" / "e.dat") in message
    assert (tmp_path / "elsewhere" / "e.dat").is_file()


@pytest.mark.parametrize("target", ["other.npy", "other.meta.json", "other.dat", "other.pkl", "other.npy.tmp"])
def test_a_name_linking_to_another_artefact_is_refused_as_aliased(tmp_path: Path, target: str) -> None:
    store = written_store(tmp_path, "k", "other")
    plant(tmp_path, "other.pkl", "other.npy.tmp")
    (tmp_path / "k.npy").unlink()
    (tmp_path / "k.npy").symlink_to(target)

    message = _assert_refusal_changes_nothing(store, tmp_path, StorePurgeAliasedArtefactError)

    assert str(tmp_path / "k.npy") in message and str(tmp_path / target) in message
    assert "'.bin'" in message


def test_a_refused_purge_in_another_process_is_a_refused_error_subclass_family() -> None:
    assert issubclass(StorePurgeForeignArtefactError, StorePurgeRefusedError)
    assert issubclass(StorePurgeAliasedArtefactError, StorePurgeRefusedError)
    assert issubclass(StorePurgeRefusedError, RuntimeError)
    assert issubclass(StorePurgeIncompleteError, OSError)
    assert dbs.StorePurgeRefusedError is StorePurgeRefusedError


# -- purge duty of live entries ------------------------------------------------------------------


def test_purge_detaches_the_finalizer_of_the_entry_but_keeps_its_flag(tmp_path: Path) -> None:
    store = written_store(tmp_path, "k")
    entry = store["k"]
    assert entry.__dict__["_finalizer"].alive

    store.purge("k")

    assert "_finalizer" not in entry.__dict__
    assert entry.purge_disk_on_gc is True


def test_a_detached_entry_never_deletes_a_later_file_of_the_same_name(tmp_path: Path) -> None:
    store = written_store(tmp_path, "k")
    old = store["k"]
    store.purge("k")
    store.add_data_to_store("k", np.arange(5), purge_disk_on_gc_override=False)
    store["k"].offload()  # writes the new entry's .dat

    del old
    gc.collect()

    assert (tmp_path / "k.dat").is_file()


def test_purge_detaches_entries_of_other_keys_backed_by_the_purged_dat(tmp_path: Path) -> None:
    store = make_store(tmp_path, enable_caching=True)
    alias = DiskBackedNDArray(np.arange(3), cache_path=tmp_path / "k.npy", enable_caching=True)
    store["a"] = alias
    store.add_data_to_store("b", np.arange(3))

    store.purge("k")

    assert "_finalizer" not in alias.__dict__
    assert store["b"].__dict__["_finalizer"].alive
    assert "a" in store


def test_purge_never_touches_an_ephemeral_entry(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    ephemeral = DiskBackedNDArray(np.arange(3), enable_caching=True)
    store["k"] = ephemeral
    finalizer = ephemeral.__dict__["_finalizer"]

    store.purge("k")

    assert ephemeral.__dict__["_finalizer"] is finalizer and finalizer.alive
    assert ephemeral.cache_path is not None and ephemeral.cache_path.is_file()


# -- logging and partial failure -----------------------------------------------------------------


def test_purge_logs_the_override_when_the_store_keeps_files(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = written_store(tmp_path, "k", purge_disk_on_gc=False)

    with caplog.at_level(logging.INFO, logger=LOGGER):
        store.purge("k")

    records = [record for record in caplog.records if record.name == LOGGER]
    assert [(record.levelno, record.args) for record in records] == [(logging.INFO, ("k",))]
    assert records[0].getMessage() == (
        "Explicit purge of key k overrides purge_disk_on_gc=False: that flag governs implicit GC-time deletion, "
        "not explicit removal, so this key's artefacts are being unlinked."
    )
    assert artefacts(tmp_path) == []


def test_purge_logs_nothing_when_the_store_purges_on_gc(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = written_store(tmp_path, "k")

    with caplog.at_level(logging.INFO, logger=LOGGER):
        store.purge("k")

    assert [record for record in caplog.records if record.name == LOGGER] == []


def test_unlink_failures_raise_incomplete_naming_survivors_and_the_key_stays_dropped(tmp_path: Path) -> None:
    store = written_store(tmp_path, "k")
    _rust._inject_fault("unlink", 1, errno.EIO)

    with pytest.raises(StorePurgeIncompleteError) as caught:
        store.purge("k")

    survivor = tmp_path / "k.meta.json"
    assert isinstance(caught.value, OSError)
    assert caught.value.survivors == (survivor,)
    assert str(caught.value).startswith(
        f"Purge of 'k' was incomplete: 1 of 6 artefacts could not be unlinked and survive on disk \u2014 "
        f"{str(survivor)!r}."
    )
    assert isinstance(caught.value.__cause__, OSError) and caught.value.__cause__.errno == errno.EIO
    assert survivor.is_file()
    assert artefacts(tmp_path) == ["k.meta.json"]
    assert "k" not in store and "k" not in store._entry_registry


# -- the weak entry registry ---------------------------------------------------------------------


def test_the_registry_records_entries_from_every_install_route(tmp_path: Path) -> None:
    store = written_store(tmp_path, "loaded")
    store.add_data_to_store("added", np.arange(2))
    store["set"] = DiskBackedNDArray(np.arange(2))

    assert sorted(store._entry_registry) == ["added", "loaded", "set"]
    assert all(len(refs) == 1 for refs in store._entry_registry.values())


def test_drop_routes_never_clear_the_registry(tmp_path: Path) -> None:
    store = written_store(tmp_path, "a", "b", "c", "d")
    entries = [store[key] for key in "abcd"]

    del store["a"]
    store.pop("b")
    store.offload("c", pickle_container=True)
    store.clear()

    assert [ref() for key in "abcd" for ref in store._entry_registry[key]] == entries


def test_the_registry_never_keeps_an_entry_alive(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    store["k"] = DiskBackedNDArray(np.arange(2))

    del store["k"]
    gc.collect()

    assert [ref() for ref in store._entry_registry["k"]] == [None]


def test_the_registry_is_not_pickled(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    store["k"] = DiskBackedNDArray(np.arange(2))

    assert "_entry_registry" not in store.__getstate__()
