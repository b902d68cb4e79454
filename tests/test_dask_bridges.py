"""dask bridges on the local schedulers: to_dask reads by path, store_dask commits once, from_array never copies."""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import dask
import dask.array as da
import numpy as np
import pytest

from lazy_disk_cache import DiskBackedNDArray, DiskBackedStore, LazyDiskCacheConfig, _rust
from lazy_disk_cache.dask import TARGET_CHUNK_BYTES, default_chunks
from lazy_disk_cache.paths import LOCK_FILE_NAME
from stored import write_original_pair

pytestmark = pytest.mark.timeout(120)


def _store(directory: Path) -> DiskBackedStore[DiskBackedNDArray]:
    config = LazyDiskCacheConfig(enable_caching=True, cache_path=directory)
    return DiskBackedStore(config=config, factory=DiskBackedNDArray)


def _artefacts(directory: Path) -> list[str]:
    return sorted(name for name in os.listdir(directory) if name != LOCK_FILE_NAME)


def _sample(rows: int = 300, cols: int = 37) -> np.ndarray:
    return np.arange(rows * cols, dtype=np.float64).reshape(rows, cols)


def _stored(directory: Path, key: str, value: np.ndarray) -> DiskBackedStore[DiskBackedNDArray]:
    store = _store(directory)
    store.add_data_to_store(key, value)
    store.offload(key, pickle_container=True)
    return store


# -- reading -------------------------------------------------------------------------------------


@pytest.mark.parametrize("scheduler", ["sync", "threads", "processes"])
def test_store_to_dask_reads_a_committed_key_bit_exact(tmp_path: Path, scheduler: str) -> None:
    value = _sample()
    store = _stored(tmp_path, "k", value)

    result = store.to_dask("k", chunks=(64, 10)).compute(scheduler=scheduler)

    assert result.dtype == value.dtype
    assert np.array_equal(result, value)


def test_entry_to_dask_reads_its_dat_whether_mapped_or_offloaded(tmp_path: Path) -> None:
    value = _sample()
    entry = DiskBackedNDArray(value.copy(), cache_path=tmp_path / "e", enable_caching=True)
    entry.data[0, 0] = -1.0
    expected = value.copy()
    expected[0, 0] = -1.0

    mapped = entry.to_dask(chunks=50).compute(scheduler="threads")
    entry.offload()
    offloaded = entry.to_dask(chunks=50).compute(scheduler="threads")

    assert np.array_equal(mapped, expected)
    assert np.array_equal(offloaded, expected)
    assert entry.offloaded is True, "building and computing the graph never loads the entry"


def test_fortran_ordered_payload_reads_in_the_right_order(tmp_path: Path) -> None:
    value = np.asfortranarray(_sample(40, 7))
    np.save(tmp_path / "f.npy", value)
    (tmp_path / "f.meta.json").write_text(
        '{"schema_version": 1, "lazy_disk_cache_class": "DiskBackedNDArray", "enable_caching": true}'
    )
    store = _store(tmp_path)

    result = store.to_dask("f", chunks=(9, 3)).compute(scheduler="sync")

    assert np.array_equal(result, value)


def test_entry_with_data_only_in_ram_refuses_to_dask_saying_why() -> None:
    entry = DiskBackedNDArray(_sample())

    with pytest.raises(ValueError, match="only in RAM"):
        entry.to_dask()


def test_entry_mapped_copy_on_write_refuses_to_dask_until_offloaded(tmp_path: Path) -> None:
    store = _stored(tmp_path, "k", _sample())
    entry = store["k"]

    with pytest.raises(ValueError, match="copy-on-write"):
        entry.to_dask()
    entry.offload()
    assert np.array_equal(entry.to_dask().compute(scheduler="sync"), _sample())


def test_store_to_dask_of_a_missing_key_is_a_key_error(tmp_path: Path) -> None:
    with pytest.raises(KeyError):
        _store(tmp_path).to_dask("absent")


