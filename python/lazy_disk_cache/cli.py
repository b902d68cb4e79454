"""The ``lazy-disk-cache`` command (also ``python -m lazy_disk_cache``): look into and after a cache directory.

Sub-commands::

    ls DIR [--json]                    one line per stored key: shape, dtype, bytes, class, checksum
    info DIR [--json]                  keys, bytes, working files, temps, unknown files, free space
    verify DIR [KEY ...] [--json]      check stored pairs for damage (exit 1 when any is damaged)
    gc DIR [--dry-run]                 remove temps whose writer is gone, and working files no entry needs
    purge DIR KEY [KEY ...]            remove keys and all their files
    demo [--size-mib N]                walk an array and a store through offload and reload

``ls``, ``info`` and ``verify`` only read, so they work on a read-only directory. Exit status: 0 on
success (``verify``: nothing damaged), 1 when ``verify`` found damage, 2 on a usage or I/O error,
which is reported as one line on stderr. ``verify`` draws a progress bar on stderr when stderr is a
terminal, unless ``--quiet``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple, NoReturn, TextIO

from lazy_disk_cache._codec import (
    CHECKSUM_FIELD,
    decode_layout,
    parse_sidecar,
    read_sidecar_bytes,
)
from lazy_disk_cache._demo import run_demo
from lazy_disk_cache._directories import open_directory
from lazy_disk_cache._inventory import Inventory, take_inventory
from lazy_disk_cache._rust import CacheDir
from lazy_disk_cache._store_dir import collect_stale_working_files, sweep_orphan_temps
from lazy_disk_cache.config import LazyDiskCacheConfig
from lazy_disk_cache.disk_backed_ndarray import DiskBackedNDArray
from lazy_disk_cache.disk_backed_store import DiskBackedStore
from lazy_disk_cache.integrity import VerifyReport, verify_directory
from lazy_disk_cache.paths import get_meta_path, get_npy_path

__all__ = ["EXIT_DAMAGED", "EXIT_ERROR", "EXIT_OK", "PROG", "main"]

PROG = "lazy-disk-cache"
EXIT_OK = 0
EXIT_DAMAGED = 1
EXIT_ERROR = 2
# What a shell reports for a command stopped by Ctrl-C (128 + SIGINT).
_EXIT_INTERRUPTED = 130


class _UsageError(Exception):
    """A command line argparse refused; the message is the whole line to print."""


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr (then exit 2), never a usage block."""

    def error(self, message: str) -> NoReturn:
        raise _UsageError(f"{self.prog}: error: {message} (see --help)")


