"""LazyDiskCacheKw and LazyDiskCacheConfig: coercion, immutability, derivation helpers."""

import dataclasses
import logging
import os
import pickle
from pathlib import Path
from typing import Any

import pydantic
import pytest

from lazy_disk_cache.errors import StoreContainmentError, StoreKeyError
from lazy_disk_cache.lazy_disk_cache import LazyDiskCacheConfig, LazyDiskCacheKw

LOGGER = "lazy_disk_cache.lazy_disk_cache"


def test_defaults_match_the_documented_table() -> None:
    config = LazyDiskCacheConfig()

    assert (config.enable_caching, config.cache_path, config.purge_disk_on_gc, config.automatic_offloading) == (
        False,
        None,
        True,
        False,
    )


def test_fields_are_positional_in_documented_order() -> None:
    config = LazyDiskCacheConfig(True, "p", False, True)

    assert config == LazyDiskCacheConfig(
        enable_caching=True, cache_path=Path("p"), purge_disk_on_gc=False, automatic_offloading=True
    )


def test_string_cache_path_is_coerced_to_path() -> None:
    assert LazyDiskCacheConfig(cache_path="x").cache_path == Path("x")


@pytest.mark.parametrize("value", ["yes", "true", 1, "on"])
def test_truthy_values_are_coerced_leniently(value: Any) -> None:
    assert LazyDiskCacheConfig(enable_caching=value).enable_caching is True


@pytest.mark.parametrize("field", ["enable_caching", "purge_disk_on_gc", "automatic_offloading"])
@pytest.mark.parametrize("value", ["notabool", None, 2.5])
def test_bad_bool_values_raise_validation_error(field: str, value: Any) -> None:
    with pytest.raises(pydantic.ValidationError):
        LazyDiskCacheConfig(**{field: value})


def test_non_path_cache_path_raises_validation_error() -> None:
    with pytest.raises(pydantic.ValidationError):
        LazyDiskCacheConfig(cache_path=5)  # type: ignore[arg-type]


def test_a_misspelt_keyword_raises_type_error_naming_it_and_the_closest_setting() -> None:
    with pytest.raises(TypeError) as raised:
        LazyDiskCacheConfig(enable_cachng=True)  # type: ignore[call-arg]

    assert str(raised.value) == (
        "LazyDiskCacheConfig() got an unexpected keyword argument 'enable_cachng' (did you mean "
        "'enable_caching'?); the settings are 'enable_caching', 'cache_path', 'purge_disk_on_gc' and "
        "'automatic_offloading'"
    )


def test_an_unknown_keyword_without_a_close_match_lists_the_settings() -> None:
    with pytest.raises(TypeError, match=r"unexpected keyword argument 'colour'; the settings are 'enable_caching'"):
        LazyDiskCacheConfig(enable_caching=True, colour="blue")  # type: ignore[call-arg]


def test_a_dict_config_with_a_misspelt_key_raises_type_error_in_the_store(tmp_path: Path) -> None:
    from lazy_disk_cache import DiskBackedNDArray, DiskBackedStore

    with pytest.raises(TypeError, match=r"'purge_disk_ongc' \(did you mean 'purge_disk_on_gc'\?\)"):
        DiskBackedStore(
            config={"cache_path": tmp_path, "purge_disk_ongc": False},  # type: ignore[arg-type]
            factory=DiskBackedNDArray,
        )


def test_assignment_raises_frozen_instance_error() -> None:
    config = LazyDiskCacheConfig()

    with pytest.raises(dataclasses.FrozenInstanceError):
        config.enable_caching = True  # type: ignore[misc]


def test_equal_configs_hash_equal_and_work_as_dict_keys() -> None:
    first = LazyDiskCacheConfig(cache_path=Path("a"))
    second = LazyDiskCacheConfig(cache_path="a")

    assert first == second
    assert {first: 1}[second] == 1
    assert first != LazyDiskCacheConfig(cache_path=Path("b"))


def test_config_survives_a_pickle_round_trip() -> None:
    config = LazyDiskCacheConfig(True, Path("/some/where"), False, True)

    assert pickle.loads(pickle.dumps(config)) == config


