"""Child: load corrupt, truncated and mismatched artefacts; report each outcome as JSON.

Usage: corrupt_artefacts.py ROOT

For every case of the table below the child writes a valid stored entry (or an offloaded entry's
``.dat``) into its own directory under ROOT, damages one file, then loads it the way a user
would: a fresh store and ``store[key]`` for a pair, ``entry.load()`` for a ``.dat``. It reports
the exception type (with its base classes), message and ``filename``. Run it under
``-X faulthandler``, so that an interpreter crash on a hostile file is visible as such.
"""

import functools
import json
import struct
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from lazy_disk_cache.disk_backed_ndarray import DiskBackedNDArray
from lazy_disk_cache.disk_backed_store import DiskBackedStore
from lazy_disk_cache.lazy_disk_cache import LazyDiskCacheConfig

KEY = "victim"
VALUE = np.arange(12, dtype="<f8").reshape(4, 3)
MAGIC = b"\x93NUMPY"


def npy_with_header(header: str, payload: bytes = VALUE.tobytes(), version: tuple[int, int] = (1, 0)) -> bytes:
    """A .npy file with ``header`` (padded to 64 bytes with its newline) before ``payload``."""
    size_format = "<H" if version[0] == 1 else "<I"
    prefix = len(MAGIC) + 2 + struct.calcsize(size_format)
    text = header.encode("latin1")
    padding = -(prefix + len(text) + 1) % 64
    text += b" " * padding + b"\n"
    return MAGIC + bytes(version) + struct.pack(size_format, len(text)) + text + payload


def good_header(**fields: str) -> str:
    merged = {"descr": "'<f8'", "fortran_order": "False", "shape": "(4, 3)", **fields}
    return "{" + ", ".join(f"'{name}': {value}" for name, value in merged.items()) + ", }"


Damage = Callable[[bytes], bytes]


def without_header_newline(raw: bytes) -> bytes:
    end = 10 + struct.unpack("<H", raw[8:10])[0]
    return raw[: end - 1] + b" " + raw[end:]


def replace_with(raw: bytes) -> Damage:
    return lambda _: raw


NPY_CASES: dict[str, Damage] = {
    "empty-file": replace_with(b""),
    "truncated-in-magic": lambda raw: raw[:3],
    "truncated-header": lambda raw: raw[:40],
    "bad-magic": lambda raw: b"\x93NUMPZ" + raw[6:],
    "unknown-format-version": lambda raw: raw[:6] + bytes((9, 9)) + raw[8:],
    "huge-header-length-v1": lambda raw: raw[:8] + struct.pack("<H", 0xFFFF) + raw[10:200],
    "huge-header-length-v2": replace_with(MAGIC + bytes((2, 0)) + struct.pack("<I", 0xFFFFFFF0) + b"{}"),
    "payload-one-byte-short": lambda raw: raw[:-1],
    "payload-missing": replace_with(npy_with_header(good_header(), payload=b"")),
    "shape-larger-than-the-file": replace_with(npy_with_header(good_header(shape="(1000000, 3)"))),
    "overflowing-shape": replace_with(npy_with_header(good_header(shape="(4611686018427387904, 4611686018427387904)"))),
    "negative-shape": replace_with(npy_with_header(good_header(shape="(-4, 3)"))),
    "non-integer-shape": replace_with(npy_with_header(good_header(shape="('a', 3)"))),
    "shape-not-a-tuple": replace_with(npy_with_header(good_header(shape="12"))),
    "unterminated-descr-literal": replace_with(npy_with_header(good_header(descr="'<f8"))),
    "descr-is-a-function-call": replace_with(npy_with_header(good_header(descr="__import__('os').getpid()"))),
    "object-descr": replace_with(npy_with_header(good_header(descr="'|O'"))),
    "unknown-dtype-descr": replace_with(npy_with_header(good_header(descr="'<q99'"))),
    "huge-itemsize-descr": replace_with(npy_with_header(good_header(descr="'|V99999999999999'"))),
    "malformed-structured-descr": replace_with(npy_with_header(good_header(descr="[('x',)]"))),
    "fortran-order-not-a-bool": replace_with(npy_with_header(good_header(fortran_order="'yes'"))),
    "header-missing-a-field": replace_with(npy_with_header("{'descr': '<f8', 'shape': (4, 3), }")),
    "header-with-an-extra-field": replace_with(npy_with_header(good_header(extra="1"))),
    "header-not-a-dict": replace_with(npy_with_header("[1, 2, 3]")),
    "header-not-newline-terminated": lambda raw: without_header_newline(raw),
    "header-deeply-nested": replace_with(npy_with_header(good_header(shape="(" * 500 + ")" * 500))),
    "random-bytes": replace_with(np.random.default_rng(7).bytes(8192)),
}

