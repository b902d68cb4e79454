"""A real two-process LocalCluster whose workers have less memory than the array: read, write back, survive a kill."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import dask
import dask.array as da
import numpy as np
import pytest
from distributed import Client, LocalCluster
from distributed.scheduler import KilledWorker

from dask_tasks import kill_own_process_at_block, marked_block
from lazy_disk_cache import DiskBackedNDArray, DiskBackedStore, LazyDiskCacheConfig
from lazy_disk_cache.paths import LOCK_FILE_NAME

pytestmark = pytest.mark.timeout(240)

ROWS, COLUMNS = 6144, 8192  # int64: 384 MiB
CHUNKS = (256, COLUMNS)  # 16 MiB blocks
WORKER_MEMORY = 300 * 1024**2


@pytest.fixture(scope="module")
def client() -> Iterator[Client]:
    """Two worker processes, one thread each, each allowed less memory than the array.

    A task whose worker dies is not retried, so a killed worker fails the computation at once.
    """
    with (
        dask.config.set({"distributed.scheduler.allowed-failures": 0}),
        LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            memory_limit=WORKER_MEMORY,
            dashboard_address=":0",
        ) as cluster,
        Client(cluster) as connected,
    ):
        yield connected


def _store(directory: Path) -> DiskBackedStore[DiskBackedNDArray]:
    return DiskBackedStore(
        config=LazyDiskCacheConfig(enable_caching=True, cache_path=directory), factory=DiskBackedNDArray
    )


def _artefacts(directory: Path) -> list[str]:
    return sorted(name for name in os.listdir(directory) if name != LOCK_FILE_NAME)


@pytest.fixture(scope="module")
def big_store(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    directory = tmp_path_factory.mktemp("big")
    value = np.arange(ROWS * COLUMNS, dtype=np.int64).reshape(ROWS, COLUMNS)
    value[::7] *= -3
    store = _store(directory)
    store.add_data_to_store("big", value)
    store.offload("big", pickle_container=True)
    assert value.nbytes > WORKER_MEMORY
    return directory, value


_DIGEST = textwrap.dedent(
    """
    import hashlib, sys
    import numpy as np
    from lazy_disk_cache import DiskBackedNDArray, DiskBackedStore, LazyDiskCacheConfig

    store = DiskBackedStore(
        config=LazyDiskCacheConfig(enable_caching=True, cache_path=sys.argv[1]), factory=DiskBackedNDArray
    )
    array = np.asarray(store[sys.argv[2]])
    print(array.dtype.str, array.shape, hashlib.sha256(np.ascontiguousarray(array).data).hexdigest())
    """
)


def _digest_in_a_fresh_process(directory: Path, key: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", _DIGEST, str(directory), key], capture_output=True, text=True, timeout=120, check=True
    )
    return done.stdout.strip()


def _digest(array: np.ndarray) -> str:
    return f"{array.dtype.str} {array.shape} {hashlib.sha256(np.ascontiguousarray(array).data).hexdigest()}"


def test_sum_of_a_key_larger_than_a_worker_equals_numpy_bit_for_bit(
    client: Client, big_store: tuple[Path, np.ndarray]
) -> None:
    directory, value = big_store

    total = _store(directory).to_dask("big", chunks=CHUNKS).sum().compute()

    assert total == value.sum()
    assert total.dtype == value.sum().dtype


def test_store_dask_of_a_derived_array_reopens_bit_exact_in_a_fresh_process(
    client: Client, big_store: tuple[Path, np.ndarray]
) -> None:
    directory, value = big_store
    store = _store(directory)
    source = store.to_dask("big", chunks=CHUNKS)
    derived = (source * 3 - 1).map_blocks(marked_block, dtype=np.int64).rechunk((1000, 3000))
    expected = (value * 3 - 1) + np.repeat(np.arange(ROWS // CHUNKS[0]), CHUNKS[0])[:, None]

    store.store_dask("derived", derived)

    assert _artefacts(directory) == ["big.meta.json", "big.npy", "derived.meta.json", "derived.npy"]
    assert _digest_in_a_fresh_process(directory, "derived") == _digest(expected)


def test_a_worker_killed_during_store_dask_leaves_no_key_and_no_temp_and_a_retry_succeeds(
    client: Client, tmp_path: Path
) -> None:
    value = np.arange(64 * 4096, dtype=np.float64).reshape(64, 4096)
    store = _store(tmp_path)
    dying = da.from_array(value, chunks=(8, 4096)).map_blocks(kill_own_process_at_block, victim=5, dtype=np.float64)

    with pytest.raises(KilledWorker):
        store.store_dask("k", dying)
    after_failure = _artefacts(tmp_path)
    reopened = _store(tmp_path)
    after_reopen = (_artefacts(tmp_path), "k" in reopened)
    client.wait_for_workers(2, timeout=60)
    reopened.store_dask("k", da.from_array(value, chunks=(8, 4096)) + 1)

    assert after_failure == []
    assert after_reopen == ([], False)
    assert _digest_in_a_fresh_process(tmp_path, "k") == _digest(value + 1)


def test_store_dask_compute_false_reserves_writes_and_commits_from_a_worker(client: Client, tmp_path: Path) -> None:
    value = np.arange(400 * 10, dtype=np.float64).reshape(400, 10)
    store = _store(tmp_path)

    stored = store.store_dask("k", da.from_array(value, chunks=(50, 10)), compute=False)
    assert stored is not None
    stored.compute()
    store.refresh()

    assert "k" in store
    assert _artefacts(tmp_path) == ["k.meta.json", "k.npy"]
    assert np.array_equal(np.asarray(store["k"]), value)
