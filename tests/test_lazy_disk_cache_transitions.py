"""The RAM / MAPPED / OFFLOADED state machine: one test per row of the transition table."""

import errno
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray

from lazy_disk_cache.disk_backed_ndarray import DiskBackedNDArray
from lazy_disk_cache.errors import StoreContainmentError
from lazy_disk_cache.lazy_disk_cache import CopyableFile, array_to_write, copyable_file

LOGGER = "lazy_disk_cache.lazy_disk_cache"


def _source() -> NDArray[np.float64]:
    return np.arange(12, dtype=np.float64).reshape(3, 4)


def _on_disk(path: Path | None) -> NDArray[np.float64]:
    assert path is not None
    return np.fromfile(path, dtype=np.float64).reshape(3, 4)


@pytest.fixture
def mapped(tmp_path: Path) -> DiskBackedNDArray:
    return DiskBackedNDArray(_source(), cache_path=tmp_path / "e", enable_caching=True)


@pytest.fixture
def offloaded(mapped: DiskBackedNDArray) -> DiskBackedNDArray:
    mapped.offload()
    return mapped


# -- RAM -------------------------------------------------------------------------------------


def test_ram_state_holds_the_callers_array_and_no_file(tmp_path: Path) -> None:
    source = _source()

    entry = DiskBackedNDArray(source, cache_path=tmp_path / "e")

    assert (entry.cache_enabled, entry.offloaded) == (False, False)
    assert entry._data is source
    assert entry._mmap is None
    assert entry._in_memory is True
    assert list(tmp_path.iterdir()) == []


# -- enable_caching --------------------------------------------------------------------------


def test_enable_caching_from_ram_maps_a_fresh_dat(tmp_path: Path) -> None:
    source = _source()
    entry = DiskBackedNDArray(source, cache_path=tmp_path / "e")

    entry.enable_caching()

    assert (entry.cache_enabled, entry.offloaded) == (True, False)
    assert isinstance(entry._data, np.memmap)
    assert entry._mmap is entry._data
    assert entry._data.flags.writeable
    assert np.array_equal(_on_disk(entry.cache_path), source)


def test_enable_caching_stops_referencing_the_callers_array(tmp_path: Path) -> None:
    source = _source()
    entry = DiskBackedNDArray(source, cache_path=tmp_path / "e", enable_caching=True)

    source[...] = -1

    assert np.array_equal(entry.data, _source())


def test_enable_caching_when_enabled_is_a_no_op(mapped: DiskBackedNDArray) -> None:
    before = mapped._mmap

    mapped.enable_caching()

    assert mapped._mmap is before


def test_enable_caching_with_automatic_offloading_ends_offloaded(tmp_path: Path) -> None:
    entry = DiskBackedNDArray(_source(), cache_path=tmp_path / "e", automatic_offloading=True)

    entry.enable_caching()

    assert (entry.cache_enabled, entry.offloaded) == (True, True)
    assert np.array_equal(_on_disk(entry.cache_path), _source())


def test_conversion_replaces_a_longer_stale_dat(tmp_path: Path) -> None:
    (tmp_path / "e.dat").write_bytes(b"\xff" * 1000)

    entry = DiskBackedNDArray(_source(), cache_path=tmp_path / "e", enable_caching=True)

    assert entry.cache_path is not None
    assert entry.cache_path.stat().st_size == _source().nbytes
    assert not (tmp_path / "e.dat.tmp").exists()


def test_conversion_while_offloaded_reads_the_current_dat(offloaded: DiskBackedNDArray) -> None:
    offloaded._convert_to_memmap()

    assert offloaded.offloaded is False
    assert np.array_equal(offloaded.data, _source())


def test_conversion_through_an_inside_symlink_keeps_the_link(tmp_path: Path) -> None:
    (tmp_path / "payload.bin").write_bytes(b"")
    os.symlink("payload.bin", tmp_path / "e.dat")

    entry = DiskBackedNDArray(_source(), cache_path=tmp_path / "e", enable_caching=True)

    assert (tmp_path / "e.dat").is_symlink()
    assert np.array_equal(np.fromfile(tmp_path / "payload.bin").reshape(3, 4), _source())
    entry.offload()
    assert np.array_equal(entry[...], _source())
    entry.disable_caching()
    assert np.array_equal(entry.data, _source())


