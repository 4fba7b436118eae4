"""Generated vs released corruptions: for one model evaluated both on robustkit's generated corruptions
and on the released files (CIFAR-10-C / ImageNet-C), the accuracy per corruption side by side and the gap.

A pair is two runs whose corruption results come from the same model (same ``sha256``, or the same model
source when there is no file hash) with ``source: generated`` and ``source: released``.
"""

from __future__ import annotations

from collections.abc import Sequence

from robustkit.report.formatting import _md_table
from robustkit.report.results import corruption_means
from robustkit.report.runs import RunResult


def _model_key(run: RunResult) -> str | None:
    c = run.corruptions or {}
    return c.get("sha256") or c.get("model_source")


def released_pairs(runs: Sequence[RunResult]) -> list[tuple[RunResult, RunResult]]:
    by_model: dict[str, dict[str, RunResult]] = {}
    for run in runs:
        if run.corruptions and _model_key(run):
            by_model.setdefault(_model_key(run), {})[run.corruptions.get("source") or "generated"] = run
    return [(kinds["generated"], kinds["released"]) for kinds in by_model.values()
            if "generated" in kinds and "released" in kinds]


def released_section(runs: Sequence[RunResult]) -> tuple[str, list[str]]:
    pairs = released_pairs(runs)
    if not pairs:
        return "", []
    text = ["## Generated vs released corruptions", "",
            "Mean accuracy over severities (%), robustkit's generated corruptions next to the released files, "
            "for the same model; gap = generated - released.", ""]
    for gen, rel in pairs:
        g, r = corruption_means(gen.corruptions), corruption_means(rel.corruptions)
        rows = [[c, f"{100 * g[c]:.1f}", f"{100 * r[c]:.1f}", f"{100 * (g[c] - r[c]):+.1f}"] for c in g if c in r]
        if rows:
            text += [f"`{gen.name}` (generated) vs `{rel.name}` (released)", "",
                     _md_table(["Corruption", "Generated", "Released", "Gap"], rows), ""]
    return "\n".join(text), []