# LazyDiskCacheConfig(True, Path("cache/entry"), False, True) pickled (protocols 2 and 4) while the
# class was defined in lazy_disk_cache.lazy_disk_cache: the pickles name that module.
_PICKLES_NAMING_THE_ENTRY_MODULE = (
    b"\x80\x02clazy_disk_cache.lazy_disk_cache\nLazyDiskCacheConfig\nq\x00)\x81q\x01}q\x02(X\x0e\x00\x00\x00"
    b"enable_cachingq\x03\x88X\n\x00\x00\x00cache_pathq\x04cpathlib\nPosixPath\nq\x05X\x05\x00\x00\x00cacheq"
    b"\x06X\x05\x00\x00\x00entryq\x07\x86q\x08Rq\tX\x10\x00\x00\x00purge_disk_on_gcq\n\x89X\x14\x00\x00\x00"
    b"automatic_offloadingq\x0b\x88ub.",
    b"\x80\x04\x95\xba\x00\x00\x00\x00\x00\x00\x00\x8c\x1flazy_disk_cache.lazy_disk_cache\x94\x8c\x13"
    b"LazyDiskCacheConfig\x94\x93\x94)\x81\x94}\x94(\x8c\x0eenable_caching\x94\x88\x8c\ncache_path\x94\x8c"
    b"\x07pathlib\x94\x8c\tPosixPath\x94\x93\x94\x8c\x05cache\x94\x8c\x05entry\x94\x86\x94R\x94\x8c\x10"
    b"purge_disk_on_gc\x94\x89\x8c\x14automatic_offloading\x94\x88ub.",
)


@pytest.mark.parametrize("pickled", _PICKLES_NAMING_THE_ENTRY_MODULE, ids=["protocol-2", "protocol-4"])
def test_a_config_pickled_under_the_entry_module_path_still_loads(pickled: bytes) -> None:
    config = pickle.loads(pickled)

    assert type(config) is LazyDiskCacheConfig
    assert config == LazyDiskCacheConfig(True, Path("cache/entry"), False, True)


def test_the_config_types_are_one_object_wherever_they_are_imported_from() -> None:
    import lazy_disk_cache
    from lazy_disk_cache import config

    assert LazyDiskCacheConfig is config.LazyDiskCacheConfig is lazy_disk_cache.LazyDiskCacheConfig
    assert LazyDiskCacheKw is config.LazyDiskCacheKw is lazy_disk_cache.LazyDiskCacheKw


def test_as_kwargs_returns_a_plain_dict_with_all_four_keys() -> None:
    config = LazyDiskCacheConfig(enable_caching=True, cache_path=Path("p"))

    kwargs = config.as_kwargs()

    assert type(kwargs) is dict
    assert kwargs == {
        "enable_caching": True,
        "cache_path": Path("p"),
        "purge_disk_on_gc": True,
        "automatic_offloading": False,
    }


def test_from_kwargs_builds_from_a_mapping_and_ignores_extra_keys() -> None:
    settings: dict[str, Any] = {"automatic_offloading": "yes", "unrelated": 3}

    config = LazyDiskCacheConfig.from_kwargs(settings)  # type: ignore[arg-type]

    assert config == LazyDiskCacheConfig(automatic_offloading=True)


def test_as_kwargs_round_trips_through_from_kwargs() -> None:
    config = LazyDiskCacheConfig(True, Path("q"), False, True)

    assert LazyDiskCacheConfig.from_kwargs(config.as_kwargs()) == config


def test_updated_returns_a_revalidated_copy() -> None:
    config = LazyDiskCacheConfig()

    changed = config.updated(enable_caching="true", cache_path="c")  # type: ignore[arg-type]

    assert changed == LazyDiskCacheConfig(enable_caching=True, cache_path=Path("c"))
    assert config == LazyDiskCacheConfig()


