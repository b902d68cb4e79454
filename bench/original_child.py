"""Runs inside ``bench/.venv-gsegutils``: the timed cases with the original classes.

Usage: ``python bench/original_child.py SETTINGS.json RESULT.json``. Only the baselines the
targets compare against are measured next to the original, to keep the run short.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from bench_convert import BEST_READ, OS_WRITE, RAW_MMAP, RAW_MMAP_READ, READINTO, convert_cases, load_and_read_cases
from bench_store import GROUP_COMMIT, NP_LOAD_RAM, reload_cases, write_cases
from common import Settings, environment, load_impl

__all__ = ["main"]

_BASELINES = {OS_WRITE, RAW_MMAP, RAW_MMAP_READ, READINTO, BEST_READ, GROUP_COMMIT, NP_LOAD_RAM}


def main(argv: list[str]) -> int:
    settings = Settings.from_json(json.loads(Path(argv[0]).read_text()))
    impl = load_impl("original")
    if impl.array_na or impl.store_na:
        print(f"original package unusable: {impl.array_na or impl.store_na}", file=sys.stderr)
        return 1
    cases = []
    # Strided sources carry no target; leaving them out keeps the original's run short.
    cases += convert_cases(settings, impl, baselines=_BASELINES, kinds=("f32", "rec20"))
    cases += load_and_read_cases(settings, impl, baselines=_BASELINES)
    # Likewise only the store sets a target names: the many-key write and the big-entry reload.
    cases += write_cases(settings, impl, baselines=_BASELINES, sets=("many",))
    cases += reload_cases(settings, impl, baselines=_BASELINES, sets=("big",))
    env = [(k, v) for k, v in environment(settings.workdir) if k in ("Python", "numpy")]
    payload = {"environment": env, "cases": [case.to_json() for case in cases]}
    Path(argv[1]).write_text(json.dumps(payload))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
