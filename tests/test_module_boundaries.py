"""The package's modules reach each other only through names meant to be shared.

A module's underscore-private names are its own: another module of the package imports none of
them and reads none of them through a module reference. Private *modules* (``_codec``, ``_rust``,
...) are shared within the package through their non-underscore names; the compiled core
``lazy_disk_cache._rust`` is how the Python layer reaches the native code, so its names are free.
"""

import ast
from pathlib import Path

import pytest

import lazy_disk_cache

PACKAGE = "lazy_disk_cache"
PACKAGE_DIR = Path(lazy_disk_cache.__file__).parent
NATIVE_MODULE = f"{PACKAGE}._rust"
SUBMODULES = frozenset({path.stem for path in PACKAGE_DIR.glob("*.py")} | {"_rust"})


def _is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _absolute_module(node: ast.ImportFrom, importer: str) -> str:
    if not node.level:
        return node.module or ""
    base = importer.split(".")[: -node.level]
    return ".".join([*base, node.module] if node.module else base)


def _dotted(node: ast.expr) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        owner = _dotted(node.value)
        return None if owner is None else f"{owner}.{node.attr}"
    return None


def _private_imports(tree: ast.AST, importer: str, modules: dict[str, str]) -> list[str]:
    """Imports of other modules' private names; records in ``modules`` each local name bound to a package module."""
    found: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == PACKAGE or alias.name.startswith(PACKAGE + "."):
                    local = alias.asname or alias.name.split(".")[0]
                    modules[local] = alias.name if alias.asname else PACKAGE
        elif isinstance(node, ast.ImportFrom):
            module = _absolute_module(node, importer)
            if module != PACKAGE and not module.startswith(PACKAGE + "."):
                continue
            for alias in node.names:
                if module == PACKAGE and alias.name in SUBMODULES:
                    modules[alias.asname or alias.name] = f"{PACKAGE}.{alias.name}"
                elif _is_private(alias.name) and module not in (importer, NATIVE_MODULE):
                    found.append(f"line {node.lineno}: from {module} import {alias.name}")
    return found


def _private_attributes(tree: ast.AST, importer: str, modules: dict[str, str]) -> list[str]:
    """Private names read through a reference to another package module (``module._name``)."""
    found: list[str] = []
    for node in ast.walk(tree):
        owner = _dotted(node.value) if isinstance(node, ast.Attribute) and _is_private(node.attr) else None
        head, _, rest = (owner or "").partition(".")
        if not isinstance(node, ast.Attribute) or head not in modules:
            continue
        module = ".".join(filter(None, (modules[head], rest)))
        if module == PACKAGE and node.attr in SUBMODULES:
            continue  # a submodule reached through the package, not a private name
        in_package = module == PACKAGE or module.removeprefix(PACKAGE + ".") in SUBMODULES
        if in_package and module not in (importer, NATIVE_MODULE):
            found.append(f"line {node.lineno}: {owner}.{node.attr}")
    return found


def boundary_violations(source: str, importer: str) -> list[str]:
    """Each place where ``source`` (the module ``importer``) uses another package module's private name."""
    tree = ast.parse(source)
    modules: dict[str, str] = {}
    imports = _private_imports(tree, importer, modules)
    return imports + _private_attributes(tree, importer, modules)


@pytest.mark.parametrize("path", sorted(PACKAGE_DIR.glob("*.py")), ids=lambda path: path.name)
def test_no_module_uses_another_modules_private_names(path: Path) -> None:
    importer = PACKAGE if path.stem == "__init__" else f"{PACKAGE}.{path.stem}"

    violations = boundary_violations(path.read_text(encoding="utf-8"), importer)

    assert violations == [], f"{path.name} uses private names of other modules: {violations}"


@pytest.mark.parametrize(
    "source",
    [
        "from lazy_disk_cache.lazy_disk_cache import _open_directory",
        "from lazy_disk_cache.lazy_disk_cache import LazyDiskCache, _chunk_budget_bytes as budget",
        "from . import lazy_disk_cache\nlazy_disk_cache._byte_view(a)",
        "from .lazy_disk_cache import _byte_view",
        "import lazy_disk_cache.lazy_disk_cache as ldc\nldc._budget_cache",
        "import lazy_disk_cache.paths\nlazy_disk_cache.paths._as_plain_str('k')",
        "from lazy_disk_cache import _codec\n_codec._c_order_source(a)",
        "import lazy_disk_cache\nlazy_disk_cache._codec._c_order_source(a)",
    ],
)
def test_the_check_flags_a_private_name_taken_from_another_module(source: str) -> None:
    assert len(boundary_violations(source, f"{PACKAGE}.disk_backed_store")) == 1


@pytest.mark.parametrize(
    "source",
    [
        "from lazy_disk_cache._rust import CacheDir, __version__",
        "from lazy_disk_cache import _rust\n_rust._private_helper",
        "from lazy_disk_cache._codec import stage_entry",
        "from lazy_disk_cache import _codec\n_codec.stage_entry",
        "from lazy_disk_cache.disk_backed_store import _SCHEMA_VERSION",
        "import lazy_disk_cache\nlazy_disk_cache._rust.CacheDir",
        "self._lock\nentry.cache_path",
    ],
)
def test_the_check_allows_shared_names_native_names_and_the_modules_own(source: str) -> None:
    assert boundary_violations(source, f"{PACKAGE}.disk_backed_store") == []
