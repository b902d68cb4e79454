"""Shared fixtures for the test suite."""

from collections.abc import Iterator
from pathlib import Path

import pytest

from lazy_disk_cache import _rust


@pytest.fixture
def cache_dir(tmp_path: Path) -> _rust.CacheDir:
    """An open native cache directory in a fresh temporary directory."""
    return _rust.CacheDir.open(tmp_path)


@pytest.fixture
def clean_faults() -> Iterator[None]:
    """Resets the native fault seam (faults and counters) before and after the test."""
    _rust._clear_faults()
    yield
    _rust._clear_faults()
