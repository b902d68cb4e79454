"""DiskBackedNDArray surface: data, indexing, metadata, __array__, ufuncs, NumPy functions, and what is absent."""

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray

from lazy_disk_cache import _rust
from lazy_disk_cache.disk_backed_ndarray import DiskBackedNDArray


def _source() -> NDArray[np.int64]:
    return np.arange(12, dtype=np.int64).reshape(3, 4)


@pytest.fixture
def mapped(tmp_path: Path) -> DiskBackedNDArray:
    return DiskBackedNDArray(_source(), cache_path=tmp_path / "e", enable_caching=True)


@pytest.fixture
def auto(tmp_path: Path) -> DiskBackedNDArray:
    return DiskBackedNDArray(_source(), cache_path=tmp_path / "a", enable_caching=True, automatic_offloading=True)


# -- construction ----------------------------------------------------------------------------


def test_construction_with_automatic_offloading_ends_offloaded(auto: DiskBackedNDArray) -> None:
    assert (auto.cache_enabled, auto.offloaded) == (True, True)
    assert not hasattr(auto, "_data")


def test_construction_with_automatic_offloading_but_no_caching_stays_in_ram() -> None:
    source = _source()

    entry = DiskBackedNDArray(source, automatic_offloading=True)

    assert entry.offloaded is False
    assert entry.data is source


@pytest.mark.parametrize("data", [[1, 2, 3], (1, 2), 5, None, "abc"])
def test_non_ndarray_data_raises_type_error_naming_the_type(data: Any) -> None:
    with pytest.raises(TypeError, match=type(data).__name__):
        DiskBackedNDArray(data)


def test_memmap_data_is_accepted(tmp_path: Path) -> None:
    raw = np.memmap(tmp_path / "raw.bin", dtype=np.int64, mode="w+", shape=(4,))
    raw[:] = [1, 2, 3, 4]

    entry = DiskBackedNDArray(raw, cache_path=tmp_path / "e", enable_caching=True)

    assert np.array_equal(entry.data, [1, 2, 3, 4])
    del raw


def test_caching_off_aliases_the_callers_array() -> None:
    source = _source()

    entry = DiskBackedNDArray(source)
    source[0, 0] = 100

    assert entry.data is source
    assert entry[0, 0] == 100


def test_shape_and_dtype_are_captured_at_construction(mapped: DiskBackedNDArray) -> None:
    assert (mapped._shape, mapped._dtype) == ((3, 4), np.dtype(np.int64))


# -- data ------------------------------------------------------------------------------------


def test_data_is_the_live_memmap_itself(mapped: DiskBackedNDArray) -> None:
    assert isinstance(mapped.data, np.memmap)
    assert mapped.data is mapped._data


def test_data_loads_an_offloaded_entry_and_never_reoffloads(auto: DiskBackedNDArray) -> None:
    data = auto.data

    assert auto.offloaded is False
    assert np.array_equal(data, _source())


def test_writes_through_data_persist_across_offload_and_load(mapped: DiskBackedNDArray) -> None:
    mapped.data[...] = 7

    mapped.offload()

    assert np.array_equal(mapped.data, np.full((3, 4), 7))


# -- indexing --------------------------------------------------------------------------------


def test_slices_of_a_mapped_entry_are_memmaps(mapped: DiskBackedNDArray) -> None:
    view = mapped[1:3]

    assert type(view) is np.memmap
    assert np.array_equal(view, _source()[1:3])


def test_scalar_indexing_returns_the_element(mapped: DiskBackedNDArray) -> None:
    assert mapped[2, 1] == 9


def test_slices_stay_valid_after_offload(mapped: DiskBackedNDArray) -> None:
    view = mapped[0:2, 1:3]
    mapped.offload()

    del mapped

    assert np.array_equal(view, _source()[0:2, 1:3])


def test_indexing_with_automatic_offloading_reoffloads(auto: DiskBackedNDArray) -> None:
    assert auto[0, 3] == 3

    assert auto.offloaded is True


def test_iteration_yields_rows_and_reoffloads_each_step(auto: DiskBackedNDArray) -> None:
    rows = []
    iterable: Any = auto  # iteration goes through the legacy __getitem__ protocol
    for row in iterable:
        rows.append(np.array(row))
        assert auto.offloaded is True

    assert np.array_equal(np.stack(rows), _source())


# -- __array__ -------------------------------------------------------------------------------


def test_asarray_copies_by_default(mapped: DiskBackedNDArray) -> None:
    array = np.asarray(mapped)
    array[0, 0] = -1

    assert mapped[0, 0] == 0
    assert type(array) is np.ndarray


