"""The ``lazy-disk-cache`` command line: output of ls and info, verify's exit codes and JSON, gc beside a
live writer, purge, and one-line errors."""

import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from lazy_disk_cache import cli
from lazy_disk_cache.cli import EXIT_DAMAGED, EXIT_ERROR, EXIT_OK, main
from lazy_disk_cache.paths import LOCK_FILE_NAME
from listing import artefacts
from paused_child import paused_child
from stored import flip_bit, write_original_pair, write_store

CHILD = Path(__file__).parent / "child"
ARRAYS = {
    "labels": np.arange(1000, dtype=np.int32),
    "points": np.arange(24, dtype=np.float32).reshape(6, 4),
}


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    """``python -m lazy_disk_cache ARGS`` in a child process."""
    return subprocess.run(
        [sys.executable, "-m", "lazy_disk_cache", *args], capture_output=True, text=True, timeout=120, check=False
    )


@pytest.fixture
def store_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "store"
    write_store(directory, ARRAYS)
    write_original_pair(directory, "old", np.arange(3, dtype=np.int64))
    return directory


def test_ls_prints_one_line_per_key_with_shape_dtype_bytes_class_and_checksum(
    store_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status = main(["ls", str(store_dir)])

    lines = capsys.readouterr().out.splitlines()
    assert status == EXIT_OK
    assert lines[0].split() == ["KEY", "SHAPE", "DTYPE", "BYTES", "CLASS", "CHECKSUM"]
    rows = {line.split()[0]: line for line in lines[1:]}
    assert sorted(rows) == ["labels", "old", "points"]
    assert rows["labels"].split()[1:5] == ["(1000,)", "int32", "4,000", "DiskBackedNDArray"]
    assert rows["points"].split()[1:6] == ["(6,", "4)", "float32", "96", "DiskBackedNDArray"]
    assert rows["labels"].split()[-1].startswith("xxh3-64:")
    assert rows["old"].endswith("none (unverified)")


def test_ls_json_lists_every_key_with_its_recorded_checksum(
    store_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status = main(["ls", str(store_dir), "--json"])

    listing: list[dict[str, Any]] = json.loads(capsys.readouterr().out)
    assert status == EXIT_OK
    assert [item["key"] for item in listing] == ["labels", "old", "points"]
    labels = listing[0]
    assert list(labels) == ["key", "shape", "dtype", "bytes", "class", "checksum", "problem"]
    assert (labels["shape"], labels["dtype"], labels["bytes"], labels["class"]) == (
        [1000],
        "int32",
        4000,
        "DiskBackedNDArray",
    )
    assert labels["checksum"] == json.loads((store_dir / "labels.meta.json").read_text())["checksum"]
    assert listing[1]["checksum"] is None and listing[1]["problem"] is None


def test_ls_shows_a_broken_pair_without_failing(store_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (store_dir / "labels.meta.json").unlink()

    status = main(["ls", str(store_dir), "--json"])

    listing = {item["key"]: item for item in json.loads(capsys.readouterr().out)}
    assert status == EXIT_OK
    assert listing["labels"]["problem"] == "missing sidecar (.meta.json)"
    assert listing["labels"]["shape"] == [1000]


def _leave_working_files(store_dir: Path) -> None:
    """The ``<key>.dat`` working files entries leave beside their pairs, holding the same bytes."""
    for key, array in ARRAYS.items():
        (store_dir / f"{key}.dat").write_bytes(array.tobytes())


def test_info_json_counts_keys_bytes_working_files_temps_and_unknown_files(
    store_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _leave_working_files(store_dir)
    (store_dir / "crashed.npy.tmp").write_bytes(b"left by a crash")
    (store_dir / "notes.txt").write_text("mine")

    status = main(["info", str(store_dir), "--json"])

    summary: dict[str, Any] = json.loads(capsys.readouterr().out)
    assert status == EXIT_OK
    assert summary["keys"] == 3
    assert summary["incomplete_pairs"] == []
    stored = [path for path in store_dir.iterdir() if path.name.endswith((".npy", ".meta.json"))]
    assert summary["stored_bytes"] == sum(path.stat().st_size for path in stored)
    assert summary["working_files"] == len(ARRAYS)
    assert summary["temps"] == ["crashed.npy.tmp"]
    assert summary["unknown"] == ["notes.txt"]
    assert 0 < summary["free_bytes"] <= shutil.disk_usage(store_dir).total


def test_info_prints_a_labelled_line_per_fact(store_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    main(["info", str(store_dir)])

    labels = [line[:15].strip() for line in capsys.readouterr().out.splitlines()]

    assert labels == [
        "directory",
        "keys",
        "stored bytes",
        "working files",
        "temps",
        "legacy pickles",
        "unknown files",
        "free space",
    ]


def test_verify_of_a_clean_store_exits_zero_and_names_the_unverified_keys(store_dir: Path) -> None:
    completed = run_cli("verify", str(store_dir))

    assert completed.returncode == EXIT_OK, completed.stderr
    assert completed.stdout.splitlines() == [
        "unverified  old: no checksum recorded",
        "checked 3 keys: 2 verified, 0 damaged, 1 unverified",
    ]
    assert completed.stderr == "", "no progress bar when stderr is not a terminal"


def test_verify_of_a_damaged_store_exits_one_and_names_the_damage(store_dir: Path) -> None:
    flip_bit(store_dir / "points.npy", (4096 + 10) * 8)

    completed = run_cli("verify", str(store_dir))

    assert completed.returncode == EXIT_DAMAGED
    assert completed.stdout.splitlines()[0].startswith("DAMAGED     points: checksum mismatch: ")


def test_verify_json_is_exactly_checked_damaged_unverified(store_dir: Path) -> None:
    (store_dir / "labels.npy").unlink()

    completed = run_cli("verify", str(store_dir), "--json")

    assert completed.returncode == EXIT_DAMAGED
    report = json.loads(completed.stdout)
    assert list(report) == ["checked", "damaged", "unverified"]
    assert report["checked"] == 3
    assert list(report["damaged"]) == ["labels"]
    assert report["damaged"]["labels"].startswith("missing payload: ")
    assert report["unverified"] == ["old"]


def test_verify_of_chosen_keys_checks_only_those(store_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    os.truncate(store_dir / "points.npy", 10)

    status = main(["verify", str(store_dir), "labels", "old", "--json"])

    assert status == EXIT_OK
    assert json.loads(capsys.readouterr().out) == {"checked": 2, "damaged": {}, "unverified": ["old"]}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["verify", "MISSING"], "does not exist"),
        (["verify", "STORE", "absent"], "no stored key 'absent'"),
        (["verify", "STORE", "../escape"], "Invalid store key '../escape'"),
        (["verify"], "the following arguments are required"),
        (["frobnicate"], "invalid choice"),
        (["ls", "FILE"], "is not a directory"),
        (["purge", "STORE", "absent"], "no stored key 'absent'"),
    ],
    ids=["missing-dir", "unknown-key", "illegal-key", "no-dir", "unknown-command", "not-a-dir", "purge-unknown"],
)
def test_usage_and_io_errors_exit_two_with_one_line_on_stderr(store_dir: Path, args: list[str], message: str) -> None:
    (store_dir.parent / "FILE").write_text("x")
    paths = {
        "MISSING": str(store_dir.parent / "missing"),
        "STORE": str(store_dir),
        "FILE": str(store_dir.parent / "FILE"),
    }

    completed = run_cli(*[paths.get(arg, arg) for arg in args])

    assert completed.returncode == EXIT_ERROR
    assert completed.stdout == ""
    lines = completed.stderr.splitlines()
    assert len(lines) == 1, completed.stderr
    assert lines[0].startswith("lazy-disk-cache"), lines
    assert message in lines[0], lines
    assert "Traceback" not in completed.stderr


def test_the_progress_bar_draws_in_place_and_ends_the_line_when_done() -> None:
    stream = io.StringIO()
    bar = cli._ProgressBar("verify", stream)

    bar(512 * 1024**2, 1024**3)
    bar(1024**3, 1024**3)

    drawn = stream.getvalue()
    assert drawn.count("\r") == 2
    assert "verify [###############...............]  50%  512.0 MiB / 1.0 GiB" in drawn
    assert drawn.endswith("100%  1.0 GiB / 1.0 GiB\x1b[K\n")


def test_the_progress_bar_draws_the_finished_line_once_when_the_total_is_reported_twice() -> None:
    stream = io.StringIO()
    bar = cli._ProgressBar("verify", stream)

    bar(1024**3, 1024**3)
    bar(1024**3, 1024**3)

    drawn = stream.getvalue()
    assert drawn.count("\r") == 1
    assert drawn.count("\n") == 1


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize(("quiet", "drawn"), [(False, True), (True, False)], ids=["terminal", "quiet"])
def test_verify_draws_a_bar_on_a_terminal_stderr_unless_quiet(
    store_dir: Path, monkeypatch: pytest.MonkeyPatch, quiet: bool, drawn: bool
) -> None:
    stderr = _Terminal()
    monkeypatch.setattr(sys, "stderr", stderr)

    status = main(["verify", str(store_dir), *(["--quiet"] if quiet else [])])

    assert status == EXIT_OK
    assert ("verify [" in stderr.getvalue()) is drawn


def test_gc_removes_crash_temps_and_unheld_working_files_their_pairs_duplicate_and_keeps_every_pair(
    store_dir: Path,
) -> None:
    for name in ("crashed.npy.tmp", "crashed.meta.json.tmp", "points.dat.tmp"):
        (store_dir / name).write_bytes(b"left by a crash")
    _leave_working_files(store_dir)
    (store_dir / "notes.dat").write_bytes(b"no pair")
    pairs = sorted(path.name for path in store_dir.iterdir() if path.suffix in (".npy", ".json"))

    completed = run_cli("gc", str(store_dir))

    assert completed.returncode == EXIT_OK, completed.stderr
    assert completed.stdout.splitlines() == [
        "removed crashed.meta.json.tmp",
        "removed crashed.npy.tmp",
        "removed points.dat.tmp",
        "removed labels.dat",
        "removed points.dat",
        "kept notes.dat: no committed pair beside it, so it may be the only copy of its data",
    ]
    assert artefacts(store_dir) == sorted([*pairs, "notes.dat"])
    assert run_cli("verify", str(store_dir)).returncode == EXIT_OK


def test_gc_dry_run_says_what_it_would_remove_and_removes_nothing(store_dir: Path) -> None:
    (store_dir / "crashed.npy.tmp").write_bytes(b"left by a crash")
    before = sorted(path.name for path in store_dir.iterdir())

    completed = run_cli("gc", str(store_dir), "--dry-run")

    assert completed.returncode == EXIT_OK, completed.stderr
    assert completed.stdout.splitlines()[0] == "would remove crashed.npy.tmp"
    assert sorted(path.name for path in store_dir.iterdir()) == before


@pytest.mark.parametrize("mode", ["mid-payload", "staged"])
def test_gc_while_another_process_is_writing_removes_only_dead_temps_and_leaves_its_commit_intact(
    tmp_path: Path, mode: str
) -> None:
    (tmp_path / "crashed.npy.tmp").write_bytes(b"left by a crash")
    with paused_child(CHILD / "paused_writer.py", str(tmp_path), mode, ready="paused") as printed:
        temps_during = sorted(name for name in os.listdir(tmp_path) if name.endswith(".tmp"))

        gc_during = run_cli("gc", str(tmp_path))

        temps_after_gc = sorted(name for name in os.listdir(tmp_path) if name.endswith(".tmp"))

    assert gc_during.returncode == EXIT_OK, gc_during.stderr
    assert "crashed.npy.tmp" in temps_during
    assert temps_after_gc == [name for name in temps_during if name != "crashed.npy.tmp"], gc_during.stdout
    assert gc_during.stdout.splitlines()[0] == "removed crashed.npy.tmp"
    assert all(line.endswith(": a live writer holds it") for line in gc_during.stdout.splitlines()[1:])
    assert printed == ["paused", "committed"]
    assert (
        run_cli("verify", str(tmp_path)).stdout.splitlines()[-1]
        == "checked 2 keys: 2 verified, 0 damaged, 0 unverified"
    )
    np.testing.assert_array_equal(np.load(tmp_path / "second.npy"), np.full(4 * 2**20 // 8, 6.0))
    assert run_cli("gc", str(tmp_path)).stdout == ""


def test_purge_removes_each_key_and_all_its_files(store_dir: Path) -> None:
    _leave_working_files(store_dir)
    completed = run_cli("purge", str(store_dir), "labels", "old")

    assert completed.returncode == EXIT_OK, completed.stderr
    assert completed.stdout.splitlines() == ["purged labels", "purged old"]
    left = sorted(path.name for path in store_dir.iterdir() if path.name != LOCK_FILE_NAME)
    assert left == ["points.dat", "points.meta.json", "points.npy"]


def test_the_console_script_runs_the_command_line(store_dir: Path) -> None:
    script = Path(sys.executable).parent / "lazy-disk-cache"
    if not script.exists():
        pytest.skip(f"the package is not installed with its console script next to {sys.executable}")

    completed = subprocess.run(
        [str(script), "verify", str(store_dir), "--json"], capture_output=True, text=True, timeout=120, check=False
    )

    assert completed.returncode == EXIT_OK, completed.stderr
    assert json.loads(completed.stdout)["checked"] == 3
    assert run_cli("--help").stdout.startswith("usage: lazy-disk-cache ")