SIDECAR_CASES: dict[str, bytes] = {
    "invalid-json": b"{not json",
    "empty-sidecar": b"",
    "not-utf8": b"\xff\xfe{}",
    "json-array": b"[1, 2]",
    "json-string": b'"schema_version"',
    "deeply-nested-json": b"[" * 100_000 + b"]" * 100_000,
    "schema-2": b'{"schema_version": 2, "lazy_disk_cache_class": "DiskBackedNDArray"}',
    "schema-true": b'{"schema_version": true, "lazy_disk_cache_class": "DiskBackedNDArray"}',
    "schema-float": b'{"schema_version": 1.0, "lazy_disk_cache_class": "DiskBackedNDArray"}',
    "schema-string": b'{"schema_version": "1", "lazy_disk_cache_class": "DiskBackedNDArray"}',
    "schema-nan": b'{"schema_version": NaN, "lazy_disk_cache_class": "DiskBackedNDArray"}',
    "schema-huge": b'{"schema_version": 1e400, "lazy_disk_cache_class": "DiskBackedNDArray"}',
    "schema-missing": b'{"lazy_disk_cache_class": "DiskBackedNDArray"}',
    "schema-duplicated-last-wins": b'{"schema_version": 1, "schema_version": 2, "lazy_disk_cache_class": "X"}',
    "class-missing": b'{"schema_version": 1}',
    "class-not-a-string": b'{"schema_version": 1, "lazy_disk_cache_class": 5}',
    "class-import-path": b'{"schema_version": 1, "lazy_disk_cache_class": "os.system"}',
    "class-abstract-base": b'{"schema_version": 1, "lazy_disk_cache_class": "LazyDiskCache"}',
    "flag-not-a-bool": b'{"schema_version": 1, "lazy_disk_cache_class": "DiskBackedNDArray", "enable_caching": "yes"}',
    "flag-null": b'{"schema_version": 1, "lazy_disk_cache_class": "DiskBackedNDArray", "purge_disk_on_gc": null}',
}

# Not damage: a sidecar whose informational shape and dtype disagree with the header still loads.
STALE_SIDECAR = (
    b'{"schema_version": 1, "lazy_disk_cache_class": "DiskBackedNDArray", "shape": [99], "dtype": "|u1", '
    b'"purge_disk_on_gc": false, "automatic_offloading": false, "enable_caching": true}'
)


def replace_by_directory(dat: Path) -> None:
    dat.unlink()
    dat.mkdir()


DAT_CASES: dict[str, Callable[[Path], object]] = {
    "dat-one-byte-short": lambda dat: dat.write_bytes(dat.read_bytes()[:-1]),
    "dat-empty": lambda dat: dat.write_bytes(b""),
    "dat-missing": lambda dat: dat.unlink(),
    "dat-replaced-by-a-directory": replace_by_directory,
}


def outcome_of(call: Callable[[], object]) -> dict[str, Any]:
    try:
        result = call()
    except BaseException as exc:
        return {
            "raised": [cls.__name__ for cls in type(exc).__mro__],
            "message": str(exc),
            "filename": getattr(exc, "filename", None),
            "notes": [str(note) for note in getattr(exc, "__notes__", [])],
            "traceback": traceback.format_exc()[-1500:],
        }
    return {"raised": None, "result": repr(result)[:200]}


def stored_pair(directory: Path) -> tuple[Path, Path]:
    config = LazyDiskCacheConfig(cache_path=directory, enable_caching=True, purge_disk_on_gc=False)
    store = DiskBackedStore[DiskBackedNDArray](config=config, factory=DiskBackedNDArray)
    store.add_data_to_store(KEY, VALUE)
    store.offload(KEY, pickle_container=True)
    return directory / f"{KEY}.npy", directory / f"{KEY}.meta.json"


def load_pair(directory: Path) -> object:
    config = LazyDiskCacheConfig(cache_path=directory)
    array = np.asarray(DiskBackedStore[DiskBackedNDArray](config=config, factory=DiskBackedNDArray)[KEY])
    return (array.shape, str(array.dtype), bool(np.array_equal(array, VALUE)))


def main() -> None:
    root = Path(sys.argv[1])
    report: dict[str, dict[str, Any]] = {}
    for name, damage in NPY_CASES.items():
        npy, _ = stored_pair(root / name)
        npy.write_bytes(damage(npy.read_bytes()))
        report[name] = {"path": str(npy), **outcome_of(functools.partial(load_pair, root / name))}
    for name, raw in {**SIDECAR_CASES, "stale-sidecar": STALE_SIDECAR}.items():
        _, meta = stored_pair(root / name)
        meta.write_bytes(raw)
        report[name] = {"path": str(meta), **outcome_of(functools.partial(load_pair, root / name))}
    for name, damage_dat in DAT_CASES.items():
        entry = DiskBackedNDArray(VALUE, cache_path=root / name / "e", enable_caching=True, purge_disk_on_gc=False)
        entry.offload()
        dat = root / name / "e.dat"
        damage_dat(dat)
        report[name] = {"path": str(dat), **outcome_of(entry.load)}
    sys.stdout.write(json.dumps(report))


if __name__ == "__main__":
    main()
