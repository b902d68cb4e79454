"""An added store entry holds its working copy in RAM: each way to need its file writes the ``.dat``.

``add_data_to_store`` keeps a private copy of the data in RAM (no file), so a durable store write
creates only its pairs. Whatever needs the entry's own file first writes the working ``.dat``
then, with the data as it is at that moment: ``offload()``, a spill, a pickle, a shallow copy, a
reader by path. Writes made in RAM are never lost on the way.
"""

import copy
import json
import pickle
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from budget_fakes import fake_psutil, injected_budget
from lazy_disk_cache import DiskBackedNDArray, DiskBackedStore
from lazy_disk_cache import lazy_disk_cache as ldc
from lazy_disk_cache._memmap import mapping_of
from lazy_disk_cache.lazy_disk_cache import settle_committed_entries
from listing import artefacts
from stored import VARIED_ARRAYS, make_store, open_store

Store = DiskBackedStore[DiskBackedNDArray]


def added(tmp_path: Path) -> tuple[Store, DiskBackedNDArray]:
    """A durable store on ``tmp_path`` with key ``k`` just added, its entry written to in RAM (element 0 is -1)."""
    store = open_store(tmp_path)
    store.add_data_to_store("k", np.arange(12.0).reshape(3, 4))
    entry = store["k"]
    entry.data.flat[0] = -1
    return store, entry


def expected_value() -> np.ndarray[Any, Any]:
    value = np.arange(12.0).reshape(3, 4)
    value.flat[0] = -1
    return value


def test_a_spill_writes_the_working_dat_and_lets_the_ram_go(tmp_path: Path) -> None:
    _, entry = added(tmp_path)

    freed = entry.spill()

    assert freed == expected_value().nbytes
    assert entry.offloaded and entry.cache_enabled and not entry.spilled
    np.testing.assert_array_equal(np.fromfile(tmp_path / "k.dat").reshape(3, 4), expected_value())
    np.testing.assert_array_equal(np.asarray(entry), expected_value())


def test_a_spill_waits_while_a_view_holds_the_ram(tmp_path: Path) -> None:
    _, entry = added(tmp_path)
    view = entry.data[1]

    assert entry.spill() is None
    view[0] = 42.0
    entry.offload()
    assert np.fromfile(tmp_path / "k.dat")[4] == 42.0


def test_a_shallow_copy_writes_the_dat_first_so_both_share_one_file(tmp_path: Path) -> None:
    _, entry = added(tmp_path)

    twin = copy.copy(entry)
    twin.data[2, 3] = 5.0

    assert (tmp_path / "k.dat").is_file()
    assert entry[2, 3] == 5.0, "the copy and the entry map the same .dat"
    value = expected_value()
    value[2, 3] = 5.0
    np.testing.assert_array_equal(np.fromfile(tmp_path / "k.dat").reshape(3, 4), value)


def test_a_deep_copy_is_independent_and_writes_no_file_of_the_key(tmp_path: Path) -> None:
    _, entry = added(tmp_path)

    twin = copy.deepcopy(entry)
    twin.data[0, 1] = 100.0

    assert entry[0, 1] == 1.0
    np.testing.assert_array_equal(np.asarray(entry), expected_value())
    assert not (tmp_path / "k.dat").exists()


def test_a_pickle_round_trip_keeps_the_writes_made_in_ram(tmp_path: Path) -> None:
    _, entry = added(tmp_path)

    revived = pickle.loads(pickle.dumps(entry))

    np.testing.assert_array_equal(np.asarray(revived), expected_value())
    np.testing.assert_array_equal(np.fromfile(tmp_path / "k.dat").reshape(3, 4), expected_value())


def test_disabling_caching_keeps_the_data_in_ram_and_writes_nothing(tmp_path: Path) -> None:
    _, entry = added(tmp_path)

    entry.disable_caching()

    assert not entry.cache_enabled
    np.testing.assert_array_equal(np.asarray(entry), expected_value())
    assert artefacts(tmp_path) == []


def test_a_store_with_automatic_offloading_writes_the_dat_at_the_add(tmp_path: Path) -> None:
    store = make_store(tmp_path, enable_caching=True, automatic_offloading=True, purge_disk_on_gc=False)

    store.add_data_to_store("k", np.arange(5.0))

    assert store["k"].offloaded
    np.testing.assert_array_equal(np.fromfile(tmp_path / "k.dat"), np.arange(5.0))


@pytest.mark.parametrize("name", sorted(VARIED_ARRAYS))
def test_every_layout_and_kind_commits_and_reloads_from_ram(tmp_path: Path, name: str) -> None:
    value = VARIED_ARRAYS[name]
    store = open_store(tmp_path)
    store.add_data_to_store("k", value)
    entry = store["k"]

    store.offload(pickle_container=True)

    assert artefacts(tmp_path) == ["k.meta.json", "k.npy"]
    np.testing.assert_array_equal(np.asarray(entry), value)
    np.testing.assert_array_equal(np.asarray(open_store(tmp_path)["k"]), value)
    np.testing.assert_array_equal(np.load(tmp_path / "k.npy"), value)


