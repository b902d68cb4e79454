"""The store-key rule, the path builders and the containment checks of ``lazy_disk_cache.paths``."""

from __future__ import annotations

import builtins
import os
import pickle
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import NoReturn, cast

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hostile_keys import (
    CONTROL_CODE_POINTS,
    HOSTILE_KEYS,
    HOSTILE_STR_KEYS,
    LEGACY_KEYS,
    LEGAL_KEYS,
    NON_STR_KEYS,
    NOT_A_STR,
    HostileKey,
    key_id,
)
from lazy_disk_cache import errors, paths
from lazy_disk_cache.paths import (
    CLAUSE_ABSOLUTE,
    CLAUSE_CONTROL,
    CLAUSE_ENCODING,
    CLAUSE_LENGTH,
    CLAUSE_RESERVED,
    CLAUSE_SEPARATOR,
    CLAUSE_TRAILING,
    STORE_PATH_BUILDERS,
    StoreContainmentError,
    StoreKey,
    StoreKeyError,
    artefact_suffix,
    checked_store_key,
    ensure_contained,
    ensure_write_contained,
    get_legacy_pickle_path,
    get_memmap_path,
    get_memmap_tmp_path,
    get_meta_path,
    get_meta_tmp_path,
    get_npy_path,
    get_npy_tmp_path,
    is_legacy_store_key,
    is_our_temp_name,
    is_readable_store_key,
    is_valid_store_key,
    key_from_npy_name,
    legacy_key_from_npy_name,
    readable_store_key,
    validate_store_key,
    violated_clause,
)

RULE_SUMMARY = (
    "a store key must be a single path segment \u2014 no '/', '\\' or ':', not an absolute or "
    "drive-relative path, not '', '.', '..' or a reserved Win32 device name such as CON or COM1, "
    "free of control characters, and not ending in a space or a dot."
)

ALL_CLAUSES = (
    CLAUSE_RESERVED,
    CLAUSE_CONTROL,
    CLAUSE_ABSOLUTE,
    CLAUSE_SEPARATOR,
    CLAUSE_TRAILING,
    CLAUSE_ENCODING,
    CLAUSE_LENGTH,
)

Builder = Callable[[str | os.PathLike[str], str], Path]

BUILDER_SUFFIXES: tuple[tuple[Builder, str], ...] = (
    (get_npy_path, ".npy"),
    (get_meta_path, ".meta.json"),
    (get_legacy_pickle_path, ".pkl"),
    (get_npy_tmp_path, ".npy.tmp"),
    (get_meta_tmp_path, ".meta.json.tmp"),
    (get_memmap_path, ".dat"),
    (get_memmap_tmp_path, ".dat.tmp"),
)


def expected_message(key: str, clause: str, directory: str = "<unset>") -> str:
    return f"Invalid store key {key!r} for cache directory {directory}: the key {clause}; {RULE_SUMMARY}"


def expected_non_str_message(key: object) -> str:
    return (
        f"Invalid store key {key!r}: a store key must be a str, but got {type(key).__name__}. "
        "Convert it explicitly (for example with str()) before using it as a key."
    )


class FilesystemTouchedError(BaseException):
    """Raised by the patched filesystem calls; a BaseException so no ``except Exception`` hides it."""


@contextmanager
def filesystem_forbidden() -> Iterator[None]:
    """Make every filesystem entry point raise while the block runs.

    A context manager rather than a fixture, so the patches are gone before pytest reads source
    files to report a failure.
    """

    def touched(*args: object, **kwargs: object) -> NoReturn:
        raise FilesystemTouchedError(args)

    with pytest.MonkeyPatch.context() as patch:
        for name in ("stat", "lstat", "open", "listdir", "scandir", "readlink", "getcwd", "access"):
            patch.setattr(os, name, touched)
        for name in ("realpath", "islink", "exists", "abspath"):
            patch.setattr(os.path, name, touched)
        patch.setattr(builtins, "open", touched)
        for name in ("resolve", "stat", "lstat", "exists", "is_symlink", "absolute"):
            patch.setattr(Path, name, touched)
        yield


# --- constants ---------------------------------------------------------------------------------


