"""LazyDiskCache construction, properties, hooks, the dtype rule and the chunk budget."""

import logging
import math
import os
import stat
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pydantic
import pytest
from numpy.typing import DTypeLike, NDArray

from budget_fakes import fake_psutil
from lazy_disk_cache import _backing_file, _rust
from lazy_disk_cache import lazy_disk_cache as ldc
from lazy_disk_cache._directories import open_directory
from lazy_disk_cache.disk_backed_ndarray import DiskBackedNDArray
from lazy_disk_cache.lazy_disk_cache import LazyDiskCache

LOGGER = "lazy_disk_cache.lazy_disk_cache"


class HookedArray(DiskBackedNDArray):
    """Counts hook calls and optionally raises from them."""

    def __init__(self, data: NDArray[Any], *, fail: bool = False, **settings: Any) -> None:
        self.calls: list[str] = []
        self.fail = fail
        super().__init__(data, **settings)

    def on_offload(self) -> None:
        self.calls.append("offload")
        if self.fail:
            raise RuntimeError("offload hook failed")

    def on_load(self) -> None:
        self.calls.append("load")
        if self.fail:
            raise RuntimeError("load hook failed")


# -- construction ----------------------------------------------------------------------------


def test_base_class_cannot_be_instantiated() -> None:
    with pytest.raises(TypeError, match="Can't instantiate abstract class"):
        LazyDiskCache()  # type: ignore[abstract]


def test_constructor_coerces_settings_like_the_config() -> None:
    entry = DiskBackedNDArray(np.zeros(2), purge_disk_on_gc="no", automatic_offloading="yes")  # type: ignore[arg-type]

    assert entry.purge_disk_on_gc is False
    assert entry.automatic_offloading is True


def test_constructor_refuses_a_misspelt_setting_naming_the_class_and_the_closest_setting(tmp_path: Path) -> None:
    with pytest.raises(TypeError) as raised:
        DiskBackedNDArray(np.zeros(2), enable_cachng=True, cache_path=tmp_path / "e")  # type: ignore[call-arg]

    assert str(raised.value).startswith(
        "DiskBackedNDArray() got an unexpected keyword argument 'enable_cachng' (did you mean 'enable_caching'?)"
    )
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("settings", [{"enable_caching": "notabool"}, {"purge_disk_on_gc": None}, {"cache_path": 3}])
def test_constructor_bad_setting_raises_validation_error(settings: dict[str, Any]) -> None:
    with pytest.raises(pydantic.ValidationError):
        DiskBackedNDArray(np.zeros(2), **settings)


@pytest.mark.parametrize(
    ("given", "expected"),
    [("name", "name.dat"), ("x.npy", "x.dat"), ("a.b.c", "a.b.dat"), ("q.tar.gz", "q.tar.dat"), ("y.dat", "y.dat")],
)
def test_cache_path_gets_its_last_suffix_replaced_by_dat(tmp_path: Path, given: str, expected: str) -> None:
    entry = DiskBackedNDArray(np.zeros(2), cache_path=tmp_path / given, purge_disk_on_gc=False)

    assert entry.cache_path == tmp_path / expected


def test_relative_cache_path_is_made_absolute_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    second.mkdir()
    monkeypatch.chdir(first)
    entry = DiskBackedNDArray(np.arange(3.0), cache_path=Path("rel"), purge_disk_on_gc=False)
    monkeypatch.chdir(second)

    entry.enable_caching()

    assert entry.cache_path == first / "rel.dat"
    assert (first / "rel.dat").exists()
    assert not (second / "rel.dat").exists()


