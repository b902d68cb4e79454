"""The sdist holds every source a build needs, and builds and installs with cargo alone.

The sdist comes from ``scripts/wheel.sh`` (see ``artefacts.py``). It is built by pip, as a user
would, into a fresh virtual environment, then used from a temporary directory outside the source
tree under ``python -I``, so only the package built from the sdist can be imported.
"""

import json
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest
from artefacts import (
    REPO,
    Artefacts,
    environment_with_rust,
    install_dependencies_or_skip,
    make_venv,
    pinned_runtime_requirements,
    pip_install,
    sdist_metadata,
    wheel_and_sdist,
)

import lazy_disk_cache

pytestmark = pytest.mark.timeout(1200)

TOP_LEVEL = {"Cargo.toml", "Cargo.lock", "pyproject.toml", "README.md", "LICENSE", "PKG-INFO"}
SOURCE_DIRECTORIES = ("rust/core", "rust/python", "python/lazy_disk_cache")
SOURCE_SUFFIXES = {".rs", ".toml", ".py", ".pyi", ".typed"}
SMOKE = Path(__file__).parent / "child" / "installed_smoke.py"


@pytest.fixture(scope="module")
def artefacts(tmp_path_factory: pytest.TempPathFactory) -> Artefacts:
    return wheel_and_sdist(tmp_path_factory)


def sdist_files(sdist: Path) -> set[str]:
    """The files in ``sdist``, relative to its single top-level directory."""
    with tarfile.open(sdist) as archive:
        names = [member.name for member in archive.getmembers() if member.isfile()]
    roots = {name.split("/", 1)[0] for name in names}
    assert roots == {f"lazy_disk_cache-{lazy_disk_cache.__version__}"}, roots
    return {name.split("/", 1)[1] for name in names}


def checkout_sources() -> set[str]:
    return {
        path.relative_to(REPO).as_posix()
        for directory in SOURCE_DIRECTORIES
        for path in (REPO / directory).rglob("*")
        if path.is_file() and path.suffix in SOURCE_SUFFIXES and "__pycache__" not in path.parts
    }


def test_sdist_holds_every_source_a_build_needs(artefacts: Artefacts) -> None:
    files = sdist_files(artefacts.sdist)

    assert files >= TOP_LEVEL
    assert checkout_sources() <= files
    assert [name for name in files if name.endswith(".so")] == []
    assert [name for name in files if name.split("/", 1)[0] in {"target", ".venv", "dist"}] == []


def test_sdist_builds_and_installs_with_cargo(artefacts: Artefacts, tmp_path: Path) -> None:
    if shutil.which("cargo") is None:
        pytest.skip("cargo is not on PATH, and building the sdist needs it")
    outside, work = tmp_path / "cwd", tmp_path / "work"
    outside.mkdir()
    work.mkdir()
    venv = make_venv(tmp_path / "venv")
    env = environment_with_rust(venv)
    install_dependencies_or_skip(venv, pinned_runtime_requirements(sdist_metadata(artefacts.sdist)), env, outside)

    built = pip_install(venv, [str(artefacts.sdist)], env, outside)
    assert built.returncode == 0, built.stderr
    completed = subprocess.run(
        [str(venv.python), "-I", str(SMOKE), str(work)],
        capture_output=True,
        text=True,
        check=False,
        timeout=180,
        env=env,
        cwd=outside,
    )

    assert completed.returncode == 0, completed.stderr
    report = json.loads(completed.stdout)
    assert Path(report["native_file"]).is_relative_to(venv.root)
    assert report["version"] == lazy_disk_cache.__version__
    assert report["entry_matches"] is True
    assert report["store_matches"] is True
