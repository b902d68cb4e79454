"""Hostile and legal store keys, shared by the key-rule, store and reliability tests.

Every hostile key records the clause of the key rule it must hit *first*, so a test can check both
that the key is refused and why. The expectations are written by hand from the rule, never
computed by the code under test. Import the constants (``HOSTILE_KEYS``, ``HOSTILE_STR_KEYS``,
``NON_STR_KEYS``, ``LEGAL_KEYS``) and use ``key_id`` for readable pytest ids.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Final

from lazy_disk_cache.paths import (
    CLAUSE_ABSOLUTE,
    CLAUSE_CONTROL,
    CLAUSE_ENCODING,
    CLAUSE_LENGTH,
    CLAUSE_RESERVED,
    CLAUSE_SEPARATOR,
    CLAUSE_TRAILING,
)

__all__ = [
    "CONTROL_CODE_POINTS",
    "HOSTILE_KEYS",
    "HOSTILE_STR_KEYS",
    "LEGACY_KEYS",
    "LEGAL_KEYS",
    "NON_STR_KEYS",
    "NOT_A_STR",
    "HostileKey",
    "key_id",
]

NOT_A_STR: Final = "a store key must be a str"
"""``HostileKey.expected`` for keys of the wrong type: a substring of the non-str message."""

CONTROL_CODE_POINTS: Final = (*range(0x20), 0x7F)


@dataclass(frozen=True)
class HostileKey:
    """A key the store must refuse, with the reason it must give."""

    label: str
    """Short ASCII name, unique in the table, for pytest ids."""
    key: object
    expected: str
    """The ``CLAUSE_*`` text the message must name, or ``NOT_A_STR``."""
    legacy: bool = False
    """Whether the key breaks only portability clauses while being one plain POSIX file name that a
    store written before the key rule may hold: readable, purgeable and renamable, never created."""


def _table(expected: str, *pairs: tuple[str, object], legacy: bool = False) -> tuple[HostileKey, ...]:
    return tuple(HostileKey(label, key, expected, legacy) for label, key in pairs)


_TRAVERSAL = (
    *_table(CLAUSE_RESERVED, ("empty", ""), ("dot", "."), ("dotdot", "..")),
    *_table(
        CLAUSE_SEPARATOR,
        ("dotdot-slash-x", "../x"),
        ("dotdot-slash", "../"),
        ("a-dotdot-b", "a/../b"),
        ("x-slash-dotdot", "x/.."),
        ("dotdot-backslash-x", "..\\x"),
        ("dot-slash-x", "./x"),
        ("deep-traversal", "../../../../etc/passwd"),
    ),
    *_table(CLAUSE_TRAILING, ("three-dots", "..."), legacy=True),
)

_ABSOLUTE = (
    *_table(
        CLAUSE_ABSOLUTE,
        ("posix-absolute", "/etc/passwd"),
        ("posix-root", "/"),
        ("double-slash-root", "//"),
        ("absolute-npy", "/tmp/k.npy"),
        ("backslash-root", "\\"),
        ("backslash-rooted", "\\Windows\\System32"),
        ("drive-absolute", "c:\\x"),
        ("drive-forward-slash", "C:/x"),
        ("unc-share", "\\\\server\\share"),
        ("unc-forward-slashes", "//server/share"),
        ("extended-length-prefix", "\\\\?\\C:\\x"),
        ("extended-length-unc", "\\\\?\\UNC\\server\\share"),
        ("device-namespace", "\\\\.\\CON"),
    ),
    # A ':' without a separator is one plain POSIX name ('tile:0_0', ISO times).
    *_table(
        CLAUSE_ABSOLUTE,
        ("drive", "C:"),
        ("drive-relative", "C:x"),
        ("colon-inside", "a:b"),
        ("colon-only", ":"),
        ("colon-at-end", "key:"),
        ("alternate-data-stream", "data.npy:$DATA"),
        ("iso-time", "2024-01-01T10:00"),
        legacy=True,
    ),
)

_SEPARATOR = _table(
    CLAUSE_SEPARATOR,
    ("slash", "a/b"),
    ("backslash", "a\\b"),
    ("trailing-slash", "a/"),
    ("trailing-backslash", "a\\"),
    ("double-slash-inside", "a//b"),
    ("nested-npy", "dir/file.npy"),
    ("backslash-traversal", "x\\..\\y"),
    ("slash-dot", "a/."),
    ("mixed-separators", "a/b\\c"),
    ("separator-then-trailing-dot", "a/b."),
)

_CONTROL = (
    *(HostileKey(f"control-{code:#04x}", f"k{chr(code)}y", CLAUSE_CONTROL) for code in CONTROL_CODE_POINTS),
    *_table(
        CLAUSE_CONTROL,
        ("nul-alone", "\x00"),
        ("nul-before-suffix", "key\x00.npy"),
        ("newline-at-end", "key\n"),
        ("control-before-slash", "\x01/etc"),
        ("control-after-device-name", "CON\x00"),
        ("tab-before-trailing-dot", "a\t."),
        ("delete-at-start", "\x7fkey"),
    ),
)

_DEVICE = _table(
    CLAUSE_RESERVED,
    ("con", "CON"),
    ("con-lower", "con"),
    ("con-mixed-case", "cOn"),
    ("con-extension", "con.txt"),
    ("con-upper-extension", "CON.txt"),
    ("con-two-extensions", "CON.a.b"),
    ("nul-title-case", "Nul"),
    ("nul-double-extension", "NUL.tar.gz"),
    ("prn", "PRN"),
    ("aux-lower", "aux"),
    ("aux-json", "AUX.json"),
    ("com0", "COM0"),
    ("com1", "COM1"),
    ("com1-npy", "COM1.npy"),
    ("com9-lower", "com9"),
    ("lpt0", "LPT0"),
    ("lpt1-lower", "lpt1"),
    ("lpt9-log", "LPT9.log"),
    ("com-superscript-one", "COM\u00b9"),
    ("com-superscript-two-lower", "com\u00b2"),
    ("lpt-superscript-three-extension", "LPT\u00b3.x"),
    ("conin", "CONIN$"),
    ("conout-lower", "conout$"),
    ("conout-log", "CONOUT$.log"),
    ("con-space-before-extension", "CON .txt"),
    ("con-spaces-before-extension", "CON  .txt"),
    ("con-trailing-dot", "CON."),
    ("nul-lower-trailing-dot", "nul."),
    ("aux-two-trailing-dots", "AUX.."),
    ("con-extension-trailing-dot", "con.txt."),
    ("con-extension-trailing-space", "CON.txt "),
    ("nul-las", "nul.las"),
    legacy=True,
)

_TRAILING = _table(
    CLAUSE_TRAILING,
    ("trailing-dot", "a."),
    ("trailing-space", "a "),
    ("dot-then-space", "a. "),
    ("space-then-dot", "a ."),
    ("two-trailing-dots", "x.."),
    ("many-trailing-dots", "trailing..."),
    ("dotfile-trailing-dot", ".hidden."),
    ("npy-trailing-dot", "k.npy."),
    ("space-only", " "),
    ("spaces-only", "   "),
    ("dot-space-only", ". "),
    ("con-space-dot", "CON ."),
    ("con-lower-space-dot", "con ."),
    ("com1-trailing-space", "com1 "),
    ("con-trailing-space", "CON "),
    legacy=True,
)

_NEVER_ON_DISK = _table(
    CLAUSE_TRAILING,
    # Longer than any name a store can hold beside its sidecar, so no store holds it.
    ("too-long-and-trailing-dot", "a" * 300 + "."),
)

_ENCODING = _table(
    CLAUSE_ENCODING,
    ("lone-high-surrogate", "\ud800"),
    ("lone-low-surrogate-inside", "a\udfffb"),
    ("surrogateescape-byte", "\udc80"),
    ("high-surrogate-at-end", "ok\ud83d"),
    ("surrogate-pair-as-code-units", "\ud83d\ude00"),
    ("reversed-surrogates", "\udfff\ud800"),
    ("too-long-with-surrogate", "a" * 300 + "\ud800"),
    # Over-long UTF-8 encodings of '.' and '/' (C0 AE, C0 AF) decoded with surrogateescape, as
    # os.fsdecode does for undecodable bytes: they must never become a traversal.
    ("overlong-utf8-dotdot", b"\xc0\xae\xc0\xae".decode("utf-8", "surrogateescape")),
    ("overlong-utf8-slash", b"x\xc0\xafy".decode("utf-8", "surrogateescape")),
)

_LENGTH = (
    # Up to 245 bytes, '<key>.meta.json' still fits in a file name: a store may hold such a key.
    *_table(
        CLAUSE_LENGTH,
        ("ascii-242-bytes", "a" * 242),
        ("two-byte-121-chars", "\u00e9" * 121),
        ("three-byte-81-chars", "\u20ac" * 81),
        ("four-byte-61-emoji", "\U0001f600" * 61),
        ("ascii-240-plus-two-byte", "a" * 240 + "\u00e9"),
        ("npy-suffixed-242-bytes", "a" * 238 + ".npy"),
        ("ascii-245-bytes", "a" * 245),
        legacy=True,
    ),
    *_table(
        CLAUSE_LENGTH,
        ("ascii-246-bytes", "a" * 246),
        ("two-byte-123-chars", "\u00e9" * 123),
        ("ten-thousand-bytes", "k" * 10_000),
    ),
)

HOSTILE_STR_KEYS: Final[tuple[HostileKey, ...]] = (
    *_TRAVERSAL,
    *_ABSOLUTE,
    *_SEPARATOR,
    *_CONTROL,
    *_DEVICE,
    *_TRAILING,
    *_NEVER_ON_DISK,
    *_ENCODING,
    *_LENGTH,
)
"""Every ``str`` key that must be refused, with its first clause."""

LEGACY_KEYS: Final[tuple[HostileKey, ...]] = tuple(hostile for hostile in HOSTILE_STR_KEYS if hostile.legacy)
"""The refused keys a store written before the key rule may hold: readable, never created."""

NON_STR_KEYS: Final[tuple[HostileKey, ...]] = _table(
    NOT_A_STR,
    ("none", None),
    ("int", 1),
    ("bool", True),
    ("float", 1.5),
    ("bytes", b"k"),
    ("bytearray", bytearray(b"k")),
    ("path", Path("k")),
    ("pure-posix-path", PurePosixPath("k")),
    ("pure-windows-path", PureWindowsPath("k")),
    ("memoryview", memoryview(b"k")),
    ("tuple", ("a",)),
    ("list", ["k"]),
    ("object", object()),
)
"""Keys of the wrong type; the error is a ``StoreKeyError`` that is also a ``TypeError``."""

HOSTILE_KEYS: Final[tuple[HostileKey, ...]] = (*HOSTILE_STR_KEYS, *NON_STR_KEYS)
"""Every key that must be refused."""

LEGAL_KEYS: Final[tuple[str, ...]] = (
    # The rule's own examples.
    ".hidden",
    "foo.bar",
    "a.npy",
    "z1.2345678",
    "rrim_pack_(range,r16,d8,z1e-05)",
    "\uff23\uff2f\uff2e",  # fullwidth CON: not a device name
    "\u00e9" * 120,
    # Exactly MAX_KEY_UTF8_BYTES (241) bytes in 1-, 2-, 3- and 4-byte characters, and just under.
    "a" * 241,
    "\u00e9" * 120 + "a",
    "\u20ac" * 80 + "a",
    "\U0001f600" * 60 + "a",
    "\u20ac" * 80,
    "\U0001f600" * 60,
    # Plain and punctuation.
    "k",
    "0",
    "-",
    "_",
    "~",
    "#",
    "%2e%2e",
    "a b",
    " leading space",
    "..a",
    ".npy",
    # Names that look like our own artefacts are still just keys.
    "k.npy.tmp",
    "a.meta.json",
    "x.dat",
    "x.pkl",
    # Unicode, taken as given: NFC and NFD spellings are distinct legal keys.
    "caf\u00e9",
    "cafe\u0301",
    "\u65e5\u672c\u8a9e",
    "\u0395\u03bb\u03bb\u03b7\u03bd\u03b9\u03ba\u03ac",
    "emoji\U0001f600",
    "a\u3000",  # ideographic space is not ' '
    "a\u00a0",  # no-break space is not ' '
    "a\u2003",
    "a\u200b",
    "a\x80",  # C1 controls are outside the rule's control range
    "a\u0085",
    # Near misses of the device names.
    "CONX",
    "xCON",
    " CON",
    "CON_",
    "CON$",
    "CONIN",
    "COM",
    "LPT",
    "COM10",
    "LPT10",
    "COM\u2074",  # superscript four is not in the list
    "\uff23\uff2f\uff2d\uff11",
    "console",
    "null",
    "auxiliary",
    "con-txt",
)
"""Keys the rule must accept."""


def key_id(key: object) -> str:
    """Return a short ASCII pytest id for ``key`` (long keys are cut; the length of their ascii() form is kept)."""
    text = ascii(key)
    return text if len(text) <= 40 else f"{text[:32]}...len{len(text)}"