def test_suffix_constants_have_the_documented_values() -> None:
    assert (paths.NPY_SUFFIX, paths.META_SUFFIX, paths.LEGACY_PICKLE_SUFFIX) == (".npy", ".meta.json", ".pkl")
    assert (paths.MEMMAP_SUFFIX, paths.TMP_SUFFIX) == (".dat", ".tmp")


def test_clause_texts_are_exact() -> None:
    assert CLAUSE_RESERVED == "is empty or a reserved path name"
    assert CLAUSE_CONTROL == "contains a control character"
    assert CLAUSE_ABSOLUTE == "is an absolute or drive-relative path"
    assert CLAUSE_SEPARATOR == "contains a path separator"
    assert CLAUSE_TRAILING == "ends in a space or a dot"
    assert CLAUSE_ENCODING == "is not encodable as a file name"
    assert CLAUSE_LENGTH == "is too long for a file name"


def test_max_key_length_leaves_room_for_the_longest_suffix_within_name_max() -> None:
    assert paths.MAX_KEY_UTF8_BYTES == 241
    assert paths.MAX_KEY_UTF8_BYTES + len(".meta.json.tmp") == 255


def test_module_exports_the_public_names() -> None:
    exported = set(paths.__all__)

    missing = [name for name in exported if not hasattr(paths, name)]

    assert missing == []
    assert {"validate_store_key", "is_valid_store_key", "STORE_PATH_BUILDERS", "ensure_write_contained"} <= exported
    assert {"StoreKeyError", "StoreContainmentError"} <= exported


# --- the shared key tables ---------------------------------------------------------------------


def test_hostile_table_is_large_and_exercises_every_clause() -> None:
    labels = [hostile.label for hostile in HOSTILE_KEYS]
    str_keys = [hostile.key for hostile in HOSTILE_STR_KEYS if isinstance(hostile.key, str)]

    covered_clauses = {hostile.expected for hostile in HOSTILE_STR_KEYS}
    uncovered_controls = [code for code in CONTROL_CODE_POINTS if not any(chr(code) in key for key in str_keys)]

    assert len(HOSTILE_KEYS) >= 70
    assert len(set(labels)) == len(labels)
    assert covered_clauses == set(ALL_CLAUSES)
    assert uncovered_controls == []
    assert len(NON_STR_KEYS) >= 8
    assert len(set(LEGAL_KEYS)) == len(LEGAL_KEYS)


# --- the key rule ------------------------------------------------------------------------------


@pytest.mark.parametrize("hostile", HOSTILE_STR_KEYS, ids=lambda hostile: hostile.label)
def test_hostile_str_key_is_refused_naming_its_first_clause(hostile: HostileKey) -> None:
    key = cast(str, hostile.key)

    with pytest.raises(StoreKeyError) as raised:
        validate_store_key(key)

    assert str(raised.value) == expected_message(key, hostile.expected)
    assert not isinstance(raised.value, TypeError)
    assert is_valid_store_key(key) is False


@pytest.mark.parametrize("hostile", NON_STR_KEYS, ids=lambda hostile: hostile.label)
def test_non_str_key_is_refused_as_both_store_key_error_and_type_error(hostile: HostileKey) -> None:
    with pytest.raises(StoreKeyError) as raised:
        validate_store_key(hostile.key)

    assert isinstance(raised.value, TypeError)
    assert isinstance(raised.value, ValueError)
    assert type(raised.value) is not StoreKeyError
    assert str(raised.value) == expected_non_str_message(hostile.key)
    assert is_valid_store_key(hostile.key) is False


@pytest.mark.parametrize("key", LEGAL_KEYS, ids=key_id)
def test_legal_key_is_accepted(key: str) -> None:
    validate_store_key(key, Path("/srv/cache"))

    assert is_valid_store_key(key) is True


def test_non_str_key_error_is_caught_by_except_type_error() -> None:
    with pytest.raises(TypeError, match="must be a str, but got bytes"):
        validate_store_key(b"key")


def test_non_str_key_error_is_caught_by_except_value_error() -> None:
    with pytest.raises(ValueError, match="must be a str, but got PosixPath"):
        validate_store_key(Path("key"))


def test_non_str_message_does_not_name_the_cache_directory() -> None:
    with pytest.raises(StoreKeyError) as raised:
        validate_store_key(7, Path("/srv/cache"))

    assert str(raised.value) == expected_non_str_message(7)