def test_graph_holds_no_entry_and_pickles_in_a_few_hundred_bytes_per_chunk(tmp_path: Path) -> None:
    store = _stored(tmp_path, "k", _sample(1000, 8))

    array = store.to_dask("k", chunks=(10, 8))
    per_task = [len(pickle.dumps(task)) for task in dict(array.dask).values()]

    assert array.npartitions == 100
    assert max(per_task) < 600, f"largest pickled task: {max(per_task)} bytes"
    assert not any("DiskBackedNDArray" in repr(task) for task in dict(array.dask).values())


def test_tokenize_and_graph_building_read_no_data(tmp_path: Path, clean_faults: None) -> None:
    store = _stored(tmp_path, "k", _sample())
    _rust._clear_faults()

    array = store.to_dask("k")
    token = dask.base.tokenize(array)

    counts = _rust._op_counts()
    assert (counts["map"], counts["read"]) == (0, 1), "one header read, no payload read, no mapping"
    assert token == dask.base.tokenize(store.to_dask("k"))


def test_default_chunks_are_whole_page_aligned_rows_of_about_128_mib() -> None:
    dtype = np.dtype(np.float64)
    shape = (100_000, 1000)  # 8000-byte rows: 16 rows make whole pages

    chunks = default_chunks(shape, dtype)

    rows = chunks[0][0]
    assert chunks[1] == (1000,)
    assert rows * 8000 % 4096 == 0
    assert TARGET_CHUNK_BYTES - 16 * 8000 < rows * 8000 <= TARGET_CHUNK_BYTES


def test_default_chunks_split_rows_larger_than_the_target() -> None:
    chunks = default_chunks((3, 40_000_000), np.dtype(np.float64))

    assert chunks[0] == (1, 1, 1)
    assert max(chunks[1]) * 8 <= TARGET_CHUNK_BYTES


# -- da.from_array on an entry -------------------------------------------------------------------


def test_from_array_on_an_entry_copies_nothing_and_slices_its_mapping(tmp_path: Path, clean_faults: None) -> None:
    entry = DiskBackedNDArray(_sample(), cache_path=tmp_path / "e", enable_caching=True)
    _rust._clear_faults()

    array = da.from_array(entry, chunks=(100, 37))
    graph_values = list(dict(array.dask).values())
    views = array.map_blocks(
        lambda block: np.full((1, 1), np.shares_memory(block, entry.data)), chunks=(1, 1), dtype=bool
    ).compute(scheduler="sync")

    assert any(value is entry for value in graph_values), "the graph holds the entry itself, not a copy"
    assert views.shape == (3, 1)
    assert views.all(), "every block reaches its task as a view of the mapping"
    counts = _rust._op_counts()
    assert (counts["create"], counts["write"], counts["copy"]) == (0, 0, 0), counts
    assert float(array.sum().compute(scheduler="sync")) == _sample().sum()


# -- writing -------------------------------------------------------------------------------------


@pytest.mark.parametrize("scheduler", ["sync", "threads"])
@pytest.mark.parametrize("chunks", [(300, 37), (64, 37), (50, 10), (7, 36)], ids=str)
def test_store_dask_lands_every_chunking_at_its_c_order_offsets(
    tmp_path: Path, scheduler: str, chunks: tuple[int, int]
) -> None:
    value = _sample()
    store = _store(tmp_path)

    with dask.config.set(scheduler=scheduler):
        store.store_dask("k", da.from_array(value, chunks=chunks))

    assert _artefacts(tmp_path) == ["k.meta.json", "k.npy"]
    assert np.array_equal(np.load(tmp_path / "k.npy"), value)
    assert np.array_equal(np.asarray(_store(tmp_path)["k"]), value)


