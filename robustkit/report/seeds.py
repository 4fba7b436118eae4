"""Runs that differ only in their seed, summarised: mean ± std of every robustness number, and a plot
whose error bars show the spread.

A group is (dataset, labels, method, architecture, steps). Numbers per run are taken from its eval JSON
(clean accuracy, accuracy at every ε, the benchmark's corruption accuracy over the 15 x 5 or, for a run without
it, the mean over its evaluated cells) and, with a baseline run, its mCE; a
group's entry is the mean and the sample standard deviation over its runs (just the mean for one run).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field

from robustkit.report.corruption_error import _versus_baseline
from robustkit.report.formatting import _fmt_eps, _md_table
from robustkit.report.paper import _PAPER_ROW_NAMES
from robustkit.report.protocols import protocol_numbers
from robustkit.report.results import _fgsm_points
from robustkit.report.runs import RunResult


@dataclass
class SeedGroup:
    method: str
    dataset: str
    labels: int | None
    arch: str
    steps: int | None = None   # the training length: runs of another length are another group
    runs: list[RunResult] = field(default_factory=list)
    values: dict[str, list[float]] = field(default_factory=dict)   # column -> one value per run (NaN if absent)

    @property
    def seeds(self) -> list[int]:
        return sorted(s for s in (r.seed for r in self.runs) if s is not None)


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """(mean, sample std) of the finite values; std 0 for one value, NaNs for none."""
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return math.nan, math.nan
    return statistics.fmean(finite), (statistics.stdev(finite) if len(finite) > 1 else 0.0)


def seed_groups(runs: Sequence[RunResult], base: RunResult | None) -> list[SeedGroup]:
    """Runs with eval results grouped by everything but the seed, in the paper's method order."""
    groups: dict[tuple, SeedGroup] = {}
    for run in runs:
        if not (run.fgsm or run.corruptions):
            continue
        key = (run.dataset, run.labels, run.method, run.arch, run.steps)
        groups.setdefault(key, SeedGroup(run.method, run.dataset, run.labels, run.arch, run.steps)).runs.append(run)
    eps = sorted({e for run in runs if run.fgsm for e in _fgsm_points(run.fgsm) if e > 0})
    for group in groups.values():
        cols: dict[str, list[float]] = {"clean": [], **{f"eps:{e}": [] for e in eps}, "corruption": [],
                                        "evaluated": [], "mce": []}
        for run in group.runs:
            points = _fgsm_points(run.fgsm) if run.fgsm else {}
            clean = run.clean_accuracy
            cols["clean"].append(math.nan if clean is None else clean)
            for e in eps:
                cols[f"eps:{e}"].append(points.get(e, math.nan))
            nums = protocol_numbers(run.corruptions) if run.corruptions else None
            bench = nums.accuracy if nums else None
            evaluated = nums.evaluated_mean if nums and not nums.complete else None
            cols["corruption"].append(math.nan if bench is None else bench)
            cols["evaluated"].append(math.nan if evaluated is None else evaluated)
            cols["mce"].append(_versus_baseline(run, base)[1] if base is not None else math.nan)
        group.values = cols
    order = list(_PAPER_ROW_NAMES)
    return sorted(groups.values(), key=lambda g: (g.dataset, g.labels or 0, order.index(g.method)
                                                  if g.method in order else 99, g.method, g.arch, g.steps or 0))


def _cell(values: Sequence[float]) -> str:
    mean, std = mean_std(values)
    if not math.isfinite(mean):
        return ""
    n = sum(math.isfinite(v) for v in values)
    return f"{100 * mean:.1f}" if n < 2 else f"{100 * mean:.1f} ± {100 * std:.1f}"


def seeds_section(runs: Sequence[RunResult], base: RunResult | None) -> tuple[str, list[str]]:
    """The '## Across seeds' table; empty when no group has two runs."""
    groups = seed_groups(runs, base)
    if not any(len(g.runs) > 1 for g in groups):
        return "", []
    cols = list(groups[0].values)
    show = [c for c in cols if any(any(math.isfinite(v) for v in g.values[c]) for g in groups)]
    names = {"clean": "Clean", "corruption": "Corr. acc. 15×5", "evaluated": "Mean evaluated", "mce": "mCE"}
    header = ["Method", "Dataset", "Labels", "Arch", "Steps", "n", "Seeds",
              *(names.get(c) or f"FGSM ε={_fmt_eps(float(c[4:]))}" for c in show)]
    rows = [[g.method, g.dataset.split("/")[-1], "all" if g.labels is None else str(g.labels), g.arch,
             "?" if g.steps is None else f"{g.steps:,}", str(len(g.runs)), ", ".join(map(str, g.seeds)),
             *(_cell(g.values[c]) for c in show)] for g in groups]
    text = ["## Across seeds (mean ± std)", "",
            "Runs that differ only in their seed: mean ± sample std over the seeds, in % "
            + (f"(mCE against the baseline run `{base.name}`)." if base is not None else "."), "",
            _md_table(header, rows, left=7)]
    notes = ["A difference between methods smaller than their std is within seed-to-seed noise."]
    if "evaluated" in show:
        notes.append("Mean evaluated: mean over the corruption cells of runs that lack some of the 15 x 5 "
                     "(not a benchmark number).")
    return "\n".join(text), notes