def test_conversion_through_an_outside_symlink_is_refused_before_writing(tmp_path: Path) -> None:
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (outside / "victim").write_bytes(b"untouched")
    os.symlink(outside / "victim", root / "e.dat")
    entry = DiskBackedNDArray(_source(), cache_path=root / "e")

    with pytest.raises(StoreContainmentError, match="resolves outside its cache directory"):
        entry.enable_caching()

    assert (outside / "victim").read_bytes() == b"untouched"
    assert entry.cache_enabled is False
    assert np.array_equal(entry.data, _source())


def test_conversion_refuses_a_temp_symlink_leading_outside(tmp_path: Path) -> None:
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (outside / "victim").write_bytes(b"untouched")
    os.symlink(outside / "victim", root / "e.dat.tmp")

    with pytest.raises(StoreContainmentError):
        DiskBackedNDArray(_source(), cache_path=root / "e", enable_caching=True)

    assert (outside / "victim").read_bytes() == b"untouched"


def test_array_to_write_of_a_mapped_entry_is_the_live_buffer(mapped: DiskBackedNDArray) -> None:
    assert array_to_write(mapped) is mapped.data


def test_array_to_write_of_an_offloaded_entry_is_read_only_and_keeps_the_state(
    offloaded: DiskBackedNDArray,
) -> None:
    source = array_to_write(offloaded)

    assert offloaded.offloaded
    assert not source.flags.writeable
    assert np.array_equal(source, _source())


def test_an_offloaded_entry_offers_its_dat_to_copy(offloaded: DiskBackedNDArray) -> None:
    assert offloaded.cache_path is not None

    assert copyable_file(offloaded) == CopyableFile(offloaded.cache_path, 0)


def test_a_loaded_entry_offers_no_file_to_copy(mapped: DiskBackedNDArray) -> None:
    assert copyable_file(mapped) is None


# -- disable_caching -------------------------------------------------------------------------


def test_disable_caching_when_disabled_is_a_no_op() -> None:
    source = _source()
    entry = DiskBackedNDArray(source)

    entry.disable_caching()

    assert entry.data is source


def test_disable_caching_from_mapped_copies_into_ram_and_keeps_the_dat(mapped: DiskBackedNDArray) -> None:
    mapped.data[0, 0] = 99.0

    mapped.disable_caching()

    assert type(mapped._data) is np.ndarray
    assert mapped._mmap is None
    assert (mapped.cache_enabled, mapped.offloaded) == (False, False)
    assert mapped._data[0, 0] == 99.0
    assert mapped.cache_path is not None and mapped.cache_path.exists()


def test_disable_caching_from_offloaded_loads_then_copies(offloaded: DiskBackedNDArray) -> None:
    offloaded.disable_caching()

    assert type(offloaded._data) is np.ndarray
    assert np.array_equal(offloaded._data, _source())
    assert (offloaded.cache_enabled, offloaded.offloaded) == (False, False)


def test_disable_caching_after_a_copy_on_write_load_keeps_the_private_writes(offloaded: DiskBackedNDArray) -> None:
    offloaded.load("c")
    offloaded.data[1, 1] = -5.0

    offloaded.disable_caching()

    assert offloaded.data[1, 1] == -5.0
    assert _on_disk(offloaded.cache_path)[1, 1] == 5.0


def test_ram_array_after_disable_caching_is_independent_of_the_file(mapped: DiskBackedNDArray) -> None:
    mapped.disable_caching()

    mapped.data[...] = 0.0

    assert np.array_equal(_on_disk(mapped.cache_path), _source())


# -- offload ---------------------------------------------------------------------------------


def test_offload_in_ram_logs_and_does_nothing(caplog: pytest.LogCaptureFixture) -> None:
    source = _source()
    entry = DiskBackedNDArray(source)

    with caplog.at_level(logging.INFO, logger=LOGGER):
        entry.offload()

    assert entry.data is source
    records = [r for r in caplog.records if r.name == LOGGER]
    assert [(r.levelno, r.msg, r.args) for r in records] == [
        (
            logging.INFO,
            "Caching disabled ==> %s.`offload()` ignored for %s.",
            ("DiskBackedNDArray", "<entry in RAM without a file>"),
        )
    ]


