"""Print the counts the reliability campaigns appended to a report file (``LDC_RELIABILITY_REPORT``).

Usage: report_summary.py REPORT_FILE

Each line of the file is one JSON object written by ``crash_harness.report_counts``; this prints
one block per campaign, nested counts flattened to ``name.sub`` rows.
"""

import json
import sys
from pathlib import Path
from typing import Any


def flatten(prefix: str, value: Any) -> list[tuple[str, Any]]:
    if isinstance(value, dict):
        return [row for name, inner in value.items() for row in flatten(f"{prefix}.{name}" if prefix else name, inner)]
    return [(prefix, value)]


def main() -> None:
    path = Path(sys.argv[1])
    lines = path.read_text(encoding="utf-8").splitlines() if path.exists() else []
    if not lines:
        sys.stdout.write("no campaign reported any counts\n")
        return
    for line in lines:
        record = json.loads(line)
        sys.stdout.write(f"\n== {record.pop('campaign')}\n")
        for name, value in flatten("", record):
            sys.stdout.write(f"  {name:<48} {value}\n")


if __name__ == "__main__":
    main()
