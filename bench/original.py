"""The original ``GSEGUtils==0.5.2`` from PyPI, measured in its own venv and its own process.

The original needs CPython 3.12, so it cannot share our process: a child runs the same case
code with the original classes and with the baselines the targets use, and reports its own
timings as JSON. Its ratios are therefore against baselines measured in its own process.
Nothing of the original is vendored; pip installs the pinned release into
``bench/.venv-gsegutils`` (ignored by git).
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

from common import BENCH_DIR, CaseResult, Settings

__all__ = ["ORIGINAL_PIN", "VENV_DIR", "ensure_original", "run_original"]

ORIGINAL_PIN = "GSEGUtils==0.5.2"
VENV_DIR = BENCH_DIR / ".venv-gsegutils"
_CHILD = BENCH_DIR / "original_child.py"
_CHECK = "import importlib.metadata as m, GSEGUtils.lazy_disk_cache; assert m.version('GSEGUtils') == '0.5.2'"


def _is_python312(candidate: str) -> bool:
    try:
        proc = subprocess.run(
            [candidate, "-c", "import sys; sys.exit(sys.version_info[:2] != (3, 12))"],
            capture_output=True,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return proc.returncode == 0


def _candidates() -> list[str]:
    found = [os.environ.get("PYTHON312", ""), shutil.which("python3.12") or ""]
    pyenv_root = os.environ.get("PYENV_ROOT") or str(Path.home() / ".pyenv")
    found += sorted(glob.glob(os.path.join(pyenv_root, "versions", "3.12*", "bin", "python3.12")), reverse=True)
    uv = shutil.which("uv")
    if uv:
        proc = subprocess.run([uv, "python", "find", "3.12"], capture_output=True, text=True, timeout=60, check=False)
        found.append(proc.stdout.strip() if proc.returncode == 0 else "")
    return [c for c in found if c]


def find_python312() -> str | None:
    """A CPython 3.12 interpreter from ``PYTHON312``, PATH, pyenv or uv (the original needs 3.12)."""
    return next((c for c in _candidates() if _is_python312(c)), None)


def _venv_python() -> Path:
    return VENV_DIR / "bin" / "python"


def _ready() -> bool:
    python = _venv_python()
    if not python.exists():
        return False
    proc = subprocess.run([str(python), "-c", _CHECK], capture_output=True, timeout=120, check=False)
    return proc.returncode == 0


def ensure_original(*, create: bool) -> tuple[str | None, str]:
    """The venv's interpreter, or None and the reason the original is skipped."""
    if _ready():
        return str(_venv_python()), ""
    if not create:
        return None, f"skipped: {VENV_DIR.name} is not set up (a full run creates it)"
    python = find_python312()
    if python is None:
        return None, "skipped: no CPython 3.12 found (set PYTHON312, or put python3.12 on PATH, pyenv or uv)"
    steps = [
        [python, "-m", "venv", "--clear", str(VENV_DIR)],
        [str(_venv_python()), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", ORIGINAL_PIN],
    ]
    for step in steps:
        try:
            proc = subprocess.run(step, capture_output=True, text=True, timeout=900, check=False)
        except subprocess.TimeoutExpired:
            return None, f"skipped: {' '.join(step[1:4])} timed out (no network?)"
        if proc.returncode != 0:
            tail = " | ".join(proc.stderr.strip().splitlines()[-2:])
            return None, f"skipped: installing {ORIGINAL_PIN} failed (no network?): {tail}"
    if not _ready():
        return None, f"skipped: {ORIGINAL_PIN} installed but does not import"
    return str(_venv_python()), ""


def run_original(settings: Settings, python: str) -> tuple[dict[str, CaseResult], list[tuple[str, str]], str]:
    """Run every timed case of the original in its own process; returns cases, environment, problem."""
    with tempfile.TemporaryDirectory(dir=settings.workdir, prefix="original-") as scratch:
        spec, out = Path(scratch) / "settings.json", Path(scratch) / "result.json"
        child_settings = replace(settings.for_original(), workdir=Path(scratch))
        spec.write_text(json.dumps(child_settings.to_json()))
        try:
            proc = subprocess.run(
                [python, str(_CHILD), str(spec), str(out)], capture_output=True, text=True, timeout=1800, check=False
            )
        except subprocess.TimeoutExpired:
            return {}, [], "the original's run timed out"
        if proc.returncode != 0 or not out.exists():
            tail = " | ".join(proc.stderr.strip().splitlines()[-3:])
            return {}, [], f"the original's run failed: {tail}"
        data: dict[str, Any] = json.loads(out.read_text())
    cases = {c["case_id"]: CaseResult.from_json(c) for c in data["cases"]}
    return cases, [(k, v) for k, v in data["environment"]], ""
