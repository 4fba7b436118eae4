"""Reading result dicts (``eval/fgsm.json``, ``eval/corruptions.json``): checks, points, cells, means."""

from __future__ import annotations

import statistics
from collections.abc import Mapping
from typing import Any

Result = Mapping[str, Any]

# --------------------------------------------------------------------------------------------------
# Reading result dicts
# --------------------------------------------------------------------------------------------------
_NAN = float("nan")


def _check_result(result: Result, kind: str) -> None:
    """Raise ValueError if ``result`` is not a well-formed ``kind`` result (callers choose the type)."""
    if not isinstance(result, Mapping):
        raise ValueError(f"a {kind} result must be a JSON object, got {type(result).__name__}")
    if result.get("kind", kind) != kind:
        raise ValueError(f"expected a {kind!r} result, got kind {result.get('kind')!r}")
    records = result.get("results")
    if not isinstance(records, list):
        raise ValueError(f"{kind} result has no 'results' list")
    keys = ("eps",) if kind == "fgsm" else ("corruption", "severity")
    for rec in records:
        if not isinstance(rec, Mapping) or any(k not in rec for k in (*keys, "accuracy")):
            raise ValueError(f"{kind} record {rec!r} lacks one of {(*keys, 'accuracy')}")
        acc = rec["accuracy"]
        if acc is not None and not (0.0 <= float(acc) <= 1.0):
            raise ValueError(f"{kind} accuracy {acc!r} is not a fraction in [0, 1] (percent given?)")
    clean = result.get("clean_accuracy")
    if clean is not None and not (0.0 <= float(clean) <= 1.0):
        raise ValueError(f"clean_accuracy {clean!r} is not a fraction in [0, 1]")


def attack_label(result: Result) -> str:
    """The attack an attack sweep ran: ``fgsm`` (also for files that predate the key), ``pgd``,
    ``torchattacks:NAME``."""
    return str(result.get("attack") or "fgsm")


def eval_stem(result: Result, kind: str | None = None) -> str:
    """The file name (without suffix) a result is written to in an evaluation folder, one per attack and one
    per corruption source, so that evaluating a model another way adds a file instead of replacing one:
    ``fgsm``, ``pgd``, ``torchattacks-AutoAttack`` (attack sweeps); ``corruptions`` (generated),
    ``corruptions-released`` (the released files)."""
    kind = kind or str(result.get("kind") or "")
    if kind == "fgsm":
        return "".join(ch if ch.isalnum() or ch in "-_." else "-" for ch in attack_label(result))
    if kind == "corruptions":
        return "corruptions-released" if result.get("source") == "released" else "corruptions"
    raise ValueError(f"unknown result kind {kind!r}")


def _eps_key(eps: float) -> float:
    """Epsilons from different runs compare equal when they agree to 1e-9 (8/255 vs 0.0313725...)."""
    return round(float(eps), 9)


def _fgsm_points(result: Result) -> dict[float, float]:
    """eps -> accuracy, sorted by eps; a later record for the same eps wins (a re-run cell)."""
    points: dict[float, float] = {}
    for rec in result.get("results") or []:
        if rec.get("accuracy") is not None:
            points[_eps_key(rec["eps"])] = float(rec["accuracy"])
    return dict(sorted(points.items()))


def _corruption_cells(result: Result) -> dict[str, dict[int, float]]:
    """corruption -> severity -> accuracy, corruptions in first-seen order, severities sorted."""
    cells: dict[str, dict[int, float]] = {}
    for rec in result.get("results") or []:
        if rec.get("accuracy") is not None:
            cells.setdefault(str(rec["corruption"]), {})[int(rec["severity"])] = float(rec["accuracy"])
    return {c: dict(sorted(s.items())) for c, s in cells.items()}


def corruption_means(result: Result) -> dict[str, float]:
    """Accuracy per corruption, averaged over the severities present."""
    return {c: statistics.fmean(s.values()) for c, s in _corruption_cells(result).items() if s}


def mean_corruption_accuracy(result: Result) -> float | None:
    """Unweighted mean over all (corruption, severity) cells present, whichever they are. Not a benchmark
    number unless the cells are exactly the 15 x 5: see :mod:`robustkit.report.protocols` for those."""
    values = [a for s in _corruption_cells(result).values() for a in s.values()]
    return statistics.fmean(values) if values else None


def _severity_means(result: Result) -> dict[int, float]:
    """Accuracy per severity, averaged over the corruptions present at that severity."""
    by_sev: dict[int, list[float]] = {}
    for sev in _corruption_cells(result).values():
        for s, a in sev.items():
            by_sev.setdefault(s, []).append(a)
    return {s: statistics.fmean(v) for s, v in sorted(by_sev.items())}


def _clean(result: Result | None) -> float | None:
    if not result or result.get("clean_accuracy") is None:
        return None
    return float(result["clean_accuracy"])