def test_cache_path_is_not_symlink_resolved(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    os.symlink(tmp_path / "real", tmp_path / "alias")

    entry = DiskBackedNDArray(np.zeros(2), cache_path=tmp_path / "alias" / "e", purge_disk_on_gc=False)

    assert entry.cache_path == tmp_path / "alias" / "e.dat"


@pytest.mark.parametrize("given", ["", "."])
def test_cache_path_with_an_empty_name_raises_value_error(given: str) -> None:
    with pytest.raises(ValueError, match="empty name"):
        DiskBackedNDArray(np.zeros(2), cache_path=Path(given))


def test_cache_path_naming_an_existing_directory_raises_value_error(tmp_path: Path) -> None:
    given = tmp_path / "somedir"
    given.mkdir()

    with pytest.raises(ValueError) as caught:
        DiskBackedNDArray(np.zeros(2), cache_path=given, enable_caching=True)

    assert str(caught.value) == (
        f"cache_path {given!r} is an existing directory; pass a file path (the entry stores its data in '<name>.dat')"
    )
    assert not (tmp_path / "somedir.dat").exists()


def test_cache_path_whose_dat_form_is_a_directory_raises_value_error(tmp_path: Path) -> None:
    (tmp_path / "e.dat").mkdir()

    with pytest.raises(ValueError, match="is an existing directory"):
        DiskBackedNDArray(np.zeros(2), cache_path=tmp_path / "e")


def test_caching_off_creates_nothing_and_leaves_an_existing_file_alone(tmp_path: Path) -> None:
    existing = tmp_path / "e.dat"
    existing.write_bytes(b"keep me")

    entry = DiskBackedNDArray(np.arange(4), cache_path=tmp_path / "e", purge_disk_on_gc=False)
    entry.offload()
    entry.disable_caching()

    assert sorted(p.name for p in tmp_path.iterdir()) == ["e.dat"]
    assert existing.read_bytes() == b"keep me"


def test_caching_on_creates_the_parent_directories(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "e"

    DiskBackedNDArray(np.arange(4), cache_path=target, enable_caching=True, purge_disk_on_gc=False)

    assert (tmp_path / "a" / "b" / "e.dat").is_file()


# -- ephemeral entries -----------------------------------------------------------------------


def test_ephemeral_entry_with_caching_off_creates_no_file(private_tempdir: Path) -> None:
    entry = DiskBackedNDArray(np.arange(4))

    assert entry.ephemeral is True
    assert entry.cache_path is None
    assert list(private_tempdir.iterdir()) == []


def test_ephemeral_entry_allocates_a_private_file_on_first_conversion(private_tempdir: Path) -> None:
    entry = DiskBackedNDArray(np.arange(4))

    entry.enable_caching()

    path = entry.cache_path
    assert path is not None
    assert path.parent == private_tempdir
    assert path.suffix == ".dat"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert entry.ephemeral is True
    assert np.array_equal(np.fromfile(path, dtype=np.int64), np.arange(4))


def test_ephemeral_entry_with_caching_at_construction_is_backed_by_a_temp_file(private_tempdir: Path) -> None:
    entry = DiskBackedNDArray(np.arange(4), enable_caching=True)

    assert entry.cache_path is not None
    assert [p.name for p in private_tempdir.iterdir()] == [entry.cache_path.name]
    assert entry.ephemeral is True
    assert entry._owner_pid == os.getpid()


def test_ephemeral_purge_is_armed_at_allocation(private_tempdir: Path) -> None:
    entry = DiskBackedNDArray(np.arange(4))
    assert not hasattr(entry, "_finalizer")

    entry.enable_caching()

    assert entry._finalizer.alive


# -- properties ------------------------------------------------------------------------------


def test_state_properties_of_a_ram_entry() -> None:
    entry = DiskBackedNDArray(np.arange(3), automatic_offloading=True)

    assert (entry.cache_enabled, entry.offloaded, entry.purge_disk_on_gc, entry.automatic_offloading) == (
        False,
        False,
        True,
        True,
    )


@pytest.mark.parametrize("value", [1, 0, "yes", None, np.bool_(True)])
def test_automatic_offloading_setter_refuses_non_bool(value: Any) -> None:
    entry = DiskBackedNDArray(np.arange(3))

    with pytest.raises(TypeError, match=r"^automatic_offloading must be a bool; got "):
        entry.automatic_offloading = value

    assert entry.automatic_offloading is False


def test_automatic_offloading_setter_changes_the_flag_without_changing_state(tmp_path: Path) -> None:
    entry = DiskBackedNDArray(np.arange(3), cache_path=tmp_path / "e", enable_caching=True)

    entry.automatic_offloading = True

    assert entry.automatic_offloading is True
    assert entry.offloaded is False


def test_cache_path_setter_always_raises_with_the_entry_path(tmp_path: Path) -> None:
    entry = DiskBackedNDArray(np.arange(3), cache_path=tmp_path / "e")

    with pytest.raises(AttributeError) as caught:
        entry.cache_path = tmp_path / "other"

    assert str(caught.value) == (
        f"Cannot reassign cache_path on the DiskBackedNDArray entry at {str(tmp_path / 'e.dat')!r}: the attempted "
        f"path was {tmp_path / 'other'!r}; an entry's cache path is fixed at construction — create the entry "
        "through DiskBackedStore (which derives the path from the validated store key), or pass cache_path= to "
        "the constructor."
    )
    assert entry.cache_path == tmp_path / "e.dat"


def test_cache_path_setter_names_only_the_class_without_a_path() -> None:
    entry = DiskBackedNDArray(np.arange(3))

    with pytest.raises(AttributeError, match=r"^Cannot reassign cache_path on the DiskBackedNDArray: the attempted"):
        entry.cache_path = None


@pytest.mark.parametrize("name", ["purge_disk_on_gc", "ephemeral", "offloaded", "cache_enabled"])
def test_read_only_properties_refuse_assignment(name: str) -> None:
    entry = DiskBackedNDArray(np.arange(3))

    with pytest.raises(AttributeError):
        setattr(entry, name, True)


# -- hooks -----------------------------------------------------------------------------------


def test_hooks_run_after_offload_and_load(tmp_path: Path) -> None:
    entry = HookedArray(np.arange(3), cache_path=tmp_path / "e", enable_caching=True)

    entry.offload()
    entry.load()

    assert entry.calls == ["offload", "load"]


HOOK_CASES = [("offload", "Error in on_offload hook"), ("load", "Error in on_load hook")]


@pytest.mark.parametrize(("action", "message"), HOOK_CASES)
def test_hook_exceptions_are_logged_not_raised(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, action: str, message: str
) -> None:
    entry = HookedArray(np.arange(3), fail=True, cache_path=tmp_path / "e", enable_caching=True)
    if action == "load":
        entry.offload()
    caplog.clear()

    with caplog.at_level(logging.ERROR, logger=LOGGER):
        getattr(entry, action)()

    assert [(r.name, r.getMessage()) for r in caplog.records] == [(LOGGER, message)]
    assert caplog.records[0].exc_info is not None
    assert entry.offloaded is (action == "offload")


# -- dtype rule ------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.dtype(object), np.dtype([("a", "f8"), ("b", "O")])])
def test_object_dtype_with_caching_raises_type_error_before_writing(tmp_path: Path, dtype: np.dtype[Any]) -> None:
    data = np.empty(3, dtype=dtype)

    with pytest.raises(TypeError) as caught:
        DiskBackedNDArray(data, cache_path=tmp_path / "e", enable_caching=True)

    assert str(caught.value) == f"cannot cache an array of dtype {dtype!r} on disk: it contains Python objects"
    assert list(tmp_path.iterdir()) == []


def test_object_dtype_without_caching_stays_in_ram() -> None:
    data = np.array([1, "a", None], dtype=object)

    entry = DiskBackedNDArray(data)

    assert entry.data is data


def test_enable_caching_on_object_dtype_raises_and_keeps_the_ram_state(tmp_path: Path) -> None:
    data = np.array([1, "a"], dtype=object)
    entry = DiskBackedNDArray(data, cache_path=tmp_path / "e")

    with pytest.raises(TypeError, match="contains Python objects"):
        entry.enable_caching()

    assert entry.cache_enabled is False
    assert entry.data is data
    assert list(tmp_path.iterdir()) == []


# -- log records name entries by their file --------------------------------------------------


def test_no_log_record_names_an_entry_by_its_id(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="lazy_disk_cache"):
        entry = DiskBackedNDArray(np.arange(3), cache_path=tmp_path / "e", enable_caching=True)
        entry.offload()
        entry.offload()
        entry.disable_caching()
        entry.offload()

    texts = [record.getMessage() for record in caplog.records]
    assert texts
    assert all(str(id(entry)) not in text for text in texts), texts
    assert all(str(tmp_path / "e.dat") in text for text in texts), texts


# -- masked arrays ---------------------------------------------------------------------------

MASKED_REFUSAL = (
    "cannot cache a numpy.ma.MaskedArray on disk: its mask would be lost. Cache array.filled(fill_value) "
    "(and np.ma.getmaskarray(array) as a second array if the mask matters), or keep caching off"
)


def _masked() -> np.ma.MaskedArray[Any, np.dtype[Any]]:
    return np.ma.masked_array(np.arange(4.0), mask=[False, True, False, True])


def test_a_masked_array_with_caching_raises_type_error_before_writing(tmp_path: Path) -> None:
    with pytest.raises(TypeError) as caught:
        DiskBackedNDArray(_masked(), cache_path=tmp_path / "e", enable_caching=True)

    assert str(caught.value) == MASKED_REFUSAL
    assert list(tmp_path.iterdir()) == []


def test_a_masked_array_without_caching_keeps_its_mask_in_ram() -> None:
    data = _masked()

    entry = DiskBackedNDArray(data)

    assert entry.data is data
    assert np.ma.getmaskarray(entry.data).tolist() == [False, True, False, True]


def test_enable_caching_on_a_masked_array_raises_and_keeps_the_ram_state(tmp_path: Path) -> None:
    data = _masked()
    entry = DiskBackedNDArray(data, cache_path=tmp_path / "e")

    with pytest.raises(TypeError, match=r"numpy\.ma\.MaskedArray"):
        entry.enable_caching()

    assert entry.cache_enabled is False
    assert entry.data is data
    assert list(tmp_path.iterdir()) == []


# -- chunk budget ----------------------------------------------------------------------------


def test_budget_is_ten_percent_of_available_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ldc, "psutil", fake_psutil(1_000_000))

    assert ldc.chunk_budget_bytes() == 100_000


def test_budget_queries_a_replaced_psutil_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ldc, "psutil", fake_psutil(1_000_000))
    ldc.chunk_budget_bytes()
    monkeypatch.setattr(ldc, "psutil", fake_psutil(5_000_000))

    assert ldc.chunk_budget_bytes() == 500_000


