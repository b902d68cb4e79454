"""Generation-stamped values for the crash and power-cut campaigns, and the acknowledgement log.

A value is fully determined by ``(key, generation, layout)``: its bytes in C order start with the
generation as a little-endian ``uint64`` and continue with pseudo-random bytes seeded by the key and
the generation. A value read back after a crash therefore names the generation it claims to be, and
its digest proves (or disproves) that it is exactly that generation, never a mix of two.

The writer logs each write to an acknowledgement file outside the store: a ``begin`` record (with
the layout of every value it is about to write) before the call, an ``ack`` record after the call
returned. Both are single ``write`` calls followed by ``fsync``.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np
from numpy.typing import NDArray

__all__ = [
    "CONVERSION_KEYS",
    "DTYPES",
    "GENERATION_BYTES",
    "STORE_KEYS",
    "AckLog",
    "Layout",
    "descr_of",
    "digest",
    "eval_descr",
    "make_layout",
    "make_value",
    "parse_ack_records",
    "payload_bytes",
    "stamp_of",
]

GENERATION_BYTES: Final = 8

STORE_KEYS: Final = ("s0", "s1", "s\u00e9\u65e5", "L0", "L1")
"""Keys written as codec pairs. Upper-case first letter: a large value (megabytes)."""

CONVERSION_KEYS: Final = ("c0", "C1")
"""Names whose ``<name>.dat`` is written by entry conversions with a fixed ``cache_path``."""

DTYPES: Final[tuple[np.dtype[Any], ...]] = (
    np.dtype("<f8"),
    np.dtype("<i4"),
    np.dtype(">u2"),
    np.dtype("<c8"),
    np.dtype("|u1"),
    np.dtype([("x", "<f4"), ("y", ">i2"), ("c", "u1")]),
    np.dtype("S3"),
)

_SMALL_BYTES: Final = (GENERATION_BYTES, 16 * 1024)
_LARGE_BYTES: Final = (1024 * 1024, 3 * 1024 * 1024)
_COLUMNS: Final = (1, 3, 4, 7)


@dataclass(frozen=True)
class Layout:
    """The dtype (as its ``.npy`` descr text) and shape of one generation's value."""

    descr: str
    shape: tuple[int, ...]

    @property
    def dtype(self) -> np.dtype[Any]:
        return np.lib.format.descr_to_dtype(eval_descr(self.descr))

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize

    def as_json(self) -> dict[str, Any]:
        return {"descr": self.descr, "shape": list(self.shape)}

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Layout:
        return cls(str(raw["descr"]), tuple(int(extent) for extent in raw["shape"]))


def eval_descr(text: str) -> Any:
    """Evaluate a descr literal as NumPy does (``ast.literal_eval``)."""
    return ast.literal_eval(text)


def descr_of(dtype: np.dtype[Any]) -> str:
    return repr(np.lib.format.dtype_to_descr(dtype))


def _seed(key: str, generation: int) -> list[int]:
    return [zlib.crc32(key.encode("utf-8")), generation]


def make_layout(key: str, generation: int) -> Layout:
    """A layout that varies with the generation: dtype, rank and size all change between writes."""
    rng = np.random.default_rng([*_seed(key, generation), 1])
    dtype = DTYPES[int(rng.integers(len(DTYPES)))]
    low, high = _LARGE_BYTES if key[0].isupper() else _SMALL_BYTES
    columns = _COLUMNS[int(rng.integers(len(_COLUMNS)))]
    minimum = -(-GENERATION_BYTES // dtype.itemsize)
    count = max(minimum, int(rng.integers(low, high)) // dtype.itemsize)
    rows = -(-count // columns)
    shape = (rows * columns,) if rng.integers(2) else (rows, columns)
    return Layout(descr_of(dtype), shape)


def payload_bytes(key: str, generation: int, nbytes: int) -> bytes:
    """The C-order bytes of a value: the generation stamp, then seeded pseudo-random bytes."""
    if nbytes < GENERATION_BYTES:
        raise ValueError(f"a stamped value needs at least {GENERATION_BYTES} bytes; got {nbytes}")
    stamp = generation.to_bytes(GENERATION_BYTES, "little")
    return stamp + np.random.default_rng(_seed(key, generation)).bytes(nbytes - GENERATION_BYTES)


def make_value(key: str, generation: int, layout: Layout) -> NDArray[Any]:
    """The writable array of ``(key, generation)`` with ``layout``."""
    raw = bytearray(payload_bytes(key, generation, layout.nbytes))
    return np.frombuffer(raw, dtype=layout.dtype).reshape(layout.shape)


def digest(raw: bytes | memoryview) -> str:
    return hashlib.sha256(raw).hexdigest()


def stamp_of(raw: bytes | memoryview) -> int | None:
    """The generation a value's bytes claim, or ``None`` if they are too short to carry one."""
    if len(raw) < GENERATION_BYTES:
        return None
    return int.from_bytes(bytes(raw[:GENERATION_BYTES]), "little")


class AckLog:
    """Append-only JSON-lines log, one ``write`` plus ``fsync`` per record."""

    def __init__(self, path: Path) -> None:
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)

    def record(self, kind: str, run: int, op: str, items: list[dict[str, Any]]) -> None:
        line = json.dumps({"t": kind, "run": run, "op": op, "items": items}, ensure_ascii=True) + "\n"
        os.write(self._fd, line.encode("ascii"))
        os.fsync(self._fd)


def parse_ack_records(raw: bytes) -> tuple[list[dict[str, Any]], int]:
    """Every complete record in ``raw``, and how many unparsable (torn) lines were skipped."""
    records: list[dict[str, Any]] = []
    partial = 0
    for line in raw.split(b"\n"):
        if not line:
            continue
        try:
            records.append(json.loads(line))
        except ValueError:
            partial += 1
    return records, partial
