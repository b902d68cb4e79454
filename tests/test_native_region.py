"""Key locks and reserved regions through the native layer: their guards and their lifetimes."""

from pathlib import Path

import numpy as np
import pytest

from lazy_disk_cache import _rust


def _reserve(cache_dir: _rust.CacheDir, shape: tuple[int, ...]) -> _rust.Region:
    return cache_dir.reserve_region(
        "k", descr="'|u1'", fortran_order=False, shape=shape, nbytes=int(np.prod(shape)), nonce=7
    )


def test_a_region_left_without_commit_removes_its_temp_and_frees_the_key(
    tmp_path: Path, cache_dir: _rust.CacheDir
) -> None:
    with _reserve(cache_dir, (4,)) as region:
        assert region.open
        assert (tmp_path / region.temp_name).exists()
        assert cache_dir.try_lock_key("k") is None

    assert not region.open
    assert not (tmp_path / region.temp_name).exists()
    lock = cache_dir.try_lock_key("k")
    assert lock is not None
    lock.release()


def test_a_committed_region_holds_every_block_and_cannot_be_committed_again(
    tmp_path: Path, cache_dir: _rust.CacheDir
) -> None:
    region = _reserve(cache_dir, (2, 3))
    for row in range(2):
        cache_dir.write_block(
            region.temp_name,
            bytes(range(3 * row, 3 * row + 3)),
            nonce=region.nonce,
            data_offset=region.data_offset,
            nbytes=region.nbytes,
            shape=(2, 3),
            start=(row, 0),
            extent=(1, 3),
            itemsize=1,
        )

    region.commit(b"{}")

    assert not region.open
    with pytest.raises(ValueError, match="already committed"):
        region.commit(b"{}")
    np.testing.assert_array_equal(np.load(tmp_path / "k.npy"), np.arange(6, dtype=np.uint8).reshape(2, 3))


def test_a_key_lock_is_released_by_leaving_its_block_and_release_is_idempotent(cache_dir: _rust.CacheDir) -> None:
    with cache_dir.lock_key("k") as lock:
        assert lock.held
        assert cache_dir.try_lock_key("k") is None

    assert not lock.held
    lock.release()
    again = cache_dir.try_lock_key("k")
    assert again is not None and again.held
    again.release()