class _CommandError(Exception):
    """A failure to report as one line, with exit status 2."""


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line ``argv`` (``sys.argv[1:]`` when ``None``); return the exit status."""
    parser = _build_parser()
    try:
        args = parser.parse_args(argv)
        run: Callable[[argparse.Namespace], int] = args.run
        return run(args)
    except _UsageError as exc:
        _print_error(str(exc))
    except KeyboardInterrupt:
        _print_error(f"{PROG}: interrupted")
        return _EXIT_INTERRUPTED
    except (_CommandError, OSError, ValueError, KeyError, RuntimeError) as exc:
        _print_error(f"{PROG}: error: {_describe(exc)}")
    return EXIT_ERROR


def _describe(exc: BaseException) -> str:
    if isinstance(exc, KeyError) and len(exc.args) == 1:
        return f"no stored key {exc.args[0]!r}"
    return str(exc) or type(exc).__name__


def _print_error(line: str) -> None:
    print(line.replace("\n", " "), file=sys.stderr)


def _build_parser() -> _Parser:
    parser = _Parser(prog=PROG, description="Look into and after a lazy_disk_cache directory.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    ls = commands.add_parser("ls", help="list the stored keys: shape, dtype, bytes, class, checksum")
    ls.add_argument("dir", type=Path, metavar="DIR")
    ls.add_argument("--json", action="store_true", help="print one JSON array instead")
    ls.set_defaults(run=_run_ls)

    info = commands.add_parser("info", help="summarise the directory: keys, bytes, temps, unknown files, free space")
    info.add_argument("dir", type=Path, metavar="DIR")
    info.add_argument("--json", action="store_true", help="print one JSON object instead")
    info.set_defaults(run=_run_info)

    verify = commands.add_parser("verify", help="check stored pairs for damage; exit 1 when any is damaged")
    verify.add_argument("dir", type=Path, metavar="DIR")
    verify.add_argument("keys", nargs="*", metavar="KEY", help="keys to check (default: every stored key)")
    verify.add_argument("--json", action="store_true", help='print {"checked", "damaged", "unverified"} as JSON')
    verify.add_argument("--quiet", action="store_true", help="no progress bar")
    verify.set_defaults(run=_run_verify)

    gc = commands.add_parser(
        "gc", help="remove temps whose writer is gone and .dat files no entry holds that their pair duplicates"
    )
    gc.add_argument("dir", type=Path, metavar="DIR")
    gc.add_argument("--dry-run", action="store_true", help="only say what would be removed")
    gc.set_defaults(run=_run_gc)

    purge = commands.add_parser("purge", help="remove keys and all their files")
    purge.add_argument("dir", type=Path, metavar="DIR")
    purge.add_argument("keys", nargs="+", metavar="KEY")
    purge.set_defaults(run=_run_purge)

    demo = commands.add_parser("demo", help="walk a large array and a small store through offload and load")
    demo.add_argument("--size-mib", type=int, default=256, help="size of the demo array (default: 256)")
    demo.set_defaults(run=_run_demo)
    return parser


def _existing_directory(path: Path) -> Path:
    """``path`` made absolute, or a ``_CommandError`` when it is not a directory (nothing is created)."""
    if not path.is_dir():
        reason = "does not exist" if not path.exists() else "is not a directory"
        raise _CommandError(f"{str(path)!r} {reason}")
    return path.absolute()


def _print_json(value: object) -> None:
    print(json.dumps(value, ensure_ascii=False, indent=None))


def _format_bytes(nbytes: int) -> str:
    """``1,234`` below 10 KiB, else ``12.3 MiB`` and the like."""
    if nbytes < 10 * 1024:
        return f"{nbytes:,} B"
    value = float(nbytes)
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        value /= 1024
        if value < 1024 or unit == "TiB":
            break
    return f"{value:.1f} {unit}"


def _print_table(header: Sequence[str], rows: Sequence[Sequence[str]], right: frozenset[int]) -> None:
    widths = [max(len(cell) for cell in column) for column in zip(header, *rows, strict=True)]
    for row in (header, *rows):
        cells = [
            cell.rjust(width) if i in right else cell.ljust(width)
            for i, (cell, width) in enumerate(zip(row, widths, strict=True))
        ]
        print("  ".join(cells).rstrip())


# ---------------------------------------------------------------------------------------------
# ls


class _Listing(NamedTuple):
    """What ``ls`` says about one stored key; ``None`` where the pair does not tell."""

    key: str
    shape: tuple[int, ...] | None
    dtype: str | None
    nbytes: int | None
    class_name: str | None
    checksum: str | None
    problem: str | None

    def to_json(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "shape": None if self.shape is None else list(self.shape),
            "dtype": self.dtype,
            "bytes": self.nbytes,
            "class": self.class_name,
            "checksum": self.checksum,
            "problem": self.problem,
        }


def _describe_key(directory: CacheDir, cache_dir: Path, key: str, inventory: Inventory) -> _Listing:
    """Header and sidecar of ``key``: two small reads, never the payload."""
    shape: tuple[int, ...] | None = None
    dtype = class_name = checksum = problem = None
    nbytes: int | None = None
    if key in inventory.payloads:
        try:
            layout = decode_layout(directory, get_npy_path(cache_dir, key))
            shape, dtype, nbytes = layout.shape, str(layout.dtype), layout.nbytes
        except (ValueError, OSError) as exc:
            problem = f"unreadable header: {exc}"
    else:
        problem = "missing payload (.npy)"
    if key in inventory.sidecars:
        try:
            meta_path = get_meta_path(cache_dir, key)
            meta, class_name = parse_sidecar(read_sidecar_bytes(directory, meta_path), key, meta_path)
            recorded = meta.get(CHECKSUM_FIELD)
            checksum = recorded if isinstance(recorded, str) else None
        except (ValueError, OSError) as exc:
            problem = problem or f"invalid sidecar: {exc}"
    else:
        problem = problem or "missing sidecar (.meta.json)"
    return _Listing(key, shape, dtype, nbytes, class_name, checksum, problem)


def _shape_text(shape: tuple[int, ...] | None) -> str:
    if shape is None:
        return "?"
    return f"({shape[0]},)" if len(shape) == 1 else "(" + ", ".join(map(str, shape)) + ")"


def _checksum_text(listing: _Listing) -> str:
    if listing.problem is not None:
        return f"? ({listing.problem.split(':', 1)[0]})"
    return listing.checksum or "none (unverified)"


def _run_ls(args: argparse.Namespace) -> int:
    cache_dir = _existing_directory(args.dir)
    inventory = take_inventory(cache_dir)
    directory = open_directory(cache_dir)
    listings = [_describe_key(directory, cache_dir, key, inventory) for key in inventory.keys]
    if args.json:
        _print_json([listing.to_json() for listing in listings])
        return EXIT_OK
    rows = [
        [
            listing.key,
            _shape_text(listing.shape),
            listing.dtype or "?",
            "?" if listing.nbytes is None else f"{listing.nbytes:,}",
            listing.class_name or "?",
            _checksum_text(listing),
        ]
        for listing in listings
    ]
    _print_table(["KEY", "SHAPE", "DTYPE", "BYTES", "CLASS", "CHECKSUM"], rows, right=frozenset({3}))
    return EXIT_OK


# ---------------------------------------------------------------------------------------------
# info


def _run_info(args: argparse.Namespace) -> int:
    cache_dir = _existing_directory(args.dir)
    inventory = take_inventory(cache_dir)
    vfs = os.statvfs(cache_dir)
    incomplete = sorted(inventory.payloads.keys() ^ inventory.sidecars.keys())
    summary: dict[str, Any] = {
        "directory": str(cache_dir),
        "keys": len(inventory.keys),
        "incomplete_pairs": incomplete,
        "stored_bytes": sum(inventory.payloads.values()) + sum(inventory.sidecars.values()),
        "working_files": len(inventory.working),
        "working_bytes": sum(inventory.working.values()),
        "temps": sorted(inventory.temps),
        "legacy_pickles": inventory.legacy,
        "unknown": inventory.unknown,
        "free_bytes": vfs.f_bavail * vfs.f_frsize,
    }
    if args.json:
        _print_json(summary)
        return EXIT_OK
    lines = [
        ("directory", summary["directory"]),
        (
            "keys",
            f"{summary['keys']:,}"
            + (f" ({len(incomplete)} incomplete: {', '.join(incomplete)})" if incomplete else ""),
        ),
        ("stored bytes", f"{_format_bytes(summary['stored_bytes'])} in .npy and .meta.json files"),
        ("working files", f"{summary['working_files']:,} .dat ({_format_bytes(summary['working_bytes'])})"),
        ("temps", _names_text(summary["temps"])),
        ("legacy pickles", _names_text(summary["legacy_pickles"])),
        ("unknown files", _names_text(summary["unknown"])),
        ("free space", _format_bytes(summary["free_bytes"])),
    ]
    for label, value in lines:
        print(f"{label:<15}{value}")
    return EXIT_OK


def _names_text(names: Sequence[str]) -> str:
    return f"{len(names)}: {', '.join(names)}" if names else "0"


# ---------------------------------------------------------------------------------------------
# verify


class _ProgressBar:
    """A one-line bar redrawn in place on a terminal: ``verify [#######.......]  48%  1.2 GiB / 2.5 GiB``.

    Small and built in: a progress library would be one more dependency for thirty lines.
    """

    _WIDTH = 30

    def __init__(self, label: str, stream: TextIO) -> None:
        self._label = label
        self._stream = stream
        self._ended = False

    def __call__(self, done: int, total: int) -> None:
        # A meter's last periodic call may already reach the total before its final call: the
        # finished line is drawn once, not again on a line of its own.
        if self._ended:
            return
        fraction = 1.0 if total == 0 else done / total
        filled = math.floor(fraction * self._WIDTH)
        bar = "#" * filled + "." * (self._WIDTH - filled)
        amounts = f"{_format_bytes(done)} / {_format_bytes(total)}"
        self._stream.write(f"\r{self._label} [{bar}] {fraction:>4.0%}  {amounts}\x1b[K")
        if done >= total:
            self._ended = True
            self._stream.write("\n")
        self._stream.flush()


def _run_verify(args: argparse.Namespace) -> int:
    cache_dir = _existing_directory(args.dir)
    show_bar = not args.quiet and sys.stderr.isatty()
    progress = _ProgressBar("verify", sys.stderr) if show_bar else None
    report = verify_directory(cache_dir, args.keys or None, progress=progress)
    if args.json:
        _print_json(report.to_json())
    else:
        _print_verify_report(report)
    return EXIT_OK if report.ok else EXIT_DAMAGED


def _print_verify_report(report: VerifyReport) -> None:
    for key, reason in sorted(report.damaged.items()):
        print(f"DAMAGED     {key}: {reason}")
    for key in report.unverified:
        print(f"unverified  {key}: no checksum recorded")
    verified = report.checked - len(report.damaged) - len(report.unverified)
    print(
        f"checked {report.checked:,} key{'s' if report.checked != 1 else ''}: {verified:,} verified, "
        f"{len(report.damaged):,} damaged, {len(report.unverified):,} unverified"
    )


# ---------------------------------------------------------------------------------------------
# gc


def _run_gc(args: argparse.Namespace) -> int:
    cache_dir = _existing_directory(args.dir)
    inventory = take_inventory(cache_dir)
    directory = open_directory(cache_dir)
    temps = sweep_orphan_temps(directory, dry_run=args.dry_run)
    working = collect_stale_working_files(directory, inventory.working, dry_run=args.dry_run)
    verb = "would remove" if args.dry_run else "removed"
    for name in [*sorted(temps.removed), *working.removed]:
        print(f"{verb} {name}")
    for name in sorted(set(inventory.temps) - set(temps.removed) - {name for name, _ in temps.failed}):
        print(f"kept {name}: a live writer holds it")
    for name, reason in working.kept.items():
        print(f"kept {name}: {reason}")
    failed = [*temps.failed, *working.failed]
    for name, error in failed:
        _print_error(f"{PROG}: error: could not remove {name}: {error}")
    return EXIT_ERROR if failed else EXIT_OK


# ---------------------------------------------------------------------------------------------
# purge, demo


def _run_purge(args: argparse.Namespace) -> int:
    cache_dir = _existing_directory(args.dir)
    config = LazyDiskCacheConfig(enable_caching=True, cache_path=cache_dir, purge_disk_on_gc=False)
    store: DiskBackedStore[DiskBackedNDArray] = DiskBackedStore(config=config, factory=DiskBackedNDArray)
    for key in args.keys:
        store.purge(key)
        print(f"purged {key}")
    return EXIT_OK


def _run_demo(args: argparse.Namespace) -> int:
    if args.size_mib < 1:
        raise _UsageError(f"{PROG} demo: error: --size-mib must be at least 1")
    run_demo(args.size_mib)
    return EXIT_OK