def test_array_copy_true_returns_a_new_array(mapped: DiskBackedNDArray) -> None:
    first = mapped.__array__(copy=True)
    second = mapped.__array__(copy=True)

    assert first is not second
    assert not np.shares_memory(first, mapped.data)


def test_array_with_dtype_converts(mapped: DiskBackedNDArray) -> None:
    converted = np.asarray(mapped, dtype=np.float32)

    assert converted.dtype == np.float32
    assert np.array_equal(converted, _source().astype(np.float32))


def test_array_copy_false_returns_the_live_buffer(mapped: DiskBackedNDArray) -> None:
    assert mapped.__array__(copy=False) is mapped.data


def test_asarray_copy_false_shares_memory_with_the_entry(mapped: DiskBackedNDArray) -> None:
    array = np.asarray(mapped, copy=False)
    array[0, 0] = 55

    assert mapped[0, 0] == 55


def test_array_copy_false_with_the_same_dtype_is_allowed(mapped: DiskBackedNDArray) -> None:
    assert mapped.__array__(np.int64, copy=False) is mapped.data


def test_array_copy_false_with_a_converting_dtype_raises(mapped: DiskBackedNDArray) -> None:
    with pytest.raises(ValueError, match="copy=False"):
        mapped.__array__(np.float32, copy=False)


def test_asarray_copy_false_with_auto_offloading_reoffloads_and_stays_valid(auto: DiskBackedNDArray) -> None:
    array = np.asarray(auto, copy=False)

    assert auto.offloaded is True
    assert np.array_equal(array, _source())


def test_np_array_with_auto_offloading_reoffloads(auto: DiskBackedNDArray) -> None:
    array = np.array(auto)

    assert auto.offloaded is True
    assert np.array_equal(array, _source())


def test_numpy_functions_coerce_through_array(mapped: DiskBackedNDArray) -> None:
    assert np.sum(mapped) == _source().sum()


# -- ufuncs ----------------------------------------------------------------------------------


def test_operator_returns_a_raw_ndarray(mapped: DiskBackedNDArray) -> None:
    result = mapped + 1

    assert type(result) is np.ndarray
    assert np.array_equal(result, _source() + 1)


def test_ufunc_on_two_entries_uses_both_buffers(mapped: DiskBackedNDArray, tmp_path: Path) -> None:
    other = DiskBackedNDArray(np.ones((3, 4), dtype=np.int64), cache_path=tmp_path / "o", enable_caching=True)
    other.offload()

    result = np.multiply(mapped, other)

    assert np.array_equal(result, _source())
    assert other.offloaded is False


def test_ufunc_loads_and_stays_loaded_with_auto_offloading(auto: DiskBackedNDArray) -> None:
    result = np.sqrt(auto)

    assert auto.offloaded is False
    assert np.allclose(result, np.sqrt(_source()))


def test_ufunc_out_writes_into_the_entry(mapped: DiskBackedNDArray) -> None:
    entry: Any = mapped

    result = np.add(entry, 10, out=entry)

    assert result is mapped.data
    mapped.offload()
    assert np.array_equal(mapped.data, _source() + 10)


def test_ufunc_out_tuple_is_accepted(mapped: DiskBackedNDArray) -> None:
    entry: Any = mapped

    np.negative(entry, out=(entry,))

    assert np.array_equal(mapped.data, -_source())


def test_ufunc_reduce_method_is_forwarded(mapped: DiskBackedNDArray) -> None:
    assert np.array_equal(np.add.reduce(mapped, axis=0), _source().sum(axis=0))


def test_equality_is_elementwise(mapped: DiskBackedNDArray) -> None:
    result = mapped == _source()

    assert isinstance(result, np.ndarray)
    assert result.all()


def test_ufunc_with_the_same_entry_twice_does_not_deadlock(mapped: DiskBackedNDArray) -> None:
    assert np.array_equal(mapped * mapped, _source() ** 2)


# -- array metadata and NumPy functions -------------------------------------------------------


@pytest.mark.parametrize("name", ["sum", "reshape", "copy", "astype"])
def test_ndarray_methods_do_not_exist(mapped: DiskBackedNDArray, name: str) -> None:
    with pytest.raises(AttributeError):
        getattr(mapped, name)


def test_metadata_is_answered_without_loading_an_offloaded_entry(auto: DiskBackedNDArray, clean_faults: None) -> None:
    _rust._clear_faults()

    facts = (auto.shape, auto.dtype, auto.ndim, auto.size, auto.nbytes, len(auto))

    assert facts == ((3, 4), np.dtype(np.int64), 2, 12, 96, 3)
    assert auto.offloaded is True
    assert _rust._op_counts()["map"] == 0


