"""PNG bar chart of every target: measured value over required value, ours next to the original.

All targets share one log axis by plotting headroom (1.0 = exactly on target, right of the line
= met), with the raw ratio and the rule printed on each bar. Uses matplotlib's Agg backend.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from common import TargetOutcome

__all__ = ["plot_targets"]


def _pyplot() -> Any:
    matplotlib = importlib.import_module("matplotlib")
    matplotlib.use("Agg")
    return importlib.import_module("matplotlib.pyplot")


def plot_targets(outcomes: Sequence[TargetOutcome], path: Path, *, subtitle: str) -> None:
    """Write the chart to ``path``; raises ImportError when matplotlib is missing."""
    plt = _pyplot()
    labels = [o.label for o in outcomes]
    ours = [o.target.headroom(o.value) for o in outcomes]
    theirs = [o.target.headroom(o.original_value) for o in outcomes]
    finite = [v for v in ours + theirs if not math.isnan(v)] or [1.0]
    # Headroom past 30x (a peak RSS of 0.1 MiB against 80) would squash every other bar; such bars
    # are clipped at the edge and keep their exact value in the label.
    low, high = min(min(finite), 0.5) / 1.6, min(max(max(finite), 2.0) * 1.6, 30.0)
    ours = [min(v, high) for v in ours]
    theirs = [min(v, high) for v in theirs]

    height = 0.38
    fig, ax = plt.subplots(figsize=(11, 0.62 * len(outcomes) + 1.6))
    rows = list(range(len(outcomes)))[::-1]
    for row, outcome, value, other in zip(rows, outcomes, ours, theirs, strict=True):
        if not math.isnan(value):
            color = "#2e7d32" if outcome.target.passes(outcome.value) else "#c62828"
            ax.barh(row + height / 2, value - low, height, left=low, color=color)
            text = f"{outcome.target.describe(outcome.value)} (target {outcome.target.rule()})"
            ax.text(low * 1.05, row + height / 2, text, va="center", fontsize=8, color="white")
        else:
            ax.text(low * 1.05, row + height / 2, f"ours: {outcome.verdict}", va="center", fontsize=8)
        if not math.isnan(other):
            ax.barh(row - height / 2, other - low, height, left=low, color="#9e9e9e")
            original_text = f"GSEGUtils 0.5.2: {outcome.target.describe(outcome.original_value)}"
            ax.text(low * 1.05, row - height / 2, original_text, va="center", fontsize=7)
    ax.axvline(1.0, color="black", linestyle="--", linewidth=1)
    ax.set_xscale("log")
    ax.set_xlim(low, high)
    ax.set_yticks(rows)
    ax.set_yticklabels(labels, fontsize=8)
    ax.set_xlabel("measured / required  (>= 1 meets the target; log scale)")
    ax.set_title(f"lazy_disk_cache against its targets (green met, red missed, grey original)\n{subtitle}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
