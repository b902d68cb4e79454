"""Entries handed to dask: tokenising reads no data, and no copy dask makes ever deletes the parent's file."""

import gc
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import dask
import numpy as np
import pytest
from dask.delayed import delayed
from distributed import Client, LocalCluster

from lazy_disk_cache import _rust
from lazy_disk_cache.disk_backed_ndarray import DiskBackedNDArray

CHILD = Path(__file__).parent / "child" / "entry_cluster_exit.py"


@pytest.fixture(scope="module")
def client() -> Iterator[Client]:
    """A real cluster of two worker processes, shared by this module's tests."""
    with (
        LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster,
        Client(cluster) as connected,
    ):
        yield connected


def _offloaded(tmp_path: Path, name: str = "e") -> DiskBackedNDArray:
    entry = DiskBackedNDArray(np.arange(8.0), cache_path=tmp_path / name, enable_caching=True)
    entry.offload()
    return entry


def _refuse_pickling(self: DiskBackedNDArray) -> None:
    raise AssertionError("tokenize must not pickle the entry")


def test_tokenize_neither_loads_nor_pickles_the_entry(
    tmp_path: Path, clean_faults: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    entry = _offloaded(tmp_path)
    _rust._clear_faults()
    monkeypatch.setattr(DiskBackedNDArray, "__getstate__", _refuse_pickling)

    token = dask.base.tokenize(entry)

    assert token == dask.base.tokenize(entry)
    assert entry.offloaded is True
    assert _rust._op_counts()["map"] == 0
    assert entry._finalizer.alive


def test_tokens_tell_files_apart_and_follow_a_rewrite(tmp_path: Path) -> None:
    first, second = _offloaded(tmp_path, "a"), _offloaded(tmp_path, "b")
    before = dask.base.tokenize(first)

    first.disable_caching()
    first.enable_caching()

    assert dask.base.tokenize(first) != before
    assert dask.base.tokenize(second) != before


def test_tokens_of_ram_entries_follow_their_array(tmp_path: Path) -> None:
    same = [DiskBackedNDArray(np.arange(4)), DiskBackedNDArray(np.arange(4))]
    other = DiskBackedNDArray(np.arange(5))

    assert dask.base.tokenize(same[0]) == dask.base.tokenize(same[1])
    assert dask.base.tokenize(other) != dask.base.tokenize(same[0])


@pytest.mark.parametrize("scheduler", ["sync", "threads", "processes"])
def test_pure_delayed_computes_and_leaves_the_entry_readable(tmp_path: Path, scheduler: str) -> None:
    entry = _offloaded(tmp_path)

    total = delayed(np.sum, pure=True)(entry).compute(scheduler=scheduler)
    gc.collect()

    assert total == 28.0
    assert np.array_equal(np.asarray(entry), np.arange(8.0))


@pytest.mark.timeout(120)
def test_submit_to_process_workers_keeps_the_parent_entry_and_its_file(tmp_path: Path, client: Client) -> None:
    entry = _offloaded(tmp_path)

    total = client.submit(np.sum, entry).result()
    client.restart()
    gc.collect()

    assert total == 28.0
    assert (tmp_path / "e.dat").exists()
    assert np.array_equal(np.asarray(entry), np.arange(8.0))


@pytest.mark.timeout(120)
def test_map_over_entries_on_process_workers(tmp_path: Path, client: Client) -> None:
    entries = [
        DiskBackedNDArray(np.full(4, float(index)), cache_path=tmp_path / f"e{index}", enable_caching=True)
        for index in range(5)
    ]

    totals = client.gather(client.map(np.sum, entries))
    client.restart()
    gc.collect()

    assert totals == [0.0, 4.0, 8.0, 12.0, 16.0]
    assert all(np.array_equal(np.asarray(entry), np.full(4, float(index))) for index, entry in enumerate(entries))


@pytest.mark.timeout(180)
def test_after_submit_the_parent_removes_its_temp_file_when_it_exits(tmp_path: Path) -> None:
    completed = subprocess.run(
        [sys.executable, str(CHILD), str(tmp_path)], capture_output=True, text=True, timeout=150, check=False
    )

    assert completed.returncode == 0, completed.stderr
    path, total, exists_after_workers_left = completed.stdout.split()
    assert float(total) == 28.0
    assert exists_after_workers_left == "True"
    assert Path(path).parent == tmp_path
    assert not Path(path).exists()