def test_non_str_key_with_a_failing_repr_still_gets_the_key_error() -> None:
    class Unprintable:
        def __repr__(self) -> str:
            raise RuntimeError("no repr")

    with pytest.raises(TypeError, match="must be a str, but got Unprintable"):
        validate_store_key(Unprintable())


def test_message_says_unset_when_no_cache_directory_is_given() -> None:
    with pytest.raises(StoreKeyError) as raised:
        validate_store_key("a/b")

    assert str(raised.value) == expected_message("a/b", CLAUSE_SEPARATOR, "<unset>")


@pytest.mark.parametrize(
    ("cache_dir", "shown"),
    [
        (Path("/srv/cache"), "'/srv/cache'"),
        ("relative/dir", "'relative/dir'"),
        (Path("/srv/it's here"), '"/srv/it\'s here"'),
    ],
    ids=["path", "str", "quote-in-name"],
)
def test_message_names_the_cache_directory_as_repr_of_its_str(cache_dir: str | Path, shown: str) -> None:
    with pytest.raises(StoreKeyError) as raised:
        validate_store_key("..", cache_dir)

    assert str(raised.value) == expected_message("..", CLAUSE_RESERVED, shown)


@pytest.mark.parametrize(
    ("key", "first_clause"),
    [
        ("\x00/etc", CLAUSE_CONTROL),
        ("C:\x01", CLAUSE_CONTROL),
        ("\x00" * 300, CLAUSE_CONTROL),
        ("/CON", CLAUSE_ABSOLUTE),
        ("a:b/c", CLAUSE_ABSOLUTE),
        ("/" + "a" * 300, CLAUSE_ABSOLUTE),
        ("a/b.", CLAUSE_SEPARATOR),
        ("a\\ ", CLAUSE_SEPARATOR),
        ("CON.", CLAUSE_RESERVED),
        ("CON .txt.", CLAUSE_RESERVED),
        ("a\ud800.", CLAUSE_TRAILING),
        ("a" * 300 + " ", CLAUSE_TRAILING),
        ("\ud800" * 300, CLAUSE_ENCODING),
    ],
    ids=key_id,
)
def test_the_first_clause_in_rule_order_wins(key: str, first_clause: str) -> None:
    with pytest.raises(StoreKeyError) as raised:
        validate_store_key(key)

    assert str(raised.value) == expected_message(key, first_clause)


@pytest.mark.parametrize(
    ("key", "clause"),
    [
        ("CON .txt", CLAUSE_RESERVED),
        ("CON  .txt", CLAUSE_RESERVED),
        ("CON .", CLAUSE_TRAILING),
        ("con .", CLAUSE_TRAILING),
        ("com1 ", CLAUSE_TRAILING),
        ("CON.", CLAUSE_RESERVED),
        ("COM\u00b9", CLAUSE_RESERVED),
        ("lpt\u00b3.bin", CLAUSE_RESERVED),
    ],
    ids=key_id,
)
def test_device_stem_drops_spaces_only_before_the_keys_trailing_run(key: str, clause: str) -> None:
    with pytest.raises(StoreKeyError) as raised:
        validate_store_key(key)

    assert str(raised.value) == expected_message(key, clause)


@pytest.mark.parametrize("key", ["\uff23\uff2f\uff2e", "COM\u2074", "COM10", " CON", "CONX.txt"], ids=key_id)
def test_device_rule_matches_only_the_listed_names(key: str) -> None:
    assert is_valid_store_key(key) is True


def test_str_subclass_is_judged_by_its_characters_not_its_overrides(tmp_path: Path) -> None:
    class Lying(str):
        def rstrip(self, chars: str | None = None) -> str:
            return str(self)

        def __add__(self, other: str) -> str:
            return "elsewhere"

    validate_store_key(Lying("fine"))
    with pytest.raises(StoreKeyError, match=CLAUSE_TRAILING):
        validate_store_key(Lying("bad."))
    assert get_npy_path(tmp_path, Lying("fine")) == tmp_path / "fine.npy"


