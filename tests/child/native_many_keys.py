"""Child process: group-commit many keys under a low descriptor limit, read them back.

Usage: native_many_keys.py DIRECTORY MODE KEYS SOFT_LIMIT. The child lowers the soft
``RLIMIT_NOFILE`` to SOFT_LIMIT first. MODE ``batch`` stages KEYS keys in one native
``CommitBatch``; MODE ``store`` offloads KEYS cached entries of a ``DiskBackedStore`` with
``pickle_container=True``. Either way every key is then read back and checked, and the outcome
is printed as JSON: ``{"committed": n, "mismatched": [...]}`` or ``{"errno": e, "error": text}``.
"""

import json
import resource
import sys
from pathlib import Path

import numpy as np

from lazy_disk_cache import DiskBackedNDArray, DiskBackedStore, LazyDiskCacheConfig, _rust

VALUES_PER_KEY = 4
CHUNK_BYTES = 1 << 20


def values_of(index: int) -> np.ndarray:
    return np.arange(VALUES_PER_KEY, dtype=np.int64) + VALUES_PER_KEY * index


def commit_through_batch(directory: Path, keys: int) -> None:
    cache = _rust.CacheDir.open(directory)
    with cache.begin_commit(chunk_bytes=CHUNK_BYTES) as batch:
        for index in range(keys):
            values = values_of(index)
            batch.add_npy(
                f"k{index}",
                descr="'<i8'",
                fortran_order=False,
                shape=values.shape,
                nbytes=values.nbytes,
                meta=b"{}",
                source=values.data,
            )
        batch.commit()


def offload_through_store(directory: Path, keys: int) -> None:
    config = LazyDiskCacheConfig(cache_path=directory / "store", enable_caching=True, purge_disk_on_gc=False)
    store = DiskBackedStore[DiskBackedNDArray](config=config, factory=DiskBackedNDArray)
    for index in range(keys):
        store.add_data_to_store(f"k{index}", values_of(index))
    store.offload(pickle_container=True)


def mismatched_keys(directory: Path, keys: int) -> list[str]:
    cache = _rust.CacheDir.open(directory)
    wrong = []
    for index in range(keys):
        name = f"k{index}.npy"
        header = cache.read_header(name)
        values = np.empty(VALUES_PER_KEY, dtype=np.int64)
        cache.read_into(name, header.data_offset, values.data, chunk_bytes=CHUNK_BYTES)
        if header.shape != (VALUES_PER_KEY,) or not np.array_equal(values, values_of(index)):
            wrong.append(name)
    return wrong


def main(directory: str, mode: str, keys: int, soft_limit: int) -> int:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft_limit, hard))
    root = Path(directory)
    try:
        if mode == "batch":
            commit_through_batch(root, keys)
        else:
            offload_through_store(root, keys)
            root = root / "store"
    except OSError as exc:
        json.dump({"errno": exc.errno, "error": str(exc)}, sys.stdout)
        return 0
    json.dump({"committed": keys, "mismatched": mismatched_keys(root, keys)}, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])))