def test_store_dask_writes_transposed_blocks_and_three_axes(tmp_path: Path) -> None:
    cube = np.arange(6 * 5 * 4, dtype=np.int32).reshape(6, 5, 4)
    store = _store(tmp_path)

    store.store_dask("t", da.from_array(_sample(37, 30), chunks=(8, 7)).T)
    store.store_dask("c", da.from_array(cube, chunks=(4, 2, 3)))

    assert np.array_equal(np.load(tmp_path / "t.npy"), _sample(37, 30).T)
    assert np.array_equal(np.load(tmp_path / "c.npy"), cube)


def test_store_dask_of_a_zero_size_array_and_a_scalar(tmp_path: Path) -> None:
    store = _store(tmp_path)

    store.store_dask("empty", da.zeros((0, 4), chunks=(1, 2)))
    store.store_dask("scalar", da.from_array(np.array(3.5)))

    assert np.load(tmp_path / "empty.npy").shape == (0, 4)
    assert np.load(tmp_path / "scalar.npy") == 3.5


def test_store_dask_replaces_a_key_and_the_store_tracks_it_as_not_in_memory(tmp_path: Path) -> None:
    store = _stored(tmp_path, "k", _sample())
    derived = store.to_dask("k", chunks=(64, 37)) * 2

    store.store_dask("k", derived)

    assert store.store["k"] is None
    assert np.array_equal(np.asarray(store["k"]), _sample() * 2)


def test_failed_block_aborts_the_commit_and_keeps_the_previous_pair(tmp_path: Path) -> None:
    store = _stored(tmp_path, "k", _sample())

    def explode(block: np.ndarray, block_info: dict[Any, Any] | None = None) -> np.ndarray:
        if block_info is not None and block_info[0]["chunk-location"][0] == 2:
            raise RuntimeError("block 2 failed")
        return block * 0

    failing = da.from_array(_sample(), chunks=(50, 37)).map_blocks(explode, dtype=np.float64)
    stored = store.store_dask("k", failing, compute=False)
    assert stored is not None
    with pytest.raises(RuntimeError, match="block 2 failed"):
        stored.compute(scheduler="threads")

    assert _artefacts(tmp_path) == ["k.meta.json", "k.npy"]
    assert np.array_equal(np.asarray(_store(tmp_path)["k"]), _sample())
    store.store_dask("k", da.from_array(_sample() + 1, chunks=(50, 37)))
    assert np.array_equal(np.asarray(_store(tmp_path)["k"]), _sample() + 1)


@pytest.mark.parametrize("scheduler", ["sync", "threads", "processes"])
def test_store_dask_compute_false_returns_a_delayed_that_commits(tmp_path: Path, scheduler: str) -> None:
    store = _store(tmp_path)

    stored = store.store_dask("k", da.from_array(_sample(), chunks=(64, 10)), compute=False)
    assert _artefacts(tmp_path) == [], "nothing happens before compute"
    assert stored is not None
    stored.compute(scheduler=scheduler)
    store.refresh()

    assert "k" in store
    assert np.array_equal(np.asarray(store["k"]), _sample())


def test_store_dask_refuses_object_dtype_before_any_io(tmp_path: Path) -> None:
    store = _store(tmp_path)

    with pytest.raises(TypeError, match="Python objects"):
        store.store_dask("k", da.from_array(np.array([object()] * 4), chunks=2))

    assert _artefacts(tmp_path) == []


_KILLED_OWNER = textwrap.dedent(
    """
    import os, signal, sys
    import dask, dask.array as da, numpy as np
    from lazy_disk_cache import DiskBackedNDArray, DiskBackedStore, LazyDiskCacheConfig
    import lazy_disk_cache.dask as bridge

    store = DiskBackedStore(
        config=LazyDiskCacheConfig(enable_caching=True, cache_path=sys.argv[1]), factory=DiskBackedNDArray
    )
    written = []
    original = bridge.write_block

    def write_then_die(spec, block, start):
        original(spec, block, start)
        written.append(start)
        if len(written) == 3:
            os.kill(os.getpid(), signal.SIGKILL)

    bridge.write_block = write_then_die
    value = np.arange(400 * 10, dtype=np.float64).reshape(400, 10)
    with dask.config.set(scheduler="sync"):
        store.store_dask("k", da.from_array(value, chunks=(50, 10)))
    """
)


