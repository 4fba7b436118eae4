"""Generated vs released corruptions: for one model evaluated both on robustkit's generated corruptions
and on the released files (CIFAR-10-C / ImageNet-C), the accuracy per corruption side by side and the gap.

A pair is two results of the same model (same ``sha256``, or the same model source when there is no file
hash), one with ``source: generated`` and one with ``source: released``: both in one run folder
(``corruptions.json`` and ``corruptions-released.json``) or in two.
"""

from __future__ import annotations

from collections.abc import Sequence

from robustkit.report.formatting import _md_table
from robustkit.report.results import Result, corruption_means
from robustkit.report.runs import RunResult


def _model_key(result: Result) -> str | None:
    return result.get("sha256") or result.get("model_source")


def released_pairs(runs: Sequence[RunResult]) -> list[tuple[tuple[RunResult, Result], tuple[RunResult, Result]]]:
    """((run, generated result), (run, released result)) per model that has both; the first run wins."""
    by_model: dict[str, dict[str, tuple[RunResult, Result]]] = {}
    for run in runs:
        for result in run.corruption_results:
            if _model_key(result):
                source = "released" if result.get("source") == "released" else "generated"
                by_model.setdefault(_model_key(result), {}).setdefault(source, (run, result))
    return [(kinds["generated"], kinds["released"]) for kinds in by_model.values()
            if "generated" in kinds and "released" in kinds]


def released_section(runs: Sequence[RunResult]) -> tuple[str, list[str]]:
    pairs = released_pairs(runs)
    if not pairs:
        return "", []
    text = ["## Generated vs released corruptions", "",
            "Mean accuracy over severities (%), robustkit's generated corruptions next to the released files, "
            "for the same model; gap = generated - released.", ""]
    for (gen_run, gen), (rel_run, rel) in pairs:
        g, r = corruption_means(gen), corruption_means(rel)
        rows = [[c, f"{100 * g[c]:.1f}", f"{100 * r[c]:.1f}", f"{100 * (g[c] - r[c]):+.1f}"] for c in g if c in r]
        if rows:
            storage = " stored as released" if gen.get("storage") == "released" else ""
            title = (f"`{gen_run.name}`: generated{storage} vs released" if gen_run is rel_run
                     else f"`{gen_run.name}` (generated{storage}) vs `{rel_run.name}` (released)")
            text += [title, "", _md_table(["Corruption", "Generated", "Released", "Gap"], rows), ""]
    return "\n".join(text), []
