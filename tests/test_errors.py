"""The package exceptions: their hierarchy, their identity across modules and their messages."""

from __future__ import annotations

import pickle
import traceback
from pathlib import Path

import pytest

from lazy_disk_cache import errors, paths
from lazy_disk_cache.errors import (
    LazyDiskCacheWarning,
    StoreContainmentError,
    StoreKeyError,
    StorePurgeAliasedArtefactError,
    StorePurgeForeignArtefactError,
    StorePurgeIncompleteError,
    StorePurgeRefusedError,
)

PUBLIC_EXCEPTIONS = (
    StoreKeyError,
    StoreContainmentError,
    StorePurgeRefusedError,
    StorePurgeForeignArtefactError,
    StorePurgeAliasedArtefactError,
    StorePurgeIncompleteError,
)


def raise_non_str_key_error() -> StoreKeyError:
    with pytest.raises(StoreKeyError) as raised:
        paths.validate_store_key(42)
    return raised.value


# --- hierarchy ---------------------------------------------------------------------------------


def test_store_key_error_is_a_value_error() -> None:
    assert issubclass(StoreKeyError, ValueError)
    assert not issubclass(StoreKeyError, TypeError)


def test_containment_error_is_a_store_key_error() -> None:
    assert issubclass(StoreContainmentError, StoreKeyError)
    assert issubclass(StoreContainmentError, ValueError)


def test_non_str_key_error_is_a_distinct_subclass_of_store_key_error_and_type_error() -> None:
    error = raise_non_str_key_error()

    assert type(error) is errors._NonStrStoreKeyError
    assert type(error) is not StoreKeyError
    assert isinstance(error, StoreKeyError)
    assert isinstance(error, TypeError)
    assert not isinstance(error, StoreContainmentError)


def test_non_str_key_error_shows_the_public_name_in_tracebacks_and_reprs() -> None:
    error = raise_non_str_key_error()

    shown = "".join(traceback.format_exception(error))

    assert shown.splitlines()[-1].startswith("lazy_disk_cache.errors.StoreKeyError: Invalid store key 42: ")
    assert "_NonStr" not in shown
    assert repr(error).startswith("StoreKeyError('Invalid store key 42: ")
    assert (type(error).__name__, type(error).__qualname__) == ("StoreKeyError", "StoreKeyError")


def test_purge_refusals_are_runtime_errors_and_not_os_errors() -> None:
    assert issubclass(StorePurgeRefusedError, RuntimeError)
    assert issubclass(StorePurgeForeignArtefactError, StorePurgeRefusedError)
    assert issubclass(StorePurgeAliasedArtefactError, StorePurgeRefusedError)
    assert not issubclass(StorePurgeRefusedError, OSError)
    assert not issubclass(StorePurgeForeignArtefactError, StorePurgeAliasedArtefactError)
    assert not issubclass(StorePurgeAliasedArtefactError, StorePurgeForeignArtefactError)


def test_incomplete_purge_is_an_os_error_and_not_a_refusal() -> None:
    assert issubclass(StorePurgeIncompleteError, OSError)
    assert not issubclass(StorePurgeIncompleteError, StorePurgeRefusedError)
    assert not issubclass(StorePurgeIncompleteError, RuntimeError)


# --- identity across modules -------------------------------------------------------------------


def test_errors_module_exports_exactly_the_public_exceptions_and_the_warning() -> None:
    assert set(errors.__all__) == {cls.__name__ for cls in (*PUBLIC_EXCEPTIONS, LazyDiskCacheWarning)}
    assert all(getattr(errors, cls.__name__) is cls for cls in PUBLIC_EXCEPTIONS)


def test_the_package_warning_is_a_user_warning_exported_from_the_root() -> None:
    import lazy_disk_cache

    assert issubclass(LazyDiskCacheWarning, UserWarning)
    assert lazy_disk_cache.LazyDiskCacheWarning is LazyDiskCacheWarning
    assert "LazyDiskCacheWarning" in lazy_disk_cache.__all__


def test_paths_reexports_the_key_errors_as_the_same_objects() -> None:
    assert paths.StoreKeyError is errors.StoreKeyError
    assert paths.StoreContainmentError is errors.StoreContainmentError
    assert {"StoreKeyError", "StoreContainmentError"} <= set(paths.__all__)


def test_every_exception_is_defined_in_the_errors_module() -> None:
    defined_in = {cls.__name__: cls.__module__ for cls in (*PUBLIC_EXCEPTIONS, errors._NonStrStoreKeyError)}

    assert set(defined_in.values()) == {"lazy_disk_cache.errors"}


# --- messages ----------------------------------------------------------------------------------

RULE_SUMMARY = (
    "a store key must be a single path segment \u2014 no '/', '\\' or ':', not an absolute or "
    "drive-relative path, not '', '.', '..' or a reserved Win32 device name such as CON or COM1, "
    "free of control characters, and not ending in a space or a dot."
)


def test_key_error_message_names_key_directory_and_clause() -> None:
    error = StoreKeyError.for_clause("a/b", Path("/srv/cache"), paths.CLAUSE_SEPARATOR)

    assert str(error) == (
        f"Invalid store key 'a/b' for cache directory '/srv/cache': the key contains a path separator; {RULE_SUMMARY}"
    )


