"""One long-format table over many runs (``robustkit report ... --csv results.csv``), for pandas users.

One row per evaluated cell: every record of every run's ``fgsm.json`` (an attack at one ε) and
``corruptions.json`` (a corruption at one severity), with the run's identity repeated on each row, so
``pandas.read_csv`` gives a frame ready for ``groupby``. Nothing is averaged here.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from robustkit import io as rio
from robustkit.errors import RobustkitError
from robustkit.report.protocols import COMMON, EXTRA
from robustkit.report.results import attack_label
from robustkit.report.runs import RunResult

# Column -> meaning; README.md and ``robustkit report --help`` describe the same columns.
COLUMNS: dict[str, str] = {
    "run": "the run's name in the report (folder name, or path below the runs' common parent)",
    "model_source": "what was evaluated: checkpoint path, torchvision:NAME, ...",
    "method": "training method label (baseline, gradaug, gradaug-semi, cutmix-p0.5, ...)",
    "labels": "labeled training images: a number, 'all', or empty when unknown",
    "seed": "training seed (empty when unknown)",
    "arch": "architecture",
    "dataset": "evaluation data spec",
    "kind": "attack | corruption",
    "attack": "fgsm, pgd or torchattacks:NAME (attack rows)",
    "eps": "perturbation size in [0, 1] pixel units (attack rows; 0 = clean)",
    "corruption": "corruption name (corruption rows)",
    "severity": "1..5 (corruption rows)",
    "corruption_set": "benchmark (one of the 15) | extra (one of the 4 validation corruptions) | other",
    "preset": "corruption parameters: cifar-10-c, imagenet-c, released:KIND",
    "eval_seed": "seed of the random corruptions / of the attack's random start",
    "accuracy": "fraction in [0, 1]",
    "n": "test images in this cell",
    "clean_accuracy": "the same evaluation's clean accuracy (repeated on each row)",
    "source": "generated (by robustkit) | released (the published corrupted files)",
    "storage": "float (corrupted images evaluated as computed) | released (stored as the released files were: "
               "8-bit, + JPEG 85 for imagenet-c; and every row of source released) (corruption rows)",
}


def _corruption_set(name: str) -> str:
    return "benchmark" if name in COMMON else "extra" if name in EXTRA else "other"


def _labels(run: RunResult) -> str:
    if not run.has_config:
        return ""
    return "all" if run.labels is None else str(run.labels)


def _storage(result: dict) -> str:
    """How a corruption result's images were stored: files written before ``storage`` existed are float."""
    if result.get("source") == "released":
        return "released"
    return result.get("storage") or "float"


def _blank(value) -> object:
    return "" if value is None else value


def _results(run: RunResult) -> list[tuple[str, dict]]:
    """("attack" | "corruption", result) for every result of the run: each attack, generated and released."""
    return [("attack", a) for a in run.attacks] + [("corruption", c) for c in run.corruption_results]


def long_rows(runs: Sequence[RunResult]) -> list[dict]:
    """The rows of the long table, runs in the given order, attack rows (by ε) before corruption rows."""
    rows = []
    for run in runs:
        for kind, result in _results(run):
            common = {
                "run": run.name,
                "model_source": result.get("model_source") or result.get("checkpoint") or "",
                "method": run.method, "labels": _labels(run), "seed": _blank(run.seed), "arch": run.arch,
                "dataset": run.dataset, "clean_accuracy": _blank(result.get("clean_accuracy")),
            }
            if kind == "attack":
                records = sorted(result.get("results") or [], key=lambda r: float(r["eps"]))
                seed = (result.get("attack_params") or {}).get("seed", result.get("seed"))
                for rec in records:
                    rows.append({**common, "kind": "attack", "attack": attack_label(result),
                                 "eps": rec["eps"], "eval_seed": _blank(seed), "accuracy": _blank(rec.get("accuracy")),
                                 "n": _blank(rec.get("n", result.get("n"))), "source": "generated"})
            else:
                for rec in result.get("results") or []:
                    name = str(rec["corruption"])
                    rows.append({**common, "kind": "corruption", "corruption": name, "severity": int(rec["severity"]),
                                 "corruption_set": _corruption_set(name), "preset": result.get("preset") or "",
                                 "eval_seed": _blank(result.get("seed")), "accuracy": _blank(rec.get("accuracy")),
                                 "n": _blank(rec.get("n", result.get("n"))),
                                 "source": result.get("source") or "generated",
                                 "storage": _storage(result)})
    return rows


def write_long_csv(runs: Sequence[RunResult], path: str | os.PathLike) -> Path:
    """Write :func:`long_rows` to ``path`` (atomically: temp file + rename), columns as in :data:`COLUMNS`."""
    if Path(path).is_dir():
        raise RobustkitError(f"--csv {path} is a folder: give a file name, e.g. {Path(path) / 'results.csv'}")
    return rio.write_csv(path, long_rows(runs), list(COLUMNS))