def test_validation_performs_no_filesystem_access() -> None:
    outcomes: dict[str, bool] = {}
    refused: list[str] = []

    with filesystem_forbidden():
        for key in LEGAL_KEYS:
            validate_store_key(key, Path("/srv/cache"))
            outcomes[key] = is_valid_store_key(key)
        for hostile in HOSTILE_KEYS:
            try:
                validate_store_key(hostile.key, Path("/srv/cache"))
            except StoreKeyError:
                refused.append(hostile.label)

    assert all(outcomes.values())
    assert refused == [hostile.label for hostile in HOSTILE_KEYS]


# --- builders ----------------------------------------------------------------------------------


def test_store_path_builders_maps_the_seven_names_to_the_builders() -> None:
    assert dict(STORE_PATH_BUILDERS) == {
        "npy": get_npy_path,
        "meta": get_meta_path,
        "legacy_pickle": get_legacy_pickle_path,
        "npy_tmp": get_npy_tmp_path,
        "meta_tmp": get_meta_tmp_path,
        "memmap": get_memmap_path,
        "memmap_tmp": get_memmap_tmp_path,
    }


def test_store_path_builders_cannot_be_rebound() -> None:
    with pytest.raises(TypeError):
        STORE_PATH_BUILDERS["npy"] = get_meta_path  # type: ignore[index]


@pytest.mark.parametrize(("builder", "suffix"), BUILDER_SUFFIXES, ids=[case[0].__name__ for case in BUILDER_SUFFIXES])
def test_builder_appends_its_suffix_by_string_concatenation(tmp_path: Path, builder: Builder, suffix: str) -> None:
    built = builder(tmp_path, "a.b")

    assert built == tmp_path / f"a.b{suffix}"
    assert built.parent == tmp_path


@pytest.mark.parametrize(
    ("builder", "key", "name"),
    [
        (get_npy_path, "a.npy", "a.npy.npy"),
        (get_memmap_path, "x.tar.gz", "x.tar.gz.dat"),
        (get_meta_path, "t.meta", "t.meta.meta.json"),
        (get_npy_path, ".hidden", ".hidden.npy"),
    ],
    ids=key_id,
)
def test_builder_never_replaces_an_existing_suffix(tmp_path: Path, builder: Builder, key: str, name: str) -> None:
    assert builder(tmp_path, key).name == name


def test_builders_accept_a_str_cache_directory(tmp_path: Path) -> None:
    assert get_npy_path(str(tmp_path), "k") == tmp_path / "k.npy"


def test_longest_built_name_of_a_241_byte_key_fits_name_max(tmp_path: Path) -> None:
    key = "\u20ac" * 80 + "a"

    name = get_meta_tmp_path(tmp_path, key).name

    assert len(name.encode("utf-8")) == 255


@pytest.mark.parametrize(("builder", "suffix"), BUILDER_SUFFIXES, ids=[case[0].__name__ for case in BUILDER_SUFFIXES])
@pytest.mark.parametrize("key", ["../x", "/etc/passwd", "CON", "a" * 242, None], ids=key_id)
def test_builder_refuses_an_illegal_key_before_touching_the_filesystem(
    builder: Builder, suffix: str, key: object
) -> None:
    with filesystem_forbidden(), pytest.raises(StoreKeyError) as raised:
        builder(Path("/srv/cache"), cast(str, key))

    assert not isinstance(raised.value, StoreContainmentError)


def test_builder_message_names_the_cache_directory() -> None:
    with pytest.raises(StoreKeyError) as raised:
        get_npy_path(Path("/srv/cache"), "a/b")

    assert str(raised.value) == expected_message("a/b", CLAUSE_SEPARATOR, "'/srv/cache'")


def test_builder_output_is_contained_by_construction_without_touching_the_filesystem() -> None:
    # A validated key is one segment, so the path sits directly in the cache directory; the
    # real defence against a re-pointed root is the core's directory descriptor, not a lookup.
    with filesystem_forbidden():
        paths = [builder(Path("/srv/cache"), "k") for builder in STORE_PATH_BUILDERS.values()]

    assert all(path.parent == Path("/srv/cache") for path in paths)


# --- containment -------------------------------------------------------------------------------


def containment_message(candidate: Path, key: str, cache_dir: Path) -> str:
    return f"Store path {str(candidate)!r} for key {key!r} resolves outside its cache directory {str(cache_dir)!r}."


@pytest.fixture
def cache_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "cache"
    directory.mkdir()
    return directory


