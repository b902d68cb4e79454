"""Child: push every hostile key through every store route under an audit hook; report JSON.

Usage: hostile_routes.py ROOT

ROOT holds a sentinel tree around the cache directory ``ROOT/parent/store`` (files at the names a
traversal would reach, a deeper tree, files next to the store). For every key of
``hostile_keys.HOSTILE_KEYS`` and every route, the child records what was raised, every
filesystem audit event (``open``, ``os.*``, ``shutil.*``) and every native file operation
(``_rust._op_counts``) the refusal caused. The parent compares the sentinel tree before and
after. An audit hook cannot be removed, which is why this runs in its own process.
"""

import functools
import hashlib
import json
import os
import pickle
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent.parent))

from hostile_keys import HOSTILE_KEYS, NOT_A_STR, HostileKey
from lazy_disk_cache import _rust
from lazy_disk_cache.disk_backed_ndarray import DiskBackedNDArray
from lazy_disk_cache.disk_backed_store import DiskBackedStore
from lazy_disk_cache.errors import StoreKeyError
from lazy_disk_cache.lazy_disk_cache import LazyDiskCacheConfig
from lazy_disk_cache.paths import STORE_PATH_BUILDERS, validate_store_key

Store = DiskBackedStore[DiskBackedNDArray]
Route = Callable[[Store, Any], object]

_EVENTS: list[str] = []
_recording = False


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if _recording and (event == "open" or event.startswith(("os.", "shutil.", "pathlib."))):
        _EVENTS.append(f"{event}{args!r}"[:200])


def snapshot(root: Path) -> dict[str, tuple[int, int, int, str]]:
    """Every path under ``root``: mode, size, mtime and content digest (links not followed)."""
    tree = {}
    for directory, subdirectories, files in os.walk(root):
        for name in (*subdirectories, *files):
            path = Path(directory) / name
            info = path.lstat()
            regular = path.is_file() and not path.is_symlink()
            digest = hashlib.sha256(path.read_bytes()).hexdigest() if regular else ""
            tree[str(path.relative_to(root))] = (info.st_mode, info.st_size, info.st_mtime_ns, digest)
    return tree


def _restore_state(store: Store, key: Any) -> None:
    state = dict(store.__dict__)
    state["_store"] = {key: None}
    DiskBackedStore.__new__(DiskBackedStore).__setstate__(state)


def _pickled_state(store: Store, key: Any) -> None:
    """The same, through a real pickle whose tracking dict carries the hostile key."""
    state = {name: value for name, value in store.__dict__.items() if name not in store._TRANSIENT_STATE}
    state["_store"] = {key: None}
    fresh = DiskBackedStore.__new__(DiskBackedStore)
    fresh.__setstate__(pickle.loads(pickle.dumps(state)))


def _build_path(build: Callable[[Path, str], Path], store: Store, key: Any) -> Path:
    return build(store.cache_dir, key)


def routes() -> dict[str, Route]:
    """Every route that must refuse an illegal key with StoreKeyError before touching anything.

    A legacy key (``HostileKey.legacy``) is refused only where it would be created; the reading
    routes treat it as a key that is not stored, still without touching anything.
    """
    table: dict[str, Route] = {
        "getitem": lambda s, k: s[k],
        "setitem": lambda s, k: s.__setitem__(k, DiskBackedNDArray(np.arange(2))),
        "add_data_to_store": lambda s, k: s.add_data_to_store(k, np.arange(2)),
        "add_data_to_store-cached": lambda s, k: s.add_data_to_store(k, np.arange(2), enable_caching_override=True),
        "offload-key": lambda s, k: s.offload(k),
        "offload-key-pickle": lambda s, k: s.offload(k, pickle_container=True),
        "offload-list-pickle": lambda s, k: s.offload([k], pickle_container=True),
        "offload-after-legal-keys": lambda s, k: s.offload(["n1", "live", k], pickle_container=True),
        "pop": lambda s, k: s.pop(k),
        "purge": lambda s, k: s.purge(k),
        "store_entry": lambda s, k: s._store_entry(k, s["live"]),
        "load_entry": lambda s, k: s._load_entry(k),
        "get_npy_path": lambda s, k: s._get_npy_path(k),
        "get_meta_path": lambda s, k: s._get_meta_path(k),
        "get_legacy_pickle_path": lambda s, k: s._get_legacy_pickle_path(k),
        "validate_store_key": lambda s, k: validate_store_key(k, s.cache_dir),
        "setstate": _restore_state,
        "setstate-pickled": _pickled_state,
    }
    for name, build in STORE_PATH_BUILDERS.items():
        table[f"paths.{name}"] = functools.partial(_build_path, build)
    return table


