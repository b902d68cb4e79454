"""Corrupt, truncated and mismatched artefacts: a ValueError naming the file, never a crash.

``child/corrupt_artefacts.py`` damages one file of a valid stored entry per case (``.npy`` headers
and payloads, sidecars) or an offloaded entry's ``.dat``, then loads it, all in one child run
under ``-X faulthandler``: an interpreter crash would show as the child dying, not as a failed
case. Each defect must raise ``ValueError`` (or the documented ``OSError`` for a missing or
replaced ``.dat``) whose message, ``filename`` or notes name the damaged file. The two tolerated
rows load the right value: a stale sidecar (the ``.npy`` header wins) and a header without its
final newline (NumPy reads it too).
"""

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from crash_harness import report_counts

CHILD = Path(__file__).parent / "child" / "corrupt_artefacts.py"

NPY_DEFECTS = (
    "empty-file",
    "truncated-in-magic",
    "truncated-header",
    "bad-magic",
    "unknown-format-version",
    "huge-header-length-v1",
    "huge-header-length-v2",
    "payload-one-byte-short",
    "payload-missing",
    "shape-larger-than-the-file",
    "overflowing-shape",
    "negative-shape",
    "non-integer-shape",
    "shape-not-a-tuple",
    "unterminated-descr-literal",
    "descr-is-a-function-call",
    "object-descr",
    "unknown-dtype-descr",
    "huge-itemsize-descr",
    "malformed-structured-descr",
    "fortran-order-not-a-bool",
    "header-missing-a-field",
    "header-with-an-extra-field",
    "header-not-a-dict",
    "header-deeply-nested",
    "random-bytes",
)
SIDECAR_DEFECTS = (
    "invalid-json",
    "empty-sidecar",
    "not-utf8",
    "json-array",
    "json-string",
    "deeply-nested-json",
    "schema-2",
    "schema-true",
    "schema-float",
    "schema-string",
    "schema-nan",
    "schema-huge",
    "schema-missing",
    "schema-duplicated-last-wins",
    "class-missing",
    "class-not-a-string",
    "class-import-path",
    "class-abstract-base",
    "flag-not-a-bool",
    "flag-null",
)
DAT_DEFECTS = ("dat-one-byte-short", "dat-empty")
DAT_OS_ERRORS = {"dat-missing": "FileNotFoundError", "dat-replaced-by-a-directory": "IsADirectoryError"}
TOLERATED = ("stale-sidecar", "header-not-newline-terminated")


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    root = tmp_path_factory.mktemp("corrupt")
    child = subprocess.run(
        [sys.executable, "-X", "faulthandler", str(CHILD), str(root)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert child.returncode == 0, f"the loader died ({child.returncode}):\n{child.stderr}"
    report: dict[str, dict[str, Any]] = json.loads(child.stdout)
    raised = sum(outcome["raised"] is not None for outcome in report.values())
    report_counts("corrupt-artefacts", {"cases": len(report), "refused": raised, "crashes": 0})
    return report


def _names_the_file(outcome: dict[str, Any]) -> bool:
    path = outcome["path"]
    return path in outcome["message"] or outcome["filename"] == path or any(path in note for note in outcome["notes"])


def test_the_table_covers_every_case_the_loader_ran(outcomes: dict[str, dict[str, Any]]) -> None:
    expected = {*NPY_DEFECTS, *SIDECAR_DEFECTS, *DAT_DEFECTS, *DAT_OS_ERRORS, *TOLERATED}

    assert set(outcomes) == expected


@pytest.mark.parametrize("case", [*NPY_DEFECTS, *SIDECAR_DEFECTS, *DAT_DEFECTS])
def test_a_damaged_artefact_raises_value_error_naming_the_file(outcomes: dict[str, dict[str, Any]], case: str) -> None:
    outcome = outcomes[case]

    assert outcome["raised"] is not None, f"{case} loaded: {outcome['result']}"
    assert "ValueError" in outcome["raised"], outcome["traceback"]
    assert _names_the_file(outcome), f"{outcome['path']} is not named by {outcome['message']!r} {outcome['notes']}"


@pytest.mark.parametrize("case", list(DAT_OS_ERRORS))
def test_a_missing_or_replaced_dat_raises_the_os_error_naming_it(
    outcomes: dict[str, dict[str, Any]], case: str
) -> None:
    outcome = outcomes[case]

    assert outcome["raised"] is not None and outcome["raised"][0] == DAT_OS_ERRORS[case], outcome
    assert outcome["filename"] == outcome["path"]


@pytest.mark.parametrize("case", TOLERATED)
def test_a_tolerated_deviation_loads_the_right_value(outcomes: dict[str, dict[str, Any]], case: str) -> None:
    outcome = outcomes[case]

    assert outcome["raised"] is None, outcome.get("traceback")
    assert outcome["result"] == "((4, 3), 'float64', True)"