def test_key_error_message_says_unset_without_a_directory() -> None:
    error = StoreKeyError.for_clause("CON", None, paths.CLAUSE_RESERVED)

    assert str(error) == (
        f"Invalid store key 'CON' for cache directory <unset>: the key is empty or a reserved path name; {RULE_SUMMARY}"
    )


def test_non_str_key_error_message_names_the_type() -> None:
    error = raise_non_str_key_error()

    assert str(error) == (
        "Invalid store key 42: a store key must be a str, but got int. "
        "Convert it explicitly (for example with str()) before using it as a key."
    )


def test_containment_error_message_is_exact() -> None:
    error = StoreContainmentError.for_path(Path("/srv/cache/sub/k.npy"), "k", Path("/srv/cache"))

    assert str(error) == (
        "Store path '/srv/cache/sub/k.npy' for key 'k' resolves outside its cache directory '/srv/cache'."
    )


def test_foreign_process_refusal_starts_with_the_pinned_text_and_explains_the_remedy() -> None:
    error = StorePurgeRefusedError.for_foreign_process("tile", 1234, 5678)
    message = str(error)

    assert type(error) is StorePurgeRefusedError
    assert message.startswith(
        "Refusing to purge 'tile': this store was constructed by process 1234 and purge was called from process 5678. "
    )
    assert "purge()" in message
    assert message.count("1234") >= 2


def test_foreign_artefact_refusal_names_key_and_path_and_says_it_resolves_outside() -> None:
    error = StorePurgeForeignArtefactError.for_path("tile", Path("/srv/cache/tile.dat"))
    message = str(error)

    assert isinstance(error, StorePurgeRefusedError)
    assert message.startswith("Refusing to purge 'tile': '/srv/cache/tile.dat' resolves outside its cache directory")
    assert "Nothing was removed" in message


def test_aliased_artefact_refusal_names_key_link_and_target_and_suggests_bin() -> None:
    error = StorePurgeAliasedArtefactError.for_link("a", Path("/srv/cache/a.npy"), Path("/srv/cache/b.npy"))
    message = str(error)

    assert isinstance(error, StorePurgeRefusedError)
    assert message.startswith(
        "Refusing to purge 'a': '/srv/cache/a.npy' is a symbolic link to '/srv/cache/b.npy', which is named "
        "like a store artefact"
    )
    assert "'.bin'" in message
    assert "Nothing was removed" in message


def test_incomplete_purge_message_counts_and_lists_the_survivors() -> None:
    survivors = [Path("/srv/cache/k.npy"), Path("/srv/cache/k.dat")]

    error = StorePurgeIncompleteError.for_survivors("k", survivors)

    assert str(error).startswith(
        "Purge of 'k' was incomplete: 2 of 6 artefacts could not be unlinked and survive on disk \u2014 "
        "'/srv/cache/k.npy', '/srv/cache/k.dat'. "
    )
    assert error.survivors == tuple(survivors)
    assert error.errno is None


def test_incomplete_purge_accepts_str_survivors_and_keeps_them_as_paths() -> None:
    error = StorePurgeIncompleteError.for_survivors("k", ["/srv/cache/k.meta.json"])

    assert "1 of 6 artefacts" in str(error)
    assert error.survivors == (Path("/srv/cache/k.meta.json"),)


def test_incomplete_purge_built_directly_has_no_survivors() -> None:
    assert StorePurgeIncompleteError("custom").survivors == ()


def test_message_builders_return_the_subclass_they_are_called_on() -> None:
    class ProjectRefusalError(StorePurgeRefusedError):
        pass

    assert type(ProjectRefusalError.for_foreign_process("k", 1, 2)) is ProjectRefusalError


@pytest.mark.parametrize(
    "error",
    [
        StoreKeyError.for_clause("a/b", None, paths.CLAUSE_SEPARATOR),
        StoreContainmentError.for_path(Path("/d/x/k.npy"), "k", Path("/d")),
        StorePurgeRefusedError.for_foreign_process("k", 1, 2),
        StorePurgeForeignArtefactError.for_path("k", Path("/d/k.dat")),
        StorePurgeAliasedArtefactError.for_link("k", Path("/d/k.npy"), Path("/d/j.npy")),
        StorePurgeIncompleteError.for_survivors("k", [Path("/d/k.dat")]),
    ],
    ids=lambda error: type(error).__name__,
)
def test_exceptions_survive_pickling_with_type_and_message(error: Exception) -> None:
    revived = pickle.loads(pickle.dumps(error))

    assert type(revived) is type(error)
    assert str(revived) == str(error)
    assert getattr(revived, "survivors", None) == getattr(error, "survivors", None)


def test_non_str_key_error_survives_pickling_as_both_types() -> None:
    error = raise_non_str_key_error()
    error.add_note("while checking a key")

    revived = pickle.loads(pickle.dumps(error))

    assert type(revived) is type(error)
    assert isinstance(revived, StoreKeyError)
    assert isinstance(revived, TypeError)
    assert str(revived) == str(error)
    assert revived.__notes__ == ["while checking a key"]
