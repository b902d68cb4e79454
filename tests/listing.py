"""What a test sees in a store directory: every name but the directory's key lock file."""

import os
from pathlib import Path

from lazy_disk_cache.paths import LOCK_FILE_NAME

__all__ = ["artefacts"]


def artefacts(directory: Path | str) -> list[str]:
    """The sorted names in ``directory``, without the key lock file (protocol state, not an artefact)."""
    return sorted(name for name in os.listdir(directory) if name != LOCK_FILE_NAME)