def test_offload_in_ram_names_the_entry_by_its_file_when_it_has_one(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    entry = DiskBackedNDArray(_source(), cache_path=tmp_path / "tile")

    with caplog.at_level(logging.INFO, logger=LOGGER):
        entry.offload()

    assert [r.getMessage() for r in caplog.records if r.name == LOGGER] == [
        f"Caching disabled ==> DiskBackedNDArray.`offload()` ignored for {tmp_path / 'tile.dat'}."
    ]


def test_offload_when_offloaded_logs_and_does_nothing(
    offloaded: DiskBackedNDArray, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger=LOGGER):
        offloaded.offload()

    records = [r for r in caplog.records if r.name == LOGGER]
    assert [(r.levelno, r.msg, r.args) for r in records] == [
        (
            logging.INFO,
            "%s: %s already offloaded to %s.",
            ("DiskBackedNDArray", str(offloaded.cache_path), offloaded.cache_path),
        )
    ]
    assert offloaded.offloaded


def test_offload_from_mapped_drops_the_buffer(mapped: DiskBackedNDArray) -> None:
    mapped.offload()

    assert mapped.offloaded is True
    assert mapped._mmap is None
    assert mapped._in_memory is False
    with pytest.raises(AttributeError):
        _ = mapped._data


def test_offload_persists_writes_made_through_data(mapped: DiskBackedNDArray) -> None:
    mapped.data[2, 3] = 1234.5

    mapped.offload()

    assert _on_disk(mapped.cache_path)[2, 3] == 1234.5


def test_offload_copies_a_replaced_live_buffer_into_the_mapping(mapped: DiskBackedNDArray) -> None:
    mapped._set_buffer(np.full((3, 4), 7.0))

    mapped.offload()

    assert np.array_equal(_on_disk(mapped.cache_path), np.full((3, 4), 7.0))


def test_views_taken_before_offload_stay_valid_and_share_the_file(mapped: DiskBackedNDArray) -> None:
    view = mapped[1:3]

    mapped.offload()
    view[0, 0] = -1.0

    assert view[1, 3] == 11.0
    assert mapped[1, 0] == -1.0


# -- load ------------------------------------------------------------------------------------


def test_load_when_not_offloaded_is_a_no_op(mapped: DiskBackedNDArray) -> None:
    before = mapped._mmap

    mapped.load()

    assert mapped._mmap is before


def test_load_in_ram_is_a_no_op() -> None:
    source = _source()
    entry = DiskBackedNDArray(source)

    entry.load("w+")

    assert entry.data is source


def test_load_does_not_check_the_caching_flag(offloaded: DiskBackedNDArray) -> None:
    offloaded._enable_caching = False

    offloaded.load()

    assert offloaded.offloaded is False
    assert np.array_equal(offloaded.data, _source())


def test_load_without_a_backing_file_is_a_no_op() -> None:
    entry = DiskBackedNDArray(_source())
    entry._in_memory = False

    entry.load()

    assert entry.offloaded is True
    assert entry.cache_path is None


def test_load_default_mode_is_read_write_and_persists(offloaded: DiskBackedNDArray) -> None:
    offloaded.load()
    offloaded.data[0, 1] = 42.0
    offloaded.offload()

    offloaded.load()

    assert offloaded.offloaded is False
    assert offloaded.data.flags.writeable
    assert offloaded.data[0, 1] == 42.0


def test_load_read_only_gives_an_unwritable_memmap(offloaded: DiskBackedNDArray) -> None:
    offloaded.load("r")

    assert isinstance(offloaded.data, np.memmap)
    assert not offloaded.data.flags.writeable
    assert np.array_equal(offloaded.data, _source())


def test_load_copy_on_write_never_reaches_the_file(offloaded: DiskBackedNDArray) -> None:
    offloaded.load("c")
    offloaded.data[...] = 0.0
    offloaded.offload()

    offloaded.load("r")

    assert np.array_equal(offloaded.data, _source())


def test_load_w_plus_zero_fills(offloaded: DiskBackedNDArray) -> None:
    offloaded.load("w+")

    assert np.array_equal(offloaded.data, np.zeros((3, 4)))
    assert offloaded.data.flags.writeable
    assert np.array_equal(_on_disk(offloaded.cache_path), np.zeros((3, 4)))


@pytest.mark.parametrize("mode", ["w", "rw", "a", "R", ""])
def test_load_with_an_unknown_mode_raises_value_error(offloaded: DiskBackedNDArray, mode: Any) -> None:
    with pytest.raises(ValueError, match="mode"):
        offloaded.load(mode)

    assert offloaded.offloaded


def test_load_of_a_missing_file_raises_file_not_found_naming_it(offloaded: DiskBackedNDArray) -> None:
    assert offloaded.cache_path is not None
    offloaded.cache_path.unlink()

    with pytest.raises(FileNotFoundError) as caught:
        offloaded.load()

    assert caught.value.errno == errno.ENOENT
    assert str(caught.value.filename).endswith("e.dat")
    assert offloaded.offloaded


def test_load_with_a_missing_directory_raises_file_not_found_naming_the_file(tmp_path: Path) -> None:
    entry = DiskBackedNDArray(_source(), cache_path=tmp_path / "sub" / "e", enable_caching=True)
    entry.offload()
    shutil.rmtree(tmp_path / "sub")

    with pytest.raises(FileNotFoundError) as caught:
        entry.load("r")

    assert str(caught.value.filename).endswith("e.dat")


def test_load_after_the_directory_was_replaced_reads_the_new_file(tmp_path: Path) -> None:
    directory = tmp_path / "sub"
    entry = DiskBackedNDArray(_source(), cache_path=directory / "e", enable_caching=True, purge_disk_on_gc=False)
    entry.offload()
    shutil.rmtree(directory)
    directory.mkdir()
    np.full((3, 4), 8.0).tofile(directory / "e.dat")

    entry.load()

    assert np.array_equal(entry.data, np.full((3, 4), 8.0))


def test_load_of_a_short_file_raises_value_error(offloaded: DiskBackedNDArray) -> None:
    assert offloaded.cache_path is not None
    os.truncate(offloaded.cache_path, 10)

    with pytest.raises(ValueError):
        offloaded.load()

    assert offloaded.offloaded


@pytest.mark.parametrize("mode", ["r+", "w+"])
def test_writable_load_through_an_outside_symlink_is_refused(tmp_path: Path, mode: Any) -> None:
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    entry = DiskBackedNDArray(_source(), cache_path=root / "e", enable_caching=True, purge_disk_on_gc=False)
    entry.offload()
    os.replace(root / "e.dat", outside / "e.dat")
    os.symlink(outside / "e.dat", root / "e.dat")

    with pytest.raises(StoreContainmentError, match="resolves outside its cache directory"):
        entry.load(mode)

    assert np.array_equal(np.fromfile(outside / "e.dat").reshape(3, 4), _source())


def test_read_only_load_through_an_outside_symlink_works(tmp_path: Path) -> None:
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    entry = DiskBackedNDArray(_source(), cache_path=root / "e", enable_caching=True, purge_disk_on_gc=False)
    entry.offload()
    os.replace(root / "e.dat", outside / "e.dat")
    os.symlink(outside / "e.dat", root / "e.dat")

    entry.load("r")

    assert np.array_equal(entry.data, _source())


# -- ensure_loaded ---------------------------------------------------------------------------


def test_ensure_loaded_reoffloads_only_what_was_offloaded(tmp_path: Path) -> None:
    entry = DiskBackedNDArray(_source(), cache_path=tmp_path / "e", enable_caching=True)
    entry.automatic_offloading = True

    _ = entry[0]

    assert entry.offloaded is False


def test_ensure_loaded_reoffloads_after_an_offloaded_access(tmp_path: Path) -> None:
    entry = DiskBackedNDArray(_source(), cache_path=tmp_path / "e", enable_caching=True, automatic_offloading=True)

    row = entry[1]

    assert entry.offloaded is True
    assert np.array_equal(row, _source()[1])


def test_ensure_loaded_reoffloads_when_the_call_raises(tmp_path: Path) -> None:
    entry = DiskBackedNDArray(_source(), cache_path=tmp_path / "e", enable_caching=True, automatic_offloading=True)

    with pytest.raises(IndexError):
        _ = entry[10]

    assert entry.offloaded is True


def test_ensure_loaded_without_automatic_offloading_stays_loaded(offloaded: DiskBackedNDArray) -> None:
    _ = offloaded[0]

    assert offloaded.offloaded is False