@pytest.fixture
def outside_file(tmp_path: Path) -> Path:
    target = tmp_path / "outside.bin"
    target.write_bytes(b"precious")
    return target


def test_symlinked_cache_root_builds_paths_under_the_link(tmp_path: Path, cache_dir: Path) -> None:
    link = tmp_path / "link-to-cache"
    link.symlink_to(cache_dir, target_is_directory=True)

    built = get_memmap_path(link, "k")
    ensure_write_contained(built, link, "k")

    assert built == link / "k.dat"


def test_in_directory_symlink_at_the_final_component_is_contained(cache_dir: Path) -> None:
    (cache_dir / "payload.bin").write_bytes(b"data")
    adopted = cache_dir / "k.npy"
    adopted.symlink_to("payload.bin")

    ensure_contained(adopted, cache_dir, "k")
    ensure_write_contained(adopted, cache_dir, "k")

    assert get_npy_path(cache_dir, "k") == adopted


def test_final_component_symlink_leading_outside_passes_plain_containment(cache_dir: Path, outside_file: Path) -> None:
    link = cache_dir / "k.dat"
    link.symlink_to(outside_file)

    ensure_contained(link, cache_dir, "k")

    assert get_memmap_path(cache_dir, "k") == link


def test_write_containment_refuses_a_final_component_symlink_leading_outside(
    cache_dir: Path, outside_file: Path
) -> None:
    link = cache_dir / "k.dat"
    link.symlink_to(outside_file)

    with pytest.raises(StoreContainmentError) as raised:
        ensure_write_contained(link, cache_dir, "k")

    assert str(raised.value) == containment_message(link, "k", cache_dir)
    assert outside_file.read_bytes() == b"precious"


def test_sibling_directory_sharing_the_name_prefix_is_outside(tmp_path: Path, cache_dir: Path) -> None:
    sibling = tmp_path / "cache-other"
    sibling.mkdir()
    link = cache_dir / "k.dat"
    link.symlink_to(sibling / "k.dat")

    with pytest.raises(StoreContainmentError, match="resolves outside its cache directory"):
        ensure_write_contained(link, cache_dir, "k")
    with pytest.raises(StoreContainmentError, match="resolves outside its cache directory"):
        ensure_contained(cache_dir / ".." / "cache-other" / "k.npy", cache_dir, "k")


def test_write_containment_refuses_a_dangling_symlink_leading_outside(tmp_path: Path, cache_dir: Path) -> None:
    link = cache_dir / "k.dat.tmp"
    link.symlink_to(tmp_path / "not-yet-there")

    with pytest.raises(StoreContainmentError, match="resolves outside its cache directory"):
        ensure_write_contained(link, cache_dir, "k")


def test_write_containment_refuses_a_symlink_to_the_cache_directory_itself(cache_dir: Path) -> None:
    link = cache_dir / "k.dat"
    link.symlink_to(".", target_is_directory=True)

    with pytest.raises(StoreContainmentError, match="resolves outside its cache directory"):
        ensure_write_contained(link, cache_dir, "k")


def test_write_containment_accepts_a_symlink_into_a_subdirectory(cache_dir: Path) -> None:
    (cache_dir / "sub").mkdir()
    link = cache_dir / "k.dat"
    link.symlink_to(Path("sub") / "real.dat")

    ensure_write_contained(link, cache_dir, "k")

    assert link.is_symlink()


def test_write_containment_judges_a_symlink_loop_without_crashing(cache_dir: Path) -> None:
    loop = cache_dir / "k.dat"
    loop.symlink_to("k.dat")

    ensure_write_contained(loop, cache_dir, "k")

    assert loop.is_symlink()