def test_len_of_a_zero_dimensional_entry_raises_type_error_like_numpy() -> None:
    scalar = DiskBackedNDArray(np.array(5.0))

    with pytest.raises(TypeError, match="unsized object"):
        len(scalar)
    assert (scalar.shape, scalar.ndim, scalar.size) == ((), 0, 1)


def test_item_assignment_raises_type_error(mapped: DiskBackedNDArray) -> None:
    with pytest.raises(TypeError, match="'DiskBackedNDArray' object does not support item assignment"):
        mapped[0] = 1  # type: ignore[index]


def test_numpy_functions_run_on_the_live_buffer_and_leave_auto_entries_loaded(auto: DiskBackedNDArray) -> None:
    mean = np.mean(auto)

    assert mean == _source().mean()
    assert auto.offloaded is False, "like ufuncs, NumPy functions never re-offload"


def test_concatenate_replaces_entries_nested_in_a_list(mapped: DiskBackedNDArray, auto: DiskBackedNDArray) -> None:
    joined = np.concatenate([mapped, auto, _source()])

    assert type(joined) is np.ndarray
    assert np.array_equal(joined, np.concatenate([_source()] * 3))


def test_copyto_with_an_entry_as_destination_writes_into_its_buffer(mapped: DiskBackedNDArray) -> None:
    np.copyto(mapped, 7)  # type: ignore[arg-type]

    assert np.all(mapped.data == 7)


def test_numpy_functions_lock_every_entry_they_touch(mapped: DiskBackedNDArray, auto: DiskBackedNDArray) -> None:
    held: list[bool] = []

    def probe(first: object, second: object) -> None:
        held.extend(lock._is_owned() for lock in (mapped._lock, auto._lock))  # type: ignore[attr-defined]

    mapped.__array_function__(probe, (DiskBackedNDArray,), ([mapped], auto), {})

    assert held == [True, True]


def test_repr_of_an_entry_in_ram_shows_class_shape_dtype_and_state() -> None:
    entry = DiskBackedNDArray(_source())

    assert repr(entry) == "<DiskBackedNDArray shape=(3, 4) dtype=int64 in RAM>"


def test_repr_of_a_mapped_entry_names_its_file(mapped: DiskBackedNDArray, tmp_path: Path) -> None:
    assert repr(mapped) == f"<DiskBackedNDArray shape=(3, 4) dtype=int64 mapped on {str(tmp_path / 'e.dat')!r}>"


def test_repr_of_an_offloaded_entry_names_its_file_and_does_not_load(auto: DiskBackedNDArray, tmp_path: Path) -> None:
    text = repr(auto)

    assert text == f"<DiskBackedNDArray shape=(3, 4) dtype=int64 offloaded to {str(tmp_path / 'a.dat')!r}>"
    assert auto.offloaded is True
    assert not hasattr(auto, "_data")


def test_repr_of_a_reloaded_store_entry_names_the_payload_it_maps(tmp_path: Path) -> None:
    from lazy_disk_cache import DiskBackedStore, LazyDiskCacheConfig

    config = LazyDiskCacheConfig(cache_path=tmp_path, enable_caching=True)
    writer = DiskBackedStore(config=config, factory=DiskBackedNDArray)
    writer.add_data_to_store("k", np.zeros((2, 3), dtype=np.float32))
    writer.offload("k", pickle_container=True)

    reloaded = DiskBackedStore(config=config, factory=DiskBackedNDArray)["k"]

    assert repr(reloaded) == (
        f"<DiskBackedNDArray shape=(2, 3) dtype=float32 mapped copy-on-write from {str(tmp_path / 'k.npy')!r}>"
    )


def test_repr_of_a_half_built_entry_does_not_raise() -> None:
    entry = DiskBackedNDArray.__new__(DiskBackedNDArray)

    assert repr(entry) == "<DiskBackedNDArray (not initialised)>"


# -- hooks of the subclass contract ----------------------------------------------------------


def test_describe_buffer_raises_attribute_error_while_offloaded(mapped: DiskBackedNDArray) -> None:
    mapped.offload()

    with pytest.raises(AttributeError):
        mapped._describe_buffer()


def test_describe_buffer_reports_shape_dtype_and_live_array(mapped: DiskBackedNDArray) -> None:
    shape, dtype, array = mapped._describe_buffer()

    assert (shape, dtype) == ((3, 4), np.dtype(np.int64))
    assert array is mapped.data