def test_a_commit_of_an_entry_whose_array_is_held_elsewhere_keeps_it_in_ram(tmp_path: Path) -> None:
    store, entry = added(tmp_path)
    held = np.asarray(entry, copy=False)

    store.offload(pickle_container=True)
    held[1, 1] = 8.0

    assert mapping_of(entry.data) is None, "the array handed out is still the entry's buffer"
    assert entry[1, 1] == 8.0
    entry.offload()
    assert np.fromfile(tmp_path / "k.dat")[5] == 8.0


def test_a_dask_token_follows_the_data_in_ram(tmp_path: Path) -> None:
    tokenize = pytest.importorskip("dask.base").tokenize
    _, entry = added(tmp_path)
    before = tokenize(entry)

    entry.data[0, 0] = 3.0

    assert tokenize(entry) != before
    assert not (tmp_path / "k.dat").exists(), "tokenizing writes no file"


def test_to_dask_writes_the_dat_and_reads_the_value_from_it(tmp_path: Path) -> None:
    pytest.importorskip("dask.array")
    _, entry = added(tmp_path)

    lazy = entry.to_dask(chunks=(2, 2))

    assert (tmp_path / "k.dat").is_file()
    np.testing.assert_array_equal(lazy.compute(scheduler="sync"), expected_value())


def test_an_entry_larger_than_one_write_chunk_writes_its_dat_at_the_add(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ldc, "psutil", fake_psutil(10 * 800))  # a write chunk of 800 bytes
    with injected_budget(1 << 30):
        store = open_store(tmp_path)

        store.add_data_to_store("large", np.arange(101.0))
        store.add_data_to_store("small", np.arange(100.0))

        assert artefacts(tmp_path) == ["large.dat"]
        assert "mapped on" in repr(store["large"])


def test_entries_waiting_in_ram_hold_one_write_chunk_in_all(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ldc, "psutil", fake_psutil(10 * 800))  # a write chunk of 800 bytes
    with injected_budget(1 << 30):
        store = open_store(tmp_path)

        for key in ("a", "b", "c"):
            store.add_data_to_store(key, np.arange(50.0))  # 400 bytes each

        assert artefacts(tmp_path) == ["c.dat"]


def test_with_the_memory_budget_off_an_added_entry_writes_its_dat_at_once(tmp_path: Path) -> None:
    with injected_budget(1 << 30) as budget:
        budget.configure(type(budget.settings)(enabled=False))
        store = open_store(tmp_path)
        store.add_data_to_store("k", np.arange(5.0))

    assert artefacts(tmp_path) == ["k.dat"], "without the budget nothing could give the RAM back"
    assert "mapped on" in repr(store["k"])


def test_entries_past_the_memory_budget_headroom_write_their_dat_at_once_and_spill_nothing(tmp_path: Path) -> None:
    entry_bytes = 100 * 1024
    with injected_budget(10 * entry_bytes) as budget:  # spills above 7 entries' worth
        store = open_store(tmp_path)
        for index in range(10):
            store.add_data_to_store(f"k{index}", np.full(entry_bytes // 8, float(index)))

        assert artefacts(tmp_path) == ["k7.dat", "k8.dat", "k9.dat"]
        stats = budget.stats()
        assert stats.spilled_count == 0 and stats.managed_bytes == 7 * entry_bytes
        store.offload(pickle_container=True)

    reopened = open_store(tmp_path)
    for index in range(10):
        np.testing.assert_array_equal(np.asarray(reopened[f"k{index}"]), np.full(entry_bytes // 8, float(index)))


def test_a_write_from_another_thread_during_the_commit_is_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store, entry = added(tmp_path)
    writer: list[threading.Thread] = []

    def write_from_another_thread_then_settle(committed: Any) -> None:
        thread = threading.Thread(target=lambda: entry.data.__setitem__((0, 0), 99.0))
        thread.start()
        writer.append(thread)
        thread.join(timeout=0.3)  # it waits for the entry, which the commit holds until settled
        settle_committed_entries(committed)

    monkeypatch.setattr(
        "lazy_disk_cache.disk_backed_store.settle_committed_entries", write_from_another_thread_then_settle
    )
    store.offload(pickle_container=True)
    writer[0].join(timeout=10)

    assert not writer[0].is_alive()
    assert entry[0, 0] == 99.0
    assert np.load(tmp_path / "k.npy")[0, 0] == -1.0, "the committed value is the one staged"


def test_a_write_through_an_array_held_at_staging_and_dropped_before_the_settle_is_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store, entry = added(tmp_path)
    held = [entry.data]

    def write_then_drop_then_settle(committed: Any) -> None:
        held.pop()[1, 1] = 55.0
        settle_committed_entries(committed)

    monkeypatch.setattr("lazy_disk_cache.disk_backed_store.settle_committed_entries", write_then_drop_then_settle)
    store.offload(pickle_container=True)

    assert entry[1, 1] == 55.0
    assert "in RAM" in repr(entry)


def test_a_forked_child_that_writes_the_dat_never_deletes_it(tmp_path: Path) -> None:
    script = Path(__file__).parent / "child" / "store_forked_offload.py"

    done = subprocess.run([sys.executable, str(script), str(tmp_path)], capture_output=True, text=True, timeout=60)

    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"dat_present": True, "child_exit": 0}, "only the entry's own process deletes"