@pytest.mark.parametrize("check", [ensure_contained, ensure_write_contained], ids=lambda check: check.__name__)
def test_parent_symlink_escaping_the_cache_directory_is_refused(
    tmp_path: Path, cache_dir: Path, check: Callable[[Path, Path, str], None]
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (cache_dir / "sub").symlink_to(elsewhere, target_is_directory=True)
    candidate = cache_dir / "sub" / "k.npy"

    with pytest.raises(StoreContainmentError) as raised:
        check(candidate, cache_dir, "k")

    assert str(raised.value) == containment_message(candidate, "k", cache_dir)


@pytest.mark.parametrize("check", [ensure_contained, ensure_write_contained], ids=lambda check: check.__name__)
@pytest.mark.parametrize("relative", ["../k.npy", "sub/../../k.npy", "sub/..", "."], ids=key_id)
def test_dotdot_leaving_the_cache_directory_is_refused(
    cache_dir: Path, check: Callable[[Path, Path, str], None], relative: str
) -> None:
    (cache_dir / "sub").mkdir()

    with pytest.raises(StoreContainmentError, match="resolves outside its cache directory"):
        check(cache_dir / relative, cache_dir, "k")


def test_dotdot_that_returns_inside_is_contained(cache_dir: Path) -> None:
    (cache_dir / "sub").mkdir()

    ensure_write_contained(cache_dir / "sub" / ".." / "k.npy", cache_dir, "k")

    assert (cache_dir / "sub").is_dir()


def test_containment_works_with_a_relative_cache_directory(
    tmp_path: Path, cache_dir: Path, outside_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (cache_dir / "k.dat").symlink_to(outside_file)

    built = get_memmap_path("cache", "k")

    assert built == Path("cache") / "k.dat"
    with pytest.raises(StoreContainmentError):
        ensure_write_contained(built, "cache", "k")


def test_containment_checks_write_nothing(cache_dir: Path, outside_file: Path) -> None:
    (cache_dir / "k.npy").symlink_to(outside_file)
    before = sorted(os.listdir(cache_dir))

    for builder, _ in BUILDER_SUFFIXES:
        ensure_contained(builder(cache_dir, "k"), cache_dir, "k")
    with pytest.raises(StoreContainmentError):
        ensure_write_contained(cache_dir / "k.npy", cache_dir, "k")

    assert sorted(os.listdir(cache_dir)) == before
    assert outside_file.read_bytes() == b"precious"


# --- name parsers ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "suffix"),
    [
        ("k.npy", ".npy"),
        ("k.meta.json", ".meta.json"),
        ("k.pkl", ".pkl"),
        ("k.dat", ".dat"),
        ("k.npy.tmp", ".npy.tmp"),
        ("k.meta.json.tmp", ".meta.json.tmp"),
        ("k.pkl.tmp", ".pkl.tmp"),
        ("k.dat.tmp", ".dat.tmp"),
        ("a.dat.npy", ".npy"),
        (".npy", ".npy"),
        ("k.json", None),
        ("k.tmp", None),
        ("k.bin", None),
        ("k.NPY", None),
        ("k.npy.bak", None),
        ("k.meta", None),
    ],
    ids=key_id,
)
def test_artefact_suffix_is_the_longest_matching_store_suffix(name: str, suffix: str | None) -> None:
    assert artefact_suffix(name) == suffix


@pytest.mark.parametrize(
    ("name", "key"),
    [
        ("k.npy", "k"),
        ("a.b.npy", "a.b"),
        ("a.npy.npy", "a.npy"),
        (".hidden.npy", ".hidden"),
        ("a" * 241 + ".npy", "a" * 241),
        (".npy", None),
        ("k.npz", None),
        ("k.NPY", None),
        ("k.npy.tmp", None),
        ("k.meta.json", None),
        ("CON.npy", None),
        ("a .npy", None),
        ("x..npy", None),
        ("a" * 242 + ".npy", None),
        ("\udc80.npy", None),
    ],
    ids=key_id,
)
def test_key_from_npy_name_strips_only_the_final_suffix_and_requires_a_legal_key(name: str, key: str | None) -> None:
    assert key_from_npy_name(name) == key


# --- legacy keys -------------------------------------------------------------------------------


@pytest.mark.parametrize("hostile", HOSTILE_STR_KEYS, ids=[hostile.label for hostile in HOSTILE_STR_KEYS])
def test_a_refused_key_is_legacy_exactly_when_it_breaks_only_portability_clauses(hostile: HostileKey) -> None:
    assert is_legacy_store_key(hostile.key) is hostile.legacy
    assert is_readable_store_key(hostile.key) is hostile.legacy
    assert violated_clause(cast(str, hostile.key)) == hostile.expected


@pytest.mark.parametrize("key", LEGAL_KEYS, ids=key_id)
def test_a_legal_key_is_readable_and_not_legacy(key: str) -> None:
    assert (is_legacy_store_key(key), is_readable_store_key(key), violated_clause(key)) == (False, True, None)


@pytest.mark.parametrize("hostile", NON_STR_KEYS, ids=[hostile.label for hostile in NON_STR_KEYS])
def test_a_non_str_key_is_neither_legacy_nor_readable(hostile: HostileKey) -> None:
    assert (is_legacy_store_key(hostile.key), is_readable_store_key(hostile.key)) == (False, False)


@pytest.mark.parametrize("hostile", LEGACY_KEYS, ids=[hostile.label for hostile in LEGACY_KEYS])
def test_readable_store_key_admits_a_legacy_key_that_the_builders_then_place_in_the_directory(
    tmp_path: Path, hostile: HostileKey
) -> None:
    key = cast(str, hostile.key)

    readable = readable_store_key(key, tmp_path)

    assert (type(readable), str.__str__(readable)) == (StoreKey, key)
    assert get_npy_path(tmp_path, readable) == tmp_path / (key + ".npy")
    with pytest.raises(StoreKeyError, match=hostile.expected):
        get_npy_path(tmp_path, key)
    with pytest.raises(StoreKeyError, match=hostile.expected):
        checked_store_key(key, tmp_path)


@pytest.mark.parametrize(
    "hostile", [hostile for hostile in HOSTILE_KEYS if not hostile.legacy], ids=lambda hostile: hostile.label
)
def test_readable_store_key_refuses_every_other_key_like_the_key_rule(hostile: HostileKey) -> None:
    with pytest.raises(StoreKeyError) as caught:
        readable_store_key(hostile.key, "/srv/cache")

    assert hostile.expected in str(caught.value)
    assert isinstance(caught.value, TypeError) is (hostile.expected == NOT_A_STR)


@pytest.mark.parametrize(
    ("name", "key"),
    [
        ("CON.npy", "CON"),
        ("tile:0_0.npy", "tile:0_0"),
        ("nul.las.npy", "nul.las"),
        ("x..npy", "x."),
        ("a .npy", "a "),
        ("....npy", "..."),
        ("a" * 245 + ".npy", "a" * 245),
        ("k.npy", None),
        ("..npy", None),
        ("...npy", None),
        ("a\\b.npy", None),
        ("k\x01.npy", None),
        ("a" * 246 + ".npy", None),
        ("\udc80:.npy", None),
        ("CON.npz", None),
    ],
    ids=key_id,
)
def test_legacy_key_from_npy_name_finds_only_legacy_keys(name: str, key: str | None) -> None:
    assert legacy_key_from_npy_name(name) == key


@pytest.mark.parametrize(
    ("name", "ours"),
    [
        ("k.npy.tmp", True),
        ("k.meta.json.tmp", True),
        ("k.dat.tmp", True),
        ("a.b.dat.tmp", True),
        (".hidden.npy.tmp", True),
        ("k.pkl.tmp", False),
        ("k.tmp", False),
        ("k.json.tmp", False),
        (".npy.tmp", False),
        ("CON.npy.tmp", False),
        ("a .dat.tmp", False),
        ("k.npy", False),
        ("k.dat", False),
        ("k.npy.tmp.bak", False),
        ("a" * 242 + ".npy.tmp", False),
        ("\udc80.dat.tmp", False),
    ],
    ids=key_id,
)
def test_is_our_temp_name_accepts_only_legal_keys_with_a_temp_suffix(name: str, ours: bool) -> None:
    assert is_our_temp_name(name) is ours


# --- properties --------------------------------------------------------------------------------

_TRICKY_CHARACTERS = st.sampled_from(
    [*"./\\: \t\x00\x7f$CONULPRTXAIcom123\u00b9\u00b2\u00b3\u00e9\u20ac\ud800\udc80", "\U0001f600"]
)
_ANY_CHARACTER = st.characters(exclude_categories=())
KEYS = st.one_of(
    st.text(alphabet=st.one_of(_TRICKY_CHARACTERS, _ANY_CHARACTER), max_size=12),
    st.text(alphabet=st.sampled_from(["a", "\u00e9", "\u20ac", "\U0001f600", "."]), min_size=55, max_size=250),
)


@pytest.fixture(scope="module")
def shared_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache")


@given(key=KEYS)
def test_is_valid_store_key_agrees_with_validate_store_key(key: str) -> None:
    try:
        validate_store_key(key)
    except StoreKeyError:
        accepted = False
    else:
        accepted = True

    assert is_valid_store_key(key) is accepted


@given(key=KEYS)
def test_refusal_message_names_exactly_one_clause(key: str) -> None:
    try:
        validate_store_key(key)
    except StoreKeyError as error:
        message = str(error)
    else:
        return

    matching = [clause for clause in ALL_CLAUSES if message == expected_message(key, clause)]
    assert len(matching) == 1, message


@given(key=KEYS)
def test_accepted_keys_meet_every_condition_of_the_rule(key: str) -> None:
    if not is_valid_store_key(key):
        return

    assert key not in {"", ".", ".."}
    assert not any(character in key for character in "/\\:")
    assert not any(ord(character) < 0x20 or ord(character) == 0x7F for character in key)
    assert not key.endswith((" ", "."))
    assert len(key.encode("utf-8")) <= 241


@given(key=KEYS)
def test_path_syntax_clauses_follow_the_literal_pure_path_conditions(key: str) -> None:
    if key in {"", ".", ".."} or any(ord(character) < 0x20 or ord(character) == 0x7F for character in key):
        return
    posix, windows = PurePosixPath(key), PureWindowsPath(key)
    absolute = bool(posix.anchor or windows.anchor or windows.drive) or ":" in key
    separated = "/" in key or "\\" in key or len(posix.parts) != 1 or len(windows.parts) != 1

    try:
        validate_store_key(key)
    except StoreKeyError as error:
        message = str(error)
    else:
        message = ""

    if absolute:
        assert message == expected_message(key, CLAUSE_ABSOLUTE)
    elif separated:
        assert message == expected_message(key, CLAUSE_SEPARATOR)
    else:
        assert CLAUSE_ABSOLUTE not in message
        assert CLAUSE_SEPARATOR not in message


@settings(deadline=None)
@given(key=KEYS)
def test_every_valid_key_builds_paths_directly_inside_the_cache_directory(shared_cache_dir: Path, key: str) -> None:
    if not is_valid_store_key(key):
        return

    built = {builder(shared_cache_dir, key): suffix for builder, suffix in BUILDER_SUFFIXES}

    assert all(path.parent == shared_cache_dir for path in built)
    assert all(path.name == key + suffix for path, suffix in built.items())


def test_paths_reexports_the_exception_classes_of_errors() -> None:
    assert paths.StoreKeyError is errors.StoreKeyError
    assert paths.StoreContainmentError is errors.StoreContainmentError


# -- checked keys --------------------------------------------------------------------------


@pytest.mark.parametrize("hostile", HOSTILE_KEYS, ids=lambda hostile: key_id(hostile.key))
def test_checked_store_key_refuses_what_validate_store_key_refuses(hostile: HostileKey) -> None:
    with pytest.raises(StoreKeyError) as expected:
        validate_store_key(hostile.key, Path("/srv/cache"))

    with pytest.raises(type(expected.value)) as raised:
        checked_store_key(hostile.key, Path("/srv/cache"))

    assert str(raised.value) == str(expected.value)


def test_checked_store_key_keeps_the_exact_characters_of_a_str_subclass() -> None:
    class Lying(str):
        def __str__(self) -> str:
            return "../elsewhere"

    checked = checked_store_key(Lying("fine"))

    assert type(checked) is StoreKey
    assert str.__str__(checked) == "fine"
    assert checked + ".npy" == "fine.npy"


def test_a_checked_key_is_taken_as_checked(judged_keys: list[str]) -> None:
    checked = checked_store_key("k")

    assert checked_store_key(checked) is checked
    assert get_npy_path(Path("/srv/cache"), checked) == Path("/srv/cache/k.npy")
    assert judged_keys == ["k"], "judged once, where it entered"


def test_a_store_key_built_around_the_rule_still_cannot_leave_the_directory(tmp_path: Path) -> None:
    with pytest.raises(StoreContainmentError):
        get_npy_path(tmp_path, StoreKey("../escaped"))


def test_a_store_key_pickles_as_a_plain_str() -> None:
    revived = pickle.loads(pickle.dumps(checked_store_key("k")))

    assert type(revived) is str
    assert revived == "k"
