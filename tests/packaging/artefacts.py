"""The wheel and sdist under test, and fresh virtual environments to install them into.

The artefacts are the ones in ``dist/`` when ``scripts/wheel.sh`` made them after the last change to
any source file; otherwise the script builds them into a temporary directory (a release build of
the extension, well under a minute on two cores once the crates are downloaded).
"""

import email.parser
import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from dataclasses import dataclass
from email.message import Message
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SOURCES = (
    "Cargo.toml",
    "Cargo.lock",
    "pyproject.toml",
    "README.md",
    "LICENSE",
    "rust/**/Cargo.toml",
    "rust/**/*.rs",
    "python/**/*.py",
    "python/**/*.pyi",
    "python/**/py.typed",
)
BUILD_TIMEOUT = 900
PIP_TIMEOUT = 600
# Variables that point a process at a Rust toolchain, or at a build backend's or interpreter's settings.
RUST_VARIABLES = ("CARGO", "RUSTUP", "RUST")
BUILD_VARIABLES = ("PYO3", "MATURIN", "VIRTUAL_ENV", "PYTHON")


@dataclass(frozen=True)
class Artefacts:
    wheel: Path
    sdist: Path


@dataclass(frozen=True)
class Venv:
    root: Path

    @property
    def bin(self) -> Path:
        return self.root / "bin"

    @property
    def python(self) -> Path:
        return self.bin / "python"


_artefacts: list[Artefacts] = []


def _single_build(directory: Path) -> Artefacts | None:
    wheels = list(directory.glob("lazy_disk_cache-*.whl"))
    sdists = list(directory.glob("lazy_disk_cache-*.tar.gz"))
    if len(wheels) != 1 or len(sdists) != 1:
        return None
    return Artefacts(wheels[0], sdists[0])


def _newest_source_mtime() -> float:
    return max(path.stat().st_mtime for pattern in SOURCES for path in REPO.glob(pattern))


def _fresh_in_dist() -> Artefacts | None:
    found = _single_build(REPO / "dist")
    if found is None:
        return None
    built = min(found.wheel.stat().st_mtime, found.sdist.stat().st_mtime)
    return found if built > _newest_source_mtime() else None


def wheel_and_sdist(tmp_path_factory: pytest.TempPathFactory) -> Artefacts:
    """The artefacts of the current sources: a fresh ``dist/`` build, else one made now (once per session)."""
    if not _artefacts:
        found = _fresh_in_dist()
        if found is None:
            if shutil.which("cargo") is None:
                pytest.skip("dist/ holds no wheel and sdist newer than the sources, and no cargo to build them")
            out = tmp_path_factory.mktemp("dist")
            completed = subprocess.run(
                [str(REPO / "scripts" / "wheel.sh"), "--out", str(out)],
                capture_output=True,
                text=True,
                check=False,
                timeout=BUILD_TIMEOUT,
            )
            assert completed.returncode == 0, f"scripts/wheel.sh failed:\n{completed.stdout}\n{completed.stderr}"
            found = _single_build(out)
            assert found is not None, f"scripts/wheel.sh left no single wheel and sdist in {out}"
        _artefacts.append(found)
    return _artefacts[0]


def wheel_metadata(wheel: Path) -> Message:
    with zipfile.ZipFile(wheel) as archive:
        (name,) = [member for member in archive.namelist() if member.endswith(".dist-info/METADATA")]
        return email.parser.Parser().parsestr(archive.read(name).decode())


def sdist_metadata(sdist: Path) -> Message:
    with tarfile.open(sdist) as archive:
        (member,) = [
            member
            for member in archive.getmembers()
            if member.name.count("/") == 1 and member.name.endswith("/PKG-INFO")
        ]
        handle = archive.extractfile(member)
        assert handle is not None
        return email.parser.Parser().parsestr(handle.read().decode())


def pinned_runtime_requirements(metadata: Message) -> list[str]:
    """The runtime dependencies in ``metadata``, pinned to the versions this interpreter runs.

    Pinned, they resolve quickly and the same way every run; installing the package afterwards
    with ``--no-index`` still checks its own requirement specifiers against them.
    """
    names = []
    for requirement in metadata.get_all("Requires-Dist", []):
        if "extra ==" in requirement:
            continue
        match = re.match(r"[A-Za-z0-9._-]+", requirement)
        assert match is not None, requirement
        names.append(match.group())
    return [f"{name}=={importlib.metadata.version(name)}" for name in names]


def _holds_rust_toolchain(directory: str) -> bool:
    return any((Path(directory) / tool).exists() for tool in ("cargo", "rustc", "rustup"))


def _base_environment(venv: Venv, *, keep_rust: bool) -> dict[str, str]:
    own_bin = Path(sys.prefix, "bin").resolve()
    dropped = BUILD_VARIABLES if keep_rust else BUILD_VARIABLES + RUST_VARIABLES
    env = {name: value for name, value in os.environ.items() if not name.startswith(dropped)}
    path = [
        directory
        for directory in os.environ.get("PATH", "").split(os.pathsep)
        if directory and Path(directory).resolve() != own_bin and (keep_rust or not _holds_rust_toolchain(directory))
    ]
    env["PATH"] = os.pathsep.join([str(venv.bin), *path])
    return env


def environment_without_rust(venv: Venv) -> dict[str, str]:
    """This process's environment with ``venv`` first on PATH, and no Rust toolchain in reach."""
    env = _base_environment(venv, keep_rust=False)
    for tool in ("cargo", "rustc", "rustup"):
        assert shutil.which(tool, path=env["PATH"]) is None, f"{tool} is still on PATH"
    return env


def environment_with_rust(venv: Venv) -> dict[str, str]:
    """This process's environment with ``venv`` first on PATH instead of the test suite's own venv."""
    return _base_environment(venv, keep_rust=True)


def make_venv(directory: Path) -> Venv:
    subprocess.run([sys.executable, "-m", "venv", str(directory)], check=True, timeout=120)
    return Venv(directory)


def pip_install(venv: Venv, arguments: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(venv.python), "-m", "pip", "--disable-pip-version-check", "--no-input", "install", *arguments],
        capture_output=True,
        text=True,
        check=False,
        timeout=PIP_TIMEOUT,
        env=env,
        cwd=cwd,
    )


def install_dependencies_or_skip(venv: Venv, requirements: list[str], env: dict[str, str], cwd: Path) -> None:
    """Install ``requirements`` from the package index, or skip the test when the index cannot serve them."""
    completed = pip_install(venv, requirements, env, cwd)
    if completed.returncode != 0:
        last_lines = " | ".join(completed.stderr.strip().splitlines()[-3:])
        pytest.skip(f"pip could not install {requirements} from the package index: {last_lines}")
