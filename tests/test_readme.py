"""The README's worked examples run as printed and leave the files they describe."""

import re
import subprocess
import sys
from pathlib import Path

import numpy as np

README = Path(__file__).resolve().parent.parent / "README.md"


def python_blocks(heading: str) -> list[str]:
    """The ```python blocks of the README section under ``## <heading>``."""
    text = README.read_text(encoding="utf-8")
    section = text.split(f"\n## {heading}\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, flags=re.DOTALL)


def test_the_larger_than_ram_example_runs_and_writes_in_place_only_after_the_first_offload(tmp_path: Path) -> None:
    blocks = python_blocks("Working with data larger than RAM")
    assert len(blocks) == 1

    subprocess.run([sys.executable, "-c", blocks[0]], cwd=tmp_path, check=True, timeout=120)

    expected = np.ones((2048, 1024)) + 1
    expected[:256] = 3
    stored = np.load(tmp_path / "big" / "grid.npy")
    written = np.fromfile(tmp_path / "big" / "grid.dat", dtype=np.float64).reshape(2048, 1024)
    np.testing.assert_array_equal(stored, np.ones((2048, 1024)))
    np.testing.assert_array_equal(written, expected)