def test_updated_with_a_misspelt_name_raises_type_error_naming_it_and_the_closest_setting() -> None:
    config = LazyDiskCacheConfig(enable_caching=True)

    with pytest.raises(TypeError, match=r"^updated\(\) got an unexpected keyword argument 'automatic_offload' "):
        config.updated(automatic_offload=True)  # type: ignore[call-arg]


def test_updated_with_a_bad_value_raises_validation_error() -> None:
    with pytest.raises(pydantic.ValidationError):
        LazyDiskCacheConfig().updated(purge_disk_on_gc="notabool")  # type: ignore[arg-type]


def test_kw_typed_dict_declares_the_four_optional_keys() -> None:
    assert set(LazyDiskCacheKw.__annotations__) == {
        "enable_caching",
        "cache_path",
        "purge_disk_on_gc",
        "automatic_offloading",
    }
    assert LazyDiskCacheKw.__total__ is False


def test_extend_cache_path_appends_one_segment(tmp_path: Path) -> None:
    config = LazyDiskCacheConfig(enable_caching=True, cache_path=tmp_path)

    extended = config.extend_cache_path("sub")

    assert extended == LazyDiskCacheConfig(enable_caching=True, cache_path=tmp_path / "sub")


def test_extend_cache_path_creates_nothing_on_disk(tmp_path: Path) -> None:
    LazyDiskCacheConfig(cache_path=tmp_path).extend_cache_path("sub")

    assert list(tmp_path.iterdir()) == []


def test_extend_cache_path_chains_for_several_levels(tmp_path: Path) -> None:
    config = LazyDiskCacheConfig(cache_path=tmp_path)

    assert config.extend_cache_path("b").extend_cache_path("c").cache_path == tmp_path / "b" / "c"


def test_extend_cache_path_on_none_logs_and_keeps_none(caplog: pytest.LogCaptureFixture) -> None:
    config = LazyDiskCacheConfig(enable_caching=True)

    with caplog.at_level(logging.INFO, logger=LOGGER):
        extended = config.extend_cache_path("sub")

    assert extended == config
    assert [(r.name, r.levelno, r.getMessage()) for r in caplog.records] == [
        (LOGGER, logging.INFO, "Cache path is None; cannot extend.")
    ]


@pytest.mark.parametrize("segment", ["b/c", "../x", "..", "", "a\\b", "CON", "bad.", "/abs"])
def test_extend_cache_path_refuses_illegal_segments(tmp_path: Path, segment: str) -> None:
    with pytest.raises(StoreKeyError, match="Invalid store key"):
        LazyDiskCacheConfig(cache_path=tmp_path).extend_cache_path(segment)


def test_extend_cache_path_checks_the_key_rule_even_when_cache_path_is_none() -> None:
    with pytest.raises(StoreKeyError, match="<unset>"):
        LazyDiskCacheConfig().extend_cache_path("../x")


@pytest.mark.parametrize("value", [5, None, b"sub", Path("sub")])
def test_extend_cache_path_refuses_non_str_with_validation_error(value: Any) -> None:
    with pytest.raises(pydantic.ValidationError):
        LazyDiskCacheConfig(cache_path=Path("/x")).extend_cache_path(value)


def test_extend_cache_path_refuses_a_symlink_leading_outside(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    os.symlink(outside, root / "escape")

    with pytest.raises(StoreContainmentError, match="resolves outside its cache directory"):
        LazyDiskCacheConfig(cache_path=root).extend_cache_path("escape")


def test_extend_cache_path_accepts_a_symlink_resolving_inside(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    os.symlink(tmp_path / "real", tmp_path / "alias")

    extended = LazyDiskCacheConfig(cache_path=tmp_path).extend_cache_path("alias")

    assert extended.cache_path == tmp_path / "alias"


def test_a_pickled_config_names_the_entry_module_path() -> None:
    pickled = pickle.dumps(LazyDiskCacheConfig(cache_path=Path("x")), protocol=4)

    assert b"lazy_disk_cache.lazy_disk_cache" in pickled
    assert b"lazy_disk_cache.config" not in pickled
    assert pickle.loads(pickled) == LazyDiskCacheConfig(cache_path=Path("x"))