def test_budget_without_psutil_uses_the_fallback_global(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ldc, "psutil", None)
    monkeypatch.setattr(ldc, "_MEMMAP_FALLBACK_CHUNK_BYTES", 12345)

    assert ldc.chunk_budget_bytes() == 12345


def test_budget_falls_back_when_psutil_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken() -> None:
        raise OSError("no /proc")

    monkeypatch.setattr(ldc, "psutil", SimpleNamespace(virtual_memory=broken))
    monkeypatch.setattr(ldc, "_MEMMAP_FALLBACK_CHUNK_BYTES", 4321)

    assert ldc.chunk_budget_bytes() == 4321


def test_fallback_chunk_constant_is_64_mib() -> None:
    assert ldc._MEMMAP_FALLBACK_CHUNK_BYTES == 64 * 1024**2


class _RecordingDirectory:
    """Wraps a CacheDir, recording write_file calls and the size of every streamed block."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.chunk_bytes: list[int] = []
        self.block_sizes: list[int] = []

    def write_file(self, name: str, src: Any, **kwargs: Any) -> Any:
        self.chunk_bytes.append(kwargs["chunk_bytes"])
        if isinstance(src, memoryview | bytes | bytearray):
            self.block_sizes.append(memoryview(src).nbytes)
            return self.inner.write_file(name, src, **kwargs)
        blocks = list(self._measure(src))
        return self.inner.write_file(name, blocks, **kwargs)

    def _measure(self, blocks: Iterable[Any]) -> Iterator[Any]:
        for block in blocks:
            self.block_sizes.append(memoryview(block).nbytes)
            yield block

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


@pytest.fixture
def recorder(monkeypatch: pytest.MonkeyPatch) -> list[_RecordingDirectory]:
    made: list[_RecordingDirectory] = []

    def wrapped(path: Path, *, create: bool = False) -> Any:
        directory = _RecordingDirectory(open_directory(path, create=create))
        made.append(directory)
        return directory

    monkeypatch.setattr(_backing_file, "open_directory", wrapped)
    return made


def test_conversion_hands_the_psutil_budget_to_the_core(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, recorder: list[_RecordingDirectory]
) -> None:
    monkeypatch.setattr(ldc, "psutil", fake_psutil(10_000))

    DiskBackedNDArray(np.arange(1000.0), cache_path=tmp_path / "e", enable_caching=True)

    assert [d.chunk_bytes for d in recorder if d.chunk_bytes] == [[1000]]


def test_conversion_without_psutil_uses_the_patched_fallback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, recorder: list[_RecordingDirectory]
) -> None:
    monkeypatch.setattr(ldc, "psutil", None)
    monkeypatch.setattr(ldc, "_MEMMAP_FALLBACK_CHUNK_BYTES", 2048)

    DiskBackedNDArray(np.arange(1000.0), cache_path=tmp_path / "e", enable_caching=True)

    assert [d.chunk_bytes for d in recorder if d.chunk_bytes] == [[2048]]


def test_contiguous_source_is_passed_as_one_buffer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, recorder: list[_RecordingDirectory]
) -> None:
    monkeypatch.setattr(ldc, "psutil", fake_psutil(10_000))

    DiskBackedNDArray(np.arange(1000.0), cache_path=tmp_path / "e", enable_caching=True)

    assert [d.block_sizes for d in recorder if d.block_sizes] == [[8000]]


def _writes_during(action: Callable[[], Any]) -> tuple[Any, int]:
    """Run ``action``; return its result and the number of ``pwrite`` calls the core made."""
    _rust._clear_faults()
    result = action()
    return result, _rust._op_counts()["write"]


def test_strided_source_is_streamed_in_blocks_within_the_budget(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, recorder: list[_RecordingDirectory], clean_faults: None
) -> None:
    monkeypatch.setattr(ldc, "psutil", fake_psutil(10_000))
    source = np.arange(40_000.0).reshape(200, 200)[:, ::2]

    entry, writes = _writes_during(lambda: DiskBackedNDArray(source, cache_path=tmp_path / "e", enable_caching=True))

    # Python hands the strided array over as it is (no copy); the core gathers it through a
    # bounce buffer within the budget, so no piece it writes exceeds 1000 bytes.
    sizes = next(d.block_sizes for d in recorder if d.block_sizes)
    assert sizes == [source.nbytes]
    assert writes >= math.ceil(source.nbytes / 1000)
    assert np.array_equal(entry.data, source)


def test_streaming_splits_rows_larger_than_the_budget(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, recorder: list[_RecordingDirectory], clean_faults: None
) -> None:
    monkeypatch.setattr(ldc, "psutil", None)
    monkeypatch.setattr(ldc, "_MEMMAP_FALLBACK_CHUNK_BYTES", 64)
    source = np.asfortranarray(np.arange(2 * 3 * 50, dtype=np.int32).reshape(2, 3, 50))

    entry, writes = _writes_during(lambda: DiskBackedNDArray(source, cache_path=tmp_path / "e", enable_caching=True))

    # Each row holds 200 bytes, more than the 64-byte budget: every piece is at most 64 bytes.
    sizes = next(d.block_sizes for d in recorder if d.block_sizes)
    assert sizes == [source.nbytes]
    assert writes >= math.ceil(source.nbytes / 64)
    assert np.array_equal(entry.data, source)


def _describe(entry: LazyDiskCache) -> tuple[tuple[int, ...], DTypeLike]:
    return entry._describe_shape_dtype()


def test_shape_and_dtype_are_described_without_loading(tmp_path: Path) -> None:
    entry = DiskBackedNDArray(np.zeros((2, 3), dtype=np.int16), cache_path=tmp_path / "e", enable_caching=True)
    entry.offload()

    assert _describe(entry) == ((2, 3), np.dtype(np.int16))
    assert entry.offloaded
