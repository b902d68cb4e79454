"""The wheel is a stripped manylinux abi3 wheel that installs and works with no Rust toolchain in reach.

The wheel comes from ``scripts/wheel.sh`` (see ``artefacts.py``). It is installed into a fresh
virtual environment whose PATH has no cargo, rustc or rustup and whose environment names no
toolchain, and everything runs from a temporary directory outside the source tree under
``python -I``, so only the installed package can be imported.
"""

import json
import platform
import re
import subprocess
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest
from artefacts import (
    REPO,
    Artefacts,
    Venv,
    environment_without_rust,
    install_dependencies_or_skip,
    make_venv,
    pinned_runtime_requirements,
    pip_install,
    wheel_and_sdist,
    wheel_metadata,
)
from elf import needed_versions, section_names

import lazy_disk_cache

pytestmark = pytest.mark.timeout(1200)

WHEEL_NAME = re.compile(r"lazy_disk_cache-(?P<version>[^-]+)-cp311-abi3-(?P<platforms>[^-]+)\.whl")
MANYLINUX = re.compile(r"manylinux_(?P<major>\d+)_(?P<minor>\d+)_(?P<arch>\w+)")
GLIBC_VERSION = re.compile(r"GLIBC_(\d+)\.(\d+)(?:\.\d+)?")
SMOKE = Path(__file__).parent / "child" / "installed_smoke.py"
RUN_TIMEOUT = 180


@dataclass(frozen=True)
class Installed:
    venv: Venv
    env: dict[str, str]
    outside: Path


@pytest.fixture(scope="module")
def artefacts(tmp_path_factory: pytest.TempPathFactory) -> Artefacts:
    return wheel_and_sdist(tmp_path_factory)


@pytest.fixture(scope="module")
def installed(artefacts: Artefacts, tmp_path_factory: pytest.TempPathFactory) -> Installed:
    root = tmp_path_factory.mktemp("wheel-install")
    outside = root / "cwd"
    outside.mkdir()
    assert not outside.is_relative_to(REPO)
    venv = make_venv(root / "venv")
    env = environment_without_rust(venv)
    install_dependencies_or_skip(venv, pinned_runtime_requirements(wheel_metadata(artefacts.wheel)), env, outside)
    completed = pip_install(venv, ["--no-index", str(artefacts.wheel)], env, outside)
    assert completed.returncode == 0, completed.stderr
    return Installed(venv, env, outside)


def run(installed: Installed, command: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command,
        capture_output=True,
        text=True,
        check=False,
        timeout=RUN_TIMEOUT,
        env=installed.env,
        cwd=installed.outside,
    )


def manylinux_tag(wheel: Path) -> re.Match[str]:
    name = WHEEL_NAME.fullmatch(wheel.name)
    assert name is not None, wheel.name
    tags = [tag for tag in map(MANYLINUX.fullmatch, name["platforms"].split(".")) if tag is not None]
    assert tags, f"{wheel.name} carries no manylinux_X_Y tag"
    return tags[0]


def test_wheel_name_carries_abi3_and_a_manylinux_tag_for_this_machine(artefacts: Artefacts) -> None:
    name = WHEEL_NAME.fullmatch(artefacts.wheel.name)

    assert name is not None, f"{artefacts.wheel.name} is not a cp311-abi3 wheel"
    assert name["version"] == lazy_disk_cache.__version__
    tag = manylinux_tag(artefacts.wheel)
    assert (int(tag["major"]), int(tag["minor"])) in {(2, 17), (2, 28)}
    assert tag["arch"] == platform.machine()


def test_wheel_extension_is_stripped_and_needs_no_glibc_newer_than_its_tag(
    artefacts: Artefacts, tmp_path: Path
) -> None:
    with zipfile.ZipFile(artefacts.wheel) as archive:
        libraries = [member for member in archive.namelist() if member.endswith(".so")]
        assert libraries == ["lazy_disk_cache/_rust.abi3.so"]
        extension = Path(archive.extract(libraries[0], tmp_path))
    tag = manylinux_tag(artefacts.wheel)

    sections = section_names(extension)
    glibc = {
        (int(match[1]), int(match[2]))
        for versions in needed_versions(extension).values()
        for match in map(GLIBC_VERSION.fullmatch, versions)
        if match is not None
    }

    assert ".symtab" not in sections
    assert not [section for section in sections if section.startswith(".debug")]
    assert glibc, "the extension needs no versioned glibc symbol at all, which no Rust cdylib does"
    assert max(glibc) <= (int(tag["major"]), int(tag["minor"]))


def test_wheel_metadata_names_license_readme_urls_extras_and_platform(artefacts: Artefacts) -> None:
    metadata = wheel_metadata(artefacts.wheel)
    with zipfile.ZipFile(artefacts.wheel) as archive:
        licenses = [member for member in archive.namelist() if member.endswith(".dist-info/licenses/LICENSE")]
        license_text = archive.read(licenses[0]).decode() if licenses else ""

    assert metadata["License-Expression"] == "MIT"
    assert license_text.startswith("MIT License")
    assert metadata["Description-Content-Type"].startswith("text/markdown")
    assert str(metadata.get_payload()).startswith("# lazy_disk_cache")
    assert {url.split(",")[0] for url in metadata.get_all("Project-URL", [])} >= {"Homepage", "Repository"}
    assert metadata["Keywords"]
    assert "Operating System :: POSIX :: Linux" in metadata.get_all("Classifier", [])
    assert set(metadata.get_all("Provides-Extra", [])) >= {"dask", "dev"}
    requirements = [requirement.replace(" ", "") for requirement in metadata.get_all("Requires-Dist", [])]
    assert "dask[array,distributed]>=2024.12;extra=='dask'" in requirements


def test_demo_runs_from_the_installed_wheel(installed: Installed) -> None:
    completed = run(installed, [str(installed.venv.python), "-I", "-m", "lazy_disk_cache", "demo", "--size-mib", "4"])

    assert completed.returncode == 0, completed.stderr
    assert "sum after reload matches" in completed.stdout
    assert "reopened keys: ['labels', 'origin', 'points']" in completed.stdout


def test_console_script_runs_the_demo(installed: Installed) -> None:
    completed = run(installed, [str(installed.venv.bin / "lazy-disk-cache"), "demo", "--size-mib", "2"])

    assert completed.returncode == 0, completed.stderr
    assert "done; the demo directory was removed" in completed.stdout


def test_installed_wheel_round_trips_an_entry_and_a_store(installed: Installed, tmp_path: Path) -> None:
    completed = run(installed, [str(installed.venv.python), "-I", str(SMOKE), str(tmp_path)])

    assert completed.returncode == 0, completed.stderr
    report = json.loads(completed.stdout)
    assert Path(report["package_file"]).is_relative_to(installed.venv.root)
    assert Path(report["native_file"]).is_relative_to(installed.venv.root)
    assert Path(report["native_file"]).name == "_rust.abi3.so"
    assert report["version"] == lazy_disk_cache.__version__
    assert report["offloaded_file"] == {"name": "entry.dat", "size": 256 * 256 * 8}
    assert report["entry_matches"] is True
    assert report["store_keys"] == ["grid", "labels"]
    assert {"grid.npy", "grid.meta.json", "labels.npy", "labels.meta.json"} <= set(report["store_files"])
    assert report["store_matches"] is True