def test_owner_killed_during_store_dask_leaves_nothing_after_reopen_and_a_retry_succeeds(tmp_path: Path) -> None:
    child = subprocess.run([sys.executable, "-c", _KILLED_OWNER, str(tmp_path)], timeout=60, check=False)
    left_by_the_crash = _artefacts(tmp_path)

    store = _store(tmp_path)
    after_reopen = _artefacts(tmp_path)
    store.store_dask("k", da.from_array(_sample(), chunks=(64, 37)))

    assert child.returncode == -signal.SIGKILL
    assert left_by_the_crash == ["k.npy.tmp"]
    assert after_reopen == []
    assert "k" in store
    assert np.array_equal(np.load(tmp_path / "k.npy"), _sample())


# -- optional dependency -------------------------------------------------------------------------


def test_importing_the_package_does_not_import_dask() -> None:
    code = (
        "import sys, lazy_disk_cache; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('dask', 'distributed')))"
    )

    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)

    assert output.stdout.strip() == "[]"


_WITHOUT_DASK = textwrap.dedent(
    """
    import sys
    import importlib.abc

    class Blocker(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name.split(".")[0] in ("dask", "distributed"):
                raise ImportError(f"No module named {name!r}")
            return None

    sys.meta_path.insert(0, Blocker())
    import numpy as np
    from lazy_disk_cache import DiskBackedNDArray, DiskBackedStore, LazyDiskCacheConfig

    entry = DiskBackedNDArray(np.arange(4.0), cache_path=sys.argv[1] + "/e", enable_caching=True)
    store = DiskBackedStore(config=LazyDiskCacheConfig(cache_path=sys.argv[1]), factory=DiskBackedNDArray)
    for call in (entry.to_dask, lambda: store.to_dask("k"), lambda: store.store_dask("k", None)):
        try:
            call()
        except ImportError as exc:
            print(exc)
    """
)


def test_without_dask_the_bridges_raise_import_error_naming_the_extra(tmp_path: Path) -> None:
    output = subprocess.run(
        [sys.executable, "-c", _WITHOUT_DASK, str(tmp_path)], capture_output=True, text=True, timeout=60, check=True
    )

    lines = output.stdout.strip().splitlines()
    assert len(lines) == 3, output.stdout + output.stderr
    assert all("lazy_disk_cache[dask]" in line for line in lines)


# -- entries whose stored pair is committed again --------------------------------------------------


def _original_fortran_key(directory: Path) -> tuple[DiskBackedStore[DiskBackedNDArray], np.ndarray]:
    """A key as the original package writes it: np.save of a Fortran-ordered array (128-byte header)."""
    value = np.asfortranarray(_sample())
    directory.mkdir(exist_ok=True)
    write_original_pair(directory, "k", value)
    return _store(directory), value


def test_an_offloaded_entry_reads_its_key_committed_again_in_another_layout(tmp_path: Path) -> None:
    store, value = _original_fortran_key(tmp_path)
    entry = store["k"]
    entry.offload()

    store.offload(pickle_container=True)  # rewrites k.npy in C order, its payload at byte 4096

    assert np.array_equal(entry.to_dask(chunks=(64, 10)).compute(), value)
    assert np.array_equal(np.asarray(entry), value)


def test_a_loaded_entry_refuses_readers_by_name_once_its_npy_is_replaced(tmp_path: Path) -> None:
    store, value = _original_fortran_key(tmp_path)
    entry = store["k"]  # loaded: its live buffer maps the original file
    store.offload(pickle_container=True)
    entry.offload()

    with pytest.raises(ValueError, match="has been replaced since"):
        entry.to_dask()
    entry.load("r+")  # writes its own .dat from the mapping it kept
    entry.offload()
    assert np.array_equal(entry.to_dask(chunks=(64, 10)).compute(), value)
