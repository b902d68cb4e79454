"""Just enough ELF64 reading to judge a built extension: its section names and the symbol versions it needs.

Only little-endian ELF64 (x86_64, aarch64) is read; anything else raises ValueError.
"""

import struct
from dataclasses import dataclass
from pathlib import Path

_ELF_HEADER = struct.Struct("<16sHHIQQQIHHHHHH")
_SECTION_HEADER = struct.Struct("<IIQQQQIIQQ")
_VERNEED = struct.Struct("<HHIII")
_VERNAUX = struct.Struct("<IHHII")
_SHT_GNU_VERNEED = 0x6FFFFFFE


@dataclass(frozen=True)
class _Section:
    name: str
    kind: int
    offset: int
    size: int
    link: int


def _c_string(data: bytes, offset: int) -> str:
    return data[offset : data.index(b"\0", offset)].decode("ascii")


def _sections(data: bytes) -> list[_Section]:
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        raise ValueError("not a little-endian ELF64 file")
    header = _ELF_HEADER.unpack_from(data)
    table_offset, entry_size, count, names_index = header[6], header[11], header[12], header[13]
    raw = [_SECTION_HEADER.unpack_from(data, table_offset + i * entry_size) for i in range(count)]
    names_offset = raw[names_index][4]
    return [
        _Section(_c_string(data, names_offset + name), kind, offset, size, link)
        for name, kind, _flags, _addr, offset, size, link, _info, _align, _entsize in raw
    ]


def section_names(path: Path) -> set[str]:
    """The names of every section in the ELF file at ``path``."""
    return {section.name for section in _sections(path.read_bytes())}


def needed_versions(path: Path) -> dict[str, set[str]]:
    """The symbol versions the ELF file at ``path`` needs, by library (its ``.gnu.version_r``)."""
    data = path.read_bytes()
    sections = _sections(data)
    needed: dict[str, set[str]] = {}
    for section in sections:
        if section.kind != _SHT_GNU_VERNEED:
            continue
        strings = sections[section.link].offset
        entry = section.offset
        while True:
            _version, aux_count, file_name, aux, next_entry = _VERNEED.unpack_from(data, entry)
            versions = needed.setdefault(_c_string(data, strings + file_name), set())
            aux_entry = entry + aux
            for _ in range(aux_count):
                _hash, _flags, _other, name, next_aux = _VERNAUX.unpack_from(data, aux_entry)
                versions.add(_c_string(data, strings + name))
                aux_entry += next_aux
            if next_entry == 0:
                break
            entry += next_entry
    return needed
