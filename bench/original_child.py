"""Runs inside ``bench/.venv-gsegutils``: the timed cases with the original classes.

Usage: ``python bench/original_child.py SETTINGS.json RESULT.json``. Only the baselines the
targets compare against are measured next to the original, to keep the run short.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from bench_convert import BEST_READ, OS_WRITE, RAW_MMAP, RAW_MMAP_READ, READINTO, convert_cases, load_and_read_cases
from bench_store import GROUP_COMMIT, NP_LOAD_MMAP, NP_LOAD_RAM, disk_cases, reload_cases, write_cases
from common import Settings, environment, load_impl

__all__ = ["main"]

_BASELINES = {OS_WRITE, RAW_MMAP, RAW_MMAP_READ, READINTO, BEST_READ, GROUP_COMMIT, NP_LOAD_RAM, NP_LOAD_MMAP}


def main(argv: list[str]) -> int:
    settings = Settings.from_json(json.loads(Path(argv[0]).read_text()))
    impl = load_impl("original")
    if impl.array_na or impl.store_na:
        print(f"original package unusable: {impl.array_na or impl.store_na}", file=sys.stderr)
        return 1
    cases = []
    # Strided sources are context for the original (it copies them like any array); leaving them
    # out keeps its run short.
    cases += convert_cases(settings, impl, baselines=_BASELINES, kinds=("f32", "rec20"))
    cases += load_and_read_cases(settings, impl, baselines=_BASELINES)
    cases += write_cases(settings, impl, baselines=_BASELINES)
    cases += disk_cases(settings, impl, baselines=_BASELINES)
    cases += reload_cases(settings, impl, baselines=_BASELINES)
    env = [(k, v) for k, v in environment(settings.workdir) if k in ("Python", "numpy")]
    payload = {"environment": env, "cases": [case.to_json() for case in cases]}
    Path(argv[1]).write_text(json.dumps(payload))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