def applicable(route_name: str, key: object) -> bool:
    """Whether the route can carry ``key`` at all.

    ``offload(keys)`` reads ``None`` as "every key" and a list or tuple as several keys, so a bare
    key goes there only as a ``str`` (the list routes carry the others). A state dict cannot hold
    an unhashable key, and a pickled one cannot hold an unpicklable key.
    """
    if route_name in ("offload-key", "offload-key-pickle"):
        return isinstance(key, str)
    if route_name.startswith("setstate"):
        try:
            hash(key)
            if route_name == "setstate-pickled":
                pickle.dumps(key)
        except (TypeError, pickle.PicklingError):
            return False
    return True


ABSORBING: dict[str, Route] = {
    "get-with-default": lambda s, k: s.get(k, "default"),
    "pop-with-default": lambda s, k: s.pop(k, "default"),
    "contains": lambda s, k: k in s,
}
"""Routes that must answer as if the key were absent, still without touching anything."""


def run_route(route: Route, store: Store, key: Any) -> tuple[object, list[str], dict[str, int]]:
    global _recording
    _EVENTS.clear()
    _rust._clear_faults()
    _recording = True
    try:
        outcome: object = route(store, key)
    except BaseException as exc:
        outcome = exc
    finally:
        _recording = False
    ops = {op: count for op, count in _rust._op_counts().items() if count}
    return outcome, list(_EVENTS), ops


READING_ROUTES = frozenset({"getitem", "pop", "purge", "load_entry", "setstate", "setstate-pickled"})
"""Routes that read or remove what is on disk: a legacy key reaches them as a key that is not stored."""


def judge(hostile: HostileKey, route_name: str, outcome: object, absorbing: bool) -> str | None:
    if absorbing:
        expected = False if route_name == "contains" else "default"
        return None if outcome == expected else f"returned {outcome!r}"
    if hostile.legacy and route_name in READING_ROUTES:
        if route_name.startswith("setstate"):
            return None if outcome is None else f"{type(outcome).__name__}: {outcome!r}"
        missed = isinstance(outcome, KeyError) and not isinstance(outcome, StoreKeyError)
        return None if missed else f"a legacy key that is not stored gave {type(outcome).__name__}: {outcome!r}"
    if not isinstance(outcome, StoreKeyError):
        return f"{type(outcome).__name__}: {outcome!r}"
    if hostile.expected not in str(outcome):
        return f"StoreKeyError without {hostile.expected!r}: {outcome}"
    if hostile.expected == NOT_A_STR and not isinstance(outcome, TypeError):
        return "the non-str refusal is not a TypeError"
    return None


def main() -> None:
    root = Path(sys.argv[1])
    config = LazyDiskCacheConfig(cache_path=root / "parent" / "store", enable_caching=True, purge_disk_on_gc=False)
    store = DiskBackedStore[DiskBackedNDArray](config=config, factory=DiskBackedNDArray)
    store.add_data_to_store("n1", np.arange(5))
    store.add_data_to_store("n2", np.arange(6))
    store.offload(["n1", "n2"], pickle_container=True)
    store.add_data_to_store("live", np.arange(7))
    inside_before = snapshot(store.cache_dir)
    sys.addaudithook(_audit)

    failures: list[str] = []
    refusals = 0
    absorbed = 0
    table = routes()
    for hostile in HOSTILE_KEYS:
        for absorbing, group in ((False, table), (True, ABSORBING)):
            for route_name, route in group.items():
                if not applicable(route_name, hostile.key):
                    continue
                outcome, events, ops = run_route(route, store, hostile.key)
                verdict = judge(hostile, route_name, outcome, absorbing)
                where = f"{hostile.label} via {route_name}"
                if verdict is not None:
                    failures.append(f"{where}: {verdict}")
                if events:
                    failures.append(f"{where}: filesystem audit events {events}")
                if ops:
                    failures.append(f"{where}: native file operations {ops}")
                refusals += not absorbing
                absorbed += absorbing

    # Positive controls: the same instruments do see a legal reload and a Python-level write.
    _, _, reload_ops = run_route(lambda s, k: s[k], store, "n1")
    _, control_events, _ = run_route(lambda s, k: (root / k).write_bytes(b"control"), store, "control.txt")
    (root / "control.txt").unlink()
    inside_after = snapshot(store.cache_dir)
    clobbered = sorted(
        name for name in inside_before.keys() | inside_after.keys() if inside_before.get(name) != inside_after.get(name)
    )
    live = store["live"]
    report = {
        "clobbered": clobbered,
        "controls": {"reload_native_ops": sum(reload_ops.values()), "write_audit_events": len(control_events)},
        "keys": len(HOSTILE_KEYS),
        "routes": len(table) + len(ABSORBING),
        "refusals": refusals,
        "absorbed": absorbed,
        "tracked_after": sorted(store.keys()),
        "live_still_mapped": not live.offloaded and bool(np.array_equal(np.asarray(live), np.arange(7))),
        "failures": failures[:100],
        "failure_count": len(failures),
    }
    sys.stdout.write(json.dumps(report))


if __name__ == "__main__":
    main()
