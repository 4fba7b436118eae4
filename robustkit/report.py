"""Results on disk and on screen: per-checkpoint JSON/CSV/PNG, CE/mCE, and the multi-run report.

Everything here works from result dicts (as produced by ``evaluate``) or from the files other modules
leave in a run folder (``config.yaml``, ``metrics.jsonl``, ``eval/*.json``); it never loads a checkpoint,
so a report can be rebuilt anywhere from a copy of the small files.

Conventions:

* accuracies are fractions in [0, 1] everywhere in data; only tables and plots show percent;
* results are long-format records, ``{"eps", "accuracy", "n"}`` or
  ``{"corruption", "severity", "accuracy", "n"}``; a partial result (a resumed evaluation) simply has
  fewer records, and every summary here is computed over the cells that are there, with the gaps named;
* CE/mCE follow Hendrycks & Dietterich (ICLR 2019), with the baseline chosen by the user instead of a
  hard-coded AlexNet row; they are returned as ratios (1.0 = as bad as the baseline) and shown in %;
* every file is written atomically (:mod:`robustkit.io`), plots use a private ``Figure`` with the Agg
  canvas, so no pyplot global state is created or leaked between plots.
"""

from __future__ import annotations

import json
import math
import os
import re
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from robustkit import io as rio
from robustkit.errors import RobustkitError

__all__ = [
    "PAPER_LOW_DATA",
    "RunResult",
    "collect_runs",
    "corruption_errors",
    "corruption_means",
    "corruption_table",
    "fgsm_table",
    "mce",
    "mean_corruption_accuracy",
    "paper_number",
    "relative_corruption_errors",
    "relative_mce",
    "write_corruption_outputs",
    "write_fgsm_outputs",
    "write_report",
]

Result = Mapping[str, Any]

# --------------------------------------------------------------------------------------------------
# The paper's low-data table (GradAug, Yang et al. NeurIPS 2020, WRN-28-2, accuracy %, mean, std).
# Keyed by (dataset key, number of labels) -> method label -> (mean, std). Kept as data so the report
# can put each of our cells next to the number it tries to reproduce.
# --------------------------------------------------------------------------------------------------
PAPER_LOW_DATA: dict[tuple[str, int], dict[str, tuple[float, float]]] = {
    ("cifar10", 250): {
        "baseline": (45.23, 1.01),
        "gradaug": (50.11, 1.21),
        "gradaug-semi": (52.95, 2.15),
        "mean-teacher": (48.41, 1.01),
    },
    ("cifar10", 1000): {
        "baseline": (64.72, 1.18),
        "gradaug": (70.39, 0.82),
        "gradaug-semi": (71.74, 0.77),
        "mean-teacher": (65.57, 0.83),
    },
    ("cifar10", 4000): {
        "baseline": (80.17, 0.68),
        "gradaug": (83.69, 0.51),
        "gradaug-semi": (84.11, 0.25),
        "mean-teacher": (84.13, 0.28),
    },
    ("stl10", 1000): {
        "baseline": (67.62, 1.06),
        "gradaug": (70.42, 0.81),
        "gradaug-semi": (70.86, 0.71),
    },
}
PAPER_ARCH = "wrn-28-2"
_PAPER_ROW_NAMES = {
    "baseline": "WRN-28-2",
    "gradaug": "+ GradAug",
    "gradaug-semi": "+ GradAug-semi",
    "mean-teacher": "Mean Teacher",
}
_PAPER_COLUMNS = [("cifar10", 250), ("cifar10", 1000), ("cifar10", 4000), ("stl10", 1000)]
_PAPER_DATASET_NAMES = {"cifar10": "CIFAR-10", "stl10": "STL-10"}
# "cifar10" must not match "cifar100": the digit look-ahead keeps CIFAR-100 out.
_CIFAR10 = re.compile(r"cifar-?10(?!\d)", re.IGNORECASE)
_STL10 = re.compile(r"stl-?10(?!\d)", re.IGNORECASE)


def paper_dataset_key(dataset: str) -> str | None:
    """``"cifar10"`` / ``"stl10"`` when ``dataset`` names one of the paper's datasets, else None."""
    if _CIFAR10.search(dataset):
        return "cifar10"
    if _STL10.search(dataset):
        return "stl10"
    return None


def paper_number(dataset: str, labels: int | None, method: str) -> tuple[float, float] | None:
    """The paper's (mean %, std %) for this cell of the low-data table, or None if it has none."""
    key = paper_dataset_key(dataset)
    if key is None or labels is None:
        return None
    return PAPER_LOW_DATA.get((key, int(labels)), {}).get(method)


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
    """Unweighted mean over all (corruption, severity) cells present (the CIFAR-10-C convention)."""
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


# --------------------------------------------------------------------------------------------------
# Corruption errors (Hendrycks & Dietterich 2019)
# --------------------------------------------------------------------------------------------------
def _ratio(num: float, den: float, floor: float = 1e-12) -> float:
    """num / den, NaN when den is below ``floor``: a baseline with no error (or, for relative CE, no
    degradation) gives nothing to normalise by, and a sign flip would read as a spurious win."""
    return num / den if den >= floor else _NAN


def _one_image(result: Result) -> float:
    """The smallest measurable change in accuracy: one test image (1/n), or 1e-12 when n is unknown."""
    n = result.get("n") or max((int(r.get("n") or 0) for r in result.get("results") or []), default=0)
    return 1.0 / n if n else 1e-12


def _common_cells(result: Result, baseline_result: Result) -> dict[str, list[int]]:
    """corruption -> severities both results have (CE is only defined over shared cells)."""
    p, q = result.get("preset"), baseline_result.get("preset")
    if p and q and p != q:
        raise RobustkitError(
            f"corruption presets differ ({p!r} vs baseline {q!r}): CE only compares like with like; "
            "evaluate both checkpoints with the same --preset"
        )
    a, b = _corruption_cells(result), _corruption_cells(baseline_result)
    common = {c: [s for s in a[c] if s in b[c]] for c in a if c in b}
    return {c: sev for c, sev in common.items() if sev}


def corruption_errors(result: Result, baseline_result: Result) -> dict[str, float]:
    """CE_c = sum_s E_{s,c}(f) / sum_s E_{s,c}(baseline), E = 1 - accuracy, over shared severities.

    Corruptions that either result lacks are left out; a corruption on which the baseline made no
    error at all gets NaN. A ratio: 1.0 means as many errors as the baseline.
    """
    a, b = _corruption_cells(result), _corruption_cells(baseline_result)
    return {
        c: _ratio(sum(1 - a[c][s] for s in sev), sum(1 - b[c][s] for s in sev))
        for c, sev in _common_cells(result, baseline_result).items()
    }


def _mean_finite(values: Iterable[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return statistics.fmean(finite) if finite else _NAN


def mce(result: Result, baseline_result: Result) -> float:
    """Mean CE over the corruptions both results have (NaN if none); 1.0 = the baseline's mCE."""
    return _mean_finite(corruption_errors(result, baseline_result).values())


def relative_corruption_errors(result: Result, baseline_result: Result) -> dict[str, float]:
    """Relative CE_c = sum_s (E_{s,c}(f) - E_clean(f)) / sum_s (E_{s,c}(base) - E_clean(base)).

    Measures how much accuracy is *lost* to the corruption, relative to the baseline's loss. Needs
    both results' ``clean_accuracy``; NaN where the baseline loses less than one test image (or gains)
    on a corruption, since there is nothing to normalise by.
    """
    clean_f, clean_b = _clean(result), _clean(baseline_result)
    if clean_f is None or clean_b is None:
        raise RobustkitError(
            "relative CE needs clean_accuracy in both corruption results; re-run `robustkit corrupt` "
            "on the checkpoint whose eval/corruptions.json lacks it"
        )
    a, b = _corruption_cells(result), _corruption_cells(baseline_result)
    e_f, e_b = 1 - clean_f, 1 - clean_b
    # The baseline must lose at least one test image's worth of accuracy to a corruption (summed over
    # severities, less half an image of float slack), else its degradation is zero up to rounding and the
    # ratio would be noise divided by noise (values like 1e5 seen on digits, where jpeg costs nothing).
    floor = 0.5 * _one_image(baseline_result)
    return {
        c: _ratio(sum((1 - a[c][s]) - e_f for s in sev), sum((1 - b[c][s]) - e_b for s in sev), floor)
        for c, sev in _common_cells(result, baseline_result).items()
    }


def relative_mce(result: Result, baseline_result: Result) -> float:
    """Mean relative CE over the shared corruptions (NaN if none is defined)."""
    return _mean_finite(relative_corruption_errors(result, baseline_result).values())


# --------------------------------------------------------------------------------------------------
# Formatting helpers
# --------------------------------------------------------------------------------------------------
def _pct(x: float | None, digits: int = 1) -> str:
    """Fraction -> percent string; blank for missing/NaN so tables show a gap, not a fake number."""
    if x is None or not math.isfinite(x):
        return ""
    return f"{100 * x:.{digits}f}"


def _fmt_eps(eps: float) -> str:
    return f"{eps:.4g}"


def _label_text(labels: int | None, known: bool = True) -> str:
    if not known:
        return "?"
    return "all" if labels is None else str(labels)


def _record_columns(records: Sequence[Mapping[str, Any]], first: Sequence[str]) -> list[str]:
    """The standard columns first, then any extra keys the records carry, in first-seen order."""
    cols = list(first)
    for rec in records:
        cols.extend(k for k in rec if k not in cols)
    return cols


def _md_table(header: Sequence[str], rows: Sequence[Sequence[str]], left: int = 1) -> str:
    """A GitHub markdown table; the first ``left`` columns are left-aligned, the rest right-aligned."""

    def cell(text: object) -> str:
        return str(text).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(cell(h) for h in header) + " |"]
    lines.append("|" + "|".join("---" if i < left else "---:" for i in range(len(header))) + "|")
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _short_list(items: Sequence[str], limit: int = 6) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f", … (+{len(items) - limit} more)" if len(items) > limit else "")


# --------------------------------------------------------------------------------------------------
# Plots (private Figure + Agg canvas: no pyplot, no global backend switch)
# --------------------------------------------------------------------------------------------------
def _new_figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _png_bytes(fig) -> bytes:
    import io as _bytes_io

    buf = _bytes_io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    return buf.getvalue()


def _colors(n: int) -> list:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


def _title(result: Result, what: str) -> str:
    parts = [what, str(result.get("run") or ""), str(result.get("method") or "")]
    n = result.get("n")
    head = " · ".join(p for p in parts if p)
    return head + (f"  (n={n})" if n is not None else "")


def _plot_fgsm(result: Result) -> bytes:
    points = _fgsm_points(result)
    clean = _clean(result)
    fig = _new_figure(5.5, 3.8)
    ax = fig.add_subplot()
    ax.plot(list(points), [100 * a for a in points.values()], marker="o", color="C0", label="attacked")
    if clean is not None:
        ax.axhline(100 * clean, color="0.4", linestyle="--", linewidth=1, label=f"clean {100 * clean:.1f}%")
    attack = str(result.get("attack") or "fgsm").upper()
    ax.set(xlabel="ε (inputs in [0, 1])", ylabel="accuracy (%)", ylim=(0, 100), title=_title(result, attack))
    ax.grid(alpha=0.3)
    ax.legend(loc="upper right", fontsize=8)
    return _png_bytes(fig)


def _plot_heatmap(result: Result) -> bytes:
    """Corruption x severity heatmap in percent, with a 'clean' reference column and mean row/column."""
    import numpy as np

    cells = _corruption_cells(result)
    severities = sorted({s for sev in cells.values() for s in sev}) or [1, 2, 3, 4, 5]
    clean = _clean(result)
    rows = [*cells, "mean"]
    cols = ["clean", *(str(s) for s in severities), "mean"]
    grid = np.full((len(rows), len(cols)), np.nan)
    means = corruption_means(result)
    for i, c in enumerate(cells):
        grid[i, 1:-1] = [cells[c].get(s, np.nan) for s in severities]
        grid[i, -1] = means.get(c, np.nan)
    sev_means = _severity_means(result)
    grid[-1, 1:-1] = [sev_means.get(s, np.nan) for s in severities]
    overall = mean_corruption_accuracy(result)
    grid[-1, -1] = np.nan if overall is None else overall
    grid[:, 0] = np.nan if clean is None else clean
    grid *= 100

    fig = _new_figure(1.2 + 0.75 * len(cols), 1.2 + 0.38 * len(rows))
    ax = fig.add_subplot()
    from matplotlib import colormaps

    cmap = colormaps["viridis"].with_extremes(bad="0.85")  # a copy: the registered map stays untouched
    image = ax.imshow(np.ma.masked_invalid(grid), cmap=cmap, vmin=0, vmax=100, aspect="auto")
    for i in range(len(rows)):
        for j in range(len(cols)):
            v = grid[i, j]
            text, color = ("–", "0.3") if not np.isfinite(v) else (f"{v:.1f}", "black" if v > 60 else "white")
            ax.text(j, i, text, ha="center", va="center", fontsize=7, color=color)
    ax.set_xticks(range(len(cols)), cols)
    ax.set_yticks(range(len(rows)), rows, fontsize=8)
    ax.set_xlabel("severity")
    # Thin separators set the reference column and the mean row/column apart from the data cells.
    for x in (0.5, len(cols) - 1.5):
        ax.axvline(x, color="white", linewidth=2)
    ax.axhline(len(rows) - 1.5, color="white", linewidth=2)
    preset = result.get("preset")
    ax.set_title(_title(result, f"corruptions ({preset})" if preset else "corruptions"), fontsize=9)
    fig.colorbar(image, ax=ax, label="accuracy (%)", shrink=0.8)
    return _png_bytes(fig)


# --------------------------------------------------------------------------------------------------
# Per-checkpoint outputs
# --------------------------------------------------------------------------------------------------
def write_fgsm_outputs(result: dict, out_dir: str | os.PathLike) -> list[Path]:
    """Write ``fgsm.json``, ``fgsm.csv`` (long format) and ``fgsm.png`` (accuracy vs ε) into ``out_dir``.

    ``out_dir`` is the folder the files go in (normally ``RUN/eval``). Records are written sorted by
    ε; the result dict itself is otherwise written as given. Returns the three paths.
    """
    _check_result(result, "fgsm")
    out = Path(out_dir)
    records = sorted(result["results"], key=lambda r: float(r["eps"]))
    payload = {**result, "kind": "fgsm", "results": records}
    return [
        rio.write_json(out / "fgsm.json", payload),
        rio.write_csv(out / "fgsm.csv", records, _record_columns(records, ("eps", "accuracy", "n"))),
        rio.write_bytes(out / "fgsm.png", _plot_fgsm(payload)),
    ]


def write_corruption_outputs(result: dict, out_dir: str | os.PathLike) -> list[Path]:
    """Write ``corruptions.json``, ``corruptions.csv`` and ``corruptions.png`` (heatmap) into ``out_dir``.

    Fills ``mean_corruption_accuracy`` (mean over the cells present) when the caller did not, so the
    JSON always carries it. Partial results are fine: missing cells show as '–' in the heatmap.
    """
    _check_result(result, "corruptions")
    out = Path(out_dir)
    payload = {**result, "kind": "corruptions"}
    if payload.get("mean_corruption_accuracy") is None:
        payload["mean_corruption_accuracy"] = mean_corruption_accuracy(payload)
    records = payload["results"]
    columns = _record_columns(records, ("corruption", "severity", "accuracy", "n"))
    return [
        rio.write_json(out / "corruptions.json", payload),
        rio.write_csv(out / "corruptions.csv", records, columns),
        rio.write_bytes(out / "corruptions.png", _plot_heatmap(payload)),
    ]


def fgsm_table(result: Result):
    """A rich table: ε, accuracy (%), change against clean (points), n."""
    from rich.table import Table

    clean = _clean(result)
    attack = str(result.get("attack") or "fgsm").upper()
    caption = f"clean accuracy {_pct(clean)}%" if clean is not None else None
    table = Table(title=_title(result, attack), caption=caption)
    table.add_column("ε", justify="right")
    table.add_column("accuracy %", justify="right")
    table.add_column("Δ vs clean", justify="right")
    table.add_column("n", justify="right")
    n_by_eps = {_eps_key(r["eps"]): r.get("n") for r in result.get("results") or []}
    for eps, acc in _fgsm_points(result).items():
        delta = f"{100 * (acc - clean):+.1f}" if clean is not None else ""
        n = n_by_eps.get(eps)
        table.add_row(_fmt_eps(eps), _pct(acc), delta, "" if n is None else str(n))
    return table


def corruption_table(result: Result):
    """A rich table: corruption rows x severity columns + mean, percent with one decimal.

    A 'clean' line on top (the reference) and a 'mean' line at the bottom; missing cells show '–'.
    """
    from rich.table import Table

    cells = _corruption_cells(result)
    severities = sorted({s for sev in cells.values() for s in sev})
    preset = result.get("preset")
    table = Table(title=_title(result, f"corruptions ({preset})" if preset else "corruptions"))
    table.add_column("corruption")
    for s in severities:
        table.add_column(str(s), justify="right")
    table.add_column("mean", justify="right", style="bold")
    blank = [""] * len(severities)
    table.add_row("clean", *blank, _pct(_clean(result)) or "–", end_section=True)
    means = corruption_means(result)
    for c, sev in cells.items():
        table.add_row(c, *(_pct(sev[s]) if s in sev else "–" for s in severities), _pct(means.get(c)))
    sev_means = _severity_means(result)
    table.add_section()
    table.add_row(
        "mean", *(_pct(sev_means.get(s)) for s in severities), _pct(mean_corruption_accuracy(result)) or "–"
    )
    return table


# --------------------------------------------------------------------------------------------------
# Run folders
# --------------------------------------------------------------------------------------------------
@dataclass
class RunResult:
    """What one run folder holds, read from its small files only (never the checkpoint)."""

    path: Path
    name: str
    config: dict = field(default_factory=dict)
    fgsm: dict | None = None
    corruptions: dict | None = None
    metrics: list[dict] = field(default_factory=list)

    def _from_eval(self, key: str) -> Any:
        for result in (self.fgsm, self.corruptions):
            if result and result.get(key) is not None:
                return result[key]
        return None

    @property
    def has_config(self) -> bool:
        return bool(self.config)

    @property
    def method(self) -> str:
        """'gradaug-semi' if the config says semi, else the config's method (eval JSON as fallback)."""
        if self.config.get("semi"):
            return "gradaug-semi"
        return str(self.config.get("method") or self._from_eval("method") or "?")

    @property
    def dataset(self) -> str:
        return str(self.config.get("dataset") or self._from_eval("dataset") or "?")

    @property
    def arch(self) -> str:
        return str(self.config.get("arch") or self._from_eval("arch") or "?")

    @property
    def labels(self) -> int | None:
        """Number of labels; None means all labels (check ``has_config`` to tell 'all' from unknown)."""
        labels = self.config.get("labels")
        return None if labels is None else int(labels)

    @property
    def seed(self) -> int | None:
        seed = self.config.get("seed")
        return None if seed is None else int(seed)

    @property
    def steps(self) -> int | None:
        steps = self.config.get("steps")
        return None if steps is None else int(steps)

    @property
    def clean_accuracy(self) -> float | None:
        """Clean test accuracy from the eval JSONs (FGSM first: it is what the ε columns compare to)."""
        return _clean(self.fgsm) if _clean(self.fgsm) is not None else _clean(self.corruptions)

    @property
    def final_test_accuracy(self) -> tuple[float, str] | None:
        """(accuracy, source): the last ``test_acc`` in metrics.jsonl, else the eval JSON's clean
        accuracy if it was measured on the whole test split (no --limit)."""
        for line in reversed(self.metrics):
            if line.get("test_acc") is not None:
                return float(line["test_acc"]), "metrics"
        for result in (self.fgsm, self.corruptions):
            if result and result.get("limit") is None and _clean(result) is not None:
                return _clean(result), "eval"
        return None


def _is_run_dir(path: Path) -> bool:
    return (path / "config.yaml").is_file() or any((path / "eval").glob("*.json"))


def _find_run_dirs(root: Path) -> list[Path]:
    """Every folder below ``root`` that is a run dir; the walk does not descend into a run dir."""
    found = []
    for dirpath, dirnames, _ in os.walk(root):
        here = Path(dirpath)
        if _is_run_dir(here):
            found.append(here)
            dirnames[:] = []
            continue
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
    return found


def _read_json(path: Path) -> dict:
    try:
        obj = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise RobustkitError(f"cannot read {path}: {exc}; re-run the evaluation that writes it") from None
    if not isinstance(obj, dict):
        raise RobustkitError(f"{path} is not a JSON object; re-run the evaluation that writes it")
    return obj


def _read_config(path: Path) -> dict:
    import yaml

    try:
        config = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise RobustkitError(f"cannot read {path}: {str(exc).splitlines()[0]}; fix or delete the file") from None
    if not isinstance(config, dict):
        raise RobustkitError(f"{path} is not a YAML mapping; fix or delete the file")
    return config


def _read_metrics(path: Path) -> list[dict]:
    """metrics.jsonl lines; a line that does not parse (a run writing it right now) is skipped."""
    if not path.is_file():
        return []
    lines = []
    for raw in path.read_text().splitlines():
        try:
            obj = json.loads(raw)
        except ValueError:
            continue
        if isinstance(obj, dict):
            lines.append(obj)
    return lines


def _load_run(path: Path, name: str) -> RunResult:
    run = RunResult(path=path, name=name)
    if (path / "config.yaml").is_file():
        run.config = _read_config(path / "config.yaml")
    run.metrics = _read_metrics(path / "metrics.jsonl")
    # Bucket eval JSONs by their "kind"; the file named after the kind wins over other files.
    for file in sorted((path / "eval").glob("*.json"), key=lambda f: f.stem in ("fgsm", "corruptions")):
        obj = _read_json(file)
        kind = obj.get("kind") or file.stem
        if kind not in ("fgsm", "corruptions"):
            continue
        try:
            _check_result(obj, kind)
        except ValueError as exc:
            raise RobustkitError(f"{file}: {exc}; re-run the evaluation that writes it") from None
        setattr(run, kind, obj)
    return run


def _run_names(paths: Sequence[Path]) -> list[str]:
    """Folder names, or paths relative to the runs' common parent when two folders share a name."""
    names = [p.name for p in paths]
    if len(set(names)) == len(names):
        return names
    parent = Path(os.path.commonpath([str(p.parent) for p in paths]))
    return [p.relative_to(parent).as_posix() for p in paths]


def collect_runs(paths: str | os.PathLike | Iterable[str | os.PathLike]) -> list[RunResult]:
    """Read run folders: each path is a run dir, or a folder with run dirs somewhere below it.

    A run dir holds ``config.yaml`` or ``eval/*.json``. Runs come back in the order given (folders
    expanded in sorted order), each once. A path that does not exist or holds no run -> RobustkitError.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    dirs: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if not path.is_dir():
            what = "does not exist" if not path.exists() else "is a file, not a folder"
            raise RobustkitError(f"{path} {what}: pass run folders (holding config.yaml or eval/*.json) or their parent")
        found = [path] if _is_run_dir(path) else _find_run_dirs(path)
        if not found:
            raise RobustkitError(
                f"no runs in {path}: neither it nor a folder below it holds config.yaml or eval/*.json; "
                "train or evaluate first, or pass the right folder"
            )
        dirs += [d.resolve() for d in found if d.resolve() not in dirs]
    if not dirs:
        raise RobustkitError("no run folders given: pass at least one run folder or a folder of runs")
    return [_load_run(d, n) for d, n in zip(dirs, _run_names(dirs))]


# --------------------------------------------------------------------------------------------------
# The multi-run report
# --------------------------------------------------------------------------------------------------
def _resolve_baseline(baseline: str | os.PathLike | None, runs: list[RunResult]) -> RunResult | None:
    """The baseline run: one of ``runs`` (by folder path or name) or a separate run dir (appended)."""
    if baseline is None:
        return None
    path = Path(baseline)
    if path.is_dir():
        resolved = path.resolve()
        for run in runs:
            if run.path == resolved:
                return run
        extra = collect_runs([path])
        if len(extra) != 1:
            raise RobustkitError(f"baseline {path} holds {len(extra)} runs; pass exactly one run folder")
        base = extra[0]
        taken = {r.name for r in runs}
        if base.name in taken:
            base.name = f"{base.name} [{path}]"
        runs.append(base)
        return base
    matches = [r for r in runs if r.name == str(baseline) or r.path.name == str(baseline)]
    if len(matches) == 1:
        return matches[0]
    if matches:
        raise RobustkitError(f"baseline {baseline!r} names {len(matches)} runs; pass its folder path instead")
    raise RobustkitError(f"baseline {baseline!r} is neither a run folder nor the name of one of the runs")


def _cell_grid(runs: Sequence[RunResult]) -> dict[str, set[tuple[str, int]]]:
    """Per preset, the union of (corruption, severity) cells over all runs: the grid a run should fill."""
    grid: dict[str, set[tuple[str, int]]] = {}
    for run in runs:
        if run.corruptions:
            cells = _corruption_cells(run.corruptions)
            grid.setdefault(str(run.corruptions.get("preset")), set()).update(
                (c, s) for c, sev in cells.items() for s in sev
            )
    return grid


def _missing_cells(run: RunResult, grid: Mapping[str, set[tuple[str, int]]]) -> list[tuple[str, int]]:
    if not run.corruptions:
        return []
    cells = _corruption_cells(run.corruptions)
    present = {(c, s) for c, sev in cells.items() for s in sev}
    order = {c: i for i, c in enumerate(cells)}
    expected = grid.get(str(run.corruptions.get("preset")), set())
    return sorted(expected - present, key=lambda cs: (order.get(cs[0], len(order)), cs[0], cs[1]))


def _run_label(run: RunResult, base: RunResult | None) -> str:
    return f"{run.name} (baseline)" if run is base else run.name


def _versus_baseline(run: RunResult, base: RunResult | None) -> tuple[dict, float, float, str | None]:
    """(CE per corruption, mCE, relative mCE, problem) for ``run`` against ``base``; NaNs if undefined."""
    if base is None or not run.corruptions:
        return {}, _NAN, _NAN, None
    try:
        ces = corruption_errors(run.corruptions, base.corruptions)
    except RobustkitError as exc:  # presets differ
        return {}, _NAN, _NAN, str(exc).split(":")[0]
    both_clean = _clean(run.corruptions) is not None and _clean(base.corruptions) is not None
    rel = relative_mce(run.corruptions, base.corruptions) if both_clean else _NAN
    return ces, _mean_finite(ces.values()), rel, None


def _robustness_section(runs: Sequence[RunResult], base: RunResult | None) -> tuple[str, list[str]]:
    notes: list[str] = []
    eps_lists = {run.name: tuple(_fgsm_points(run.fgsm)) for run in runs if run.fgsm}
    all_eps = sorted({e for eps in eps_lists.values() for e in eps if e > 0})  # eps 0 is the Clean column
    if len(set(eps_lists.values())) > 1:
        notes.append("Runs were evaluated at different ε; a blank means that ε was not evaluated for that run.")
    attacks = sorted({str(run.fgsm.get("attack") or "fgsm") for run in runs if run.fgsm})
    presets = sorted({str(run.corruptions.get("preset")) for run in runs if run.corruptions})
    if len(presets) > 1:
        notes.append(
            f"Runs used different corruption presets ({', '.join(presets)}); their corruption numbers "
            "are not comparable, and CE is only computed against a baseline of the same preset."
        )
    sizes = sorted({int(r["n"]) for run in runs for r in (run.fgsm, run.corruptions) if r and r.get("n") is not None})
    if len(sizes) > 1:
        notes.append(
            f"Evaluations used different numbers of test images (n = {', '.join(map(str, sizes))}; see Sources): "
            "small n means wide error bars, and a --limit subset is not the full test split."
        )
    datasets = sorted({run.dataset for run in runs})
    attack_head = attacks[0].upper() if len(attacks) == 1 else "attack"
    header = ["Run", "Method", "Labels", "Seed"]
    if len(datasets) > 1:
        header.append("Dataset")
    if len(attacks) > 1:
        header.append("Attack")
        notes.append(f"Runs used different attacks ({', '.join(attacks)}): compare the ε columns with care.")
    header += ["Clean", *(f"{attack_head} ε={_fmt_eps(e)}" for e in all_eps), "Mean corr."]
    if base is not None:
        header += ["mCE", "Rel. mCE"]

    grid = _cell_grid(runs)
    n_left = 4 + (len(datasets) > 1) + (len(attacks) > 1)
    rows = []
    for run in runs:
        if not (run.fgsm or run.corruptions):
            continue
        points = _fgsm_points(run.fgsm) if run.fgsm else {}
        mean_corr = mean_corruption_accuracy(run.corruptions) if run.corruptions else None
        missing = _missing_cells(run, grid)
        mean_text = _pct(mean_corr) + ("*" if missing and mean_corr is not None else "")
        if missing:
            notes.append(
                f"{run.name}: {len(missing)} corruption cell(s) not evaluated "
                f"({_short_list([f'{c} s{s}' for c, s in missing])}); * = mean over the cells present."
            )
        row = [_run_label(run, base), run.method, _label_text(run.labels, run.has_config), _seed_text(run)]
        if len(datasets) > 1:
            row.append(_dataset_text(run.dataset))
        if len(attacks) > 1:
            row.append(str(run.fgsm.get("attack") or "fgsm") if run.fgsm else "")
        row += [_pct(run.clean_accuracy), *(_pct(points.get(e)) for e in all_eps), mean_text]
        if base is not None:
            ces, m, rel, problem = _versus_baseline(run, base)
            if problem:
                notes.append(f"{run.name}: no CE against the baseline ({problem}).")
            elif run.corruptions and base.corruptions and len(ces) < len(_corruption_cells(base.corruptions)):
                notes.append(
                    f"{run.name}: mCE over {len(ces)} of the baseline's "
                    f"{len(_corruption_cells(base.corruptions))} corruptions (only cells both runs have)."
                )
            row += [_pct(m), _pct(rel)]
        rows.append(row)

    text = ["## Robustness", ""]
    if len(datasets) == 1:
        text += [f"Dataset: `{_dataset_text(datasets[0])}`. Accuracy in %, columns as in the GradAug paper's "
                 "robustness table (clean, each ε, mean corruption accuracy).", ""]
    if base is not None:
        text += [f"mCE and relative mCE in % of the baseline `{base.name}` (100 = as many errors as the baseline; "
                 "lower is better).", ""]
    if rows:
        text.append(_md_table(header, rows, left=n_left))
    else:
        text.append("_No run has eval results yet: run `robustkit fgsm` / `robustkit corrupt` first._")
    skipped = [run.name for run in runs if not (run.fgsm or run.corruptions)]
    if skipped:
        notes.append(f"Without eval results (low-data table only): {_short_list(skipped)}.")
    return "\n".join(text), notes


def _corruption_section(runs: Sequence[RunResult], base: RunResult | None) -> tuple[str, list[str]]:
    with_corr = [run for run in runs if run.corruptions]
    if not with_corr:
        return "", []
    notes: list[str] = []
    corruptions: list[str] = []
    for run in with_corr:
        corruptions += [c for c in _corruption_cells(run.corruptions) if c not in corruptions]
    if any(set(_corruption_cells(run.corruptions)) != set(corruptions) for run in with_corr):
        notes.append("Runs cover different corruptions; a blank means not evaluated.")
    grid = _cell_grid(runs)
    rows = []
    for run in with_corr:
        means = corruption_means(run.corruptions)
        partial = {c for c, _ in _missing_cells(run, grid)}
        cells = [_pct(means.get(c)) + ("*" if c in partial and c in means else "") for c in corruptions]
        rows.append([_run_label(run, base), *cells, _pct(mean_corruption_accuracy(run.corruptions))])
    text = ["## Accuracy per corruption", "", "Mean over severities, % (* = some severities missing).", ""]
    text.append(_md_table(["Run", *corruptions, "mean"], rows))
    if base is not None:
        ce_rows = []
        for run in with_corr:
            ces, m, rel, _ = _versus_baseline(run, base)
            ce_rows.append([_run_label(run, base), *(_pct(ces.get(c)) for c in corruptions), _pct(m), _pct(rel)])
        text += ["", f"### Corruption error (CE, % of `{base.name}`)", "",
                 "CE_c = Σ_s E_s,c(run) / Σ_s E_s,c(baseline), E = 1 − accuracy, over the severities both have; "
                 "relative mCE uses the errors minus the clean error.", ""]
        text.append(_md_table(["Run", *corruptions, "mCE", "Rel. mCE"], ce_rows))
    return "\n".join(text), notes


def _seed_text(run: RunResult) -> str:
    return "" if run.seed is None else str(run.seed)


def _dataset_text(dataset: str) -> str:
    """``folder:/abs/path/cifar10-jpeg75`` -> ``folder:cifar10-jpeg75`` (the path is noise in a table)."""
    if dataset.startswith("folder:"):
        return "folder:" + Path(dataset[len("folder:"):]).name
    return dataset


def _mean_std(values: Sequence[float]) -> str:
    """'mean ± sample std' in % with two decimals (like the paper); just the mean for one seed."""
    mean = 100 * statistics.fmean(values)
    if len(values) < 2:
        return f"{mean:.2f}"
    return f"{mean:.2f} ± {100 * statistics.stdev(values):.2f}"


def _low_data_section(runs: Sequence[RunResult]) -> tuple[str, list[str]]:
    notes: list[str] = []
    groups: dict[tuple, list[RunResult]] = {}
    no_acc = []
    for run in runs:
        if run.final_test_accuracy is None:
            no_acc.append(run.name)
            continue
        key = (run.dataset, run.labels if run.has_config else "?", run.method, run.arch, run.steps)
        groups.setdefault(key, []).append(run)

    def sort_key(item):
        (dataset, labels, method, arch, steps), _ = item
        order = list(_PAPER_ROW_NAMES).index(method) if method in _PAPER_ROW_NAMES else 99
        return (dataset, labels if isinstance(labels, int) else 10**9, order, method, arch, steps or 0)

    rows, folder_cells, arch_cells, eval_sources = [], False, False, []
    for (dataset, labels, method, arch, steps), members in sorted(groups.items(), key=sort_key):
        accs = [run.final_test_accuracy[0] for run in members]
        eval_sources += [run.name for run in members if run.final_test_accuracy[1] == "eval"]
        seeds = sorted(s for s in (run.seed for run in members) if s is not None)
        paper = paper_number(dataset, labels if isinstance(labels, int) else None, method)
        paper_text = ""
        if paper is not None:
            marks = ""
            if dataset.startswith("folder:"):
                marks += "†"
                folder_cells = True
            if arch.lower() != PAPER_ARCH:
                marks += "‡"
                arch_cells = True
            paper_text = f"{paper[0]:.2f} ± {paper[1]:.2f}{marks}"
        rows.append([
            _dataset_text(dataset), _label_text(labels if isinstance(labels, int) else None, labels != "?"),
            method, arch, "" if steps is None else str(steps), str(len(members)),
            ", ".join(map(str, seeds)), _mean_std(accs), paper_text,
        ])
    if folder_cells:
        notes.append(
            "† The dataset is a folder re-encoding of the paper's dataset (e.g. CIFAR-10 as JPEG q75), "
            "which costs a few points: compare methods with each other, not with the paper's absolute numbers."
        )
    if arch_cells:
        notes.append(f"‡ The paper's numbers are for {PAPER_ARCH}; this group used another architecture.")
    if eval_sources:
        notes.append(
            "Test accuracy taken from the eval JSON's clean accuracy (no test_acc in metrics.jsonl): "
            f"{_short_list(eval_sources)}."
        )
    if no_acc:
        notes.append(f"No test accuracy yet (not in the table): {_short_list(no_acc)}.")

    text = ["## Low-data accuracy (mean ± std over seeds)", "",
            "Final test accuracy in %, runs grouped by dataset, labels, method, architecture and steps; "
            "std is the sample std over seeds. Paper: GradAug (Yang et al., NeurIPS 2020), WRN-28-2.", ""]
    header = ["Dataset", "Labels", "Method", "Arch", "Steps", "n", "Seeds", "Ours", "Paper"]
    text.append(_md_table(header, rows, left=5) if rows else "_No run has a test accuracy yet._")
    text += ["", "<details><summary>The paper's low-data table (accuracy %)</summary>", ""]
    paper_header = ["Model", *(f"{_PAPER_DATASET_NAMES[d]} {n}" for d, n in _PAPER_COLUMNS)]
    paper_rows = []
    for method, row_name in _PAPER_ROW_NAMES.items():
        cells = [PAPER_LOW_DATA[col].get(method) for col in _PAPER_COLUMNS]
        paper_rows.append([row_name, *(f"{c[0]:.2f} ± {c[1]:.2f}" if c else "–" for c in cells)])
    text += [_md_table(paper_header, paper_rows), "", "</details>"]
    return "\n".join(text), notes


def _plot_fgsm_overlay(runs: Sequence[RunResult], base: RunResult | None) -> bytes | None:
    with_fgsm = [run for run in runs if run.fgsm and _fgsm_points(run.fgsm)]
    if not with_fgsm:
        return None
    fig = _new_figure(7.5, 4.2)
    ax = fig.add_subplot()
    for run, color in zip(with_fgsm, _colors(len(with_fgsm))):
        points = _fgsm_points(run.fgsm)
        clean = _clean(run.fgsm)
        if clean is not None and 0.0 not in points:
            points = {0.0: clean, **points}
        ax.plot(list(points), [100 * a for a in points.values()], marker="o", markersize=3, color=color,
                linestyle="--" if run is base else "-", label=_run_label(run, base))
    ax.set(xlabel="ε (inputs in [0, 1])", ylabel="accuracy (%)", ylim=(0, 100), title="Accuracy under attack")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    return _png_bytes(fig)


def _plot_corruption_overlay(runs: Sequence[RunResult], base: RunResult | None) -> bytes | None:
    """Mean accuracy over corruptions per severity, one line per run; severity 0 = clean."""
    with_corr = [run for run in runs if run.corruptions and _corruption_cells(run.corruptions)]
    if not with_corr:
        return None
    fig = _new_figure(7.5, 4.2)
    ax = fig.add_subplot()
    for run, color in zip(with_corr, _colors(len(with_corr))):
        points = _severity_means(run.corruptions)
        clean = _clean(run.corruptions)
        if clean is not None:
            points = {0: clean, **points}
        ax.plot(list(points), [100 * a for a in points.values()], marker="o", markersize=3, color=color,
                linestyle="--" if run is base else "-", label=_run_label(run, base))
    ax.set(xlabel="severity (0 = clean)", ylabel="mean accuracy over corruptions (%)", ylim=(0, 100),
           title="Accuracy under corruption")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    return _png_bytes(fig)


def _plot_bars(runs: Sequence[RunResult], base: RunResult | None) -> bytes | None:
    """mCE and relative mCE bars (% of baseline) with a baseline, else clean/mean-corruption bars."""
    import numpy as np

    with_corr = [run for run in runs if run.corruptions and _corruption_cells(run.corruptions)]
    if not with_corr:
        return None
    if base is not None:
        values = [_versus_baseline(run, base)[1:3] for run in with_corr]
        series = {"mCE": [v[0] for v in values], "relative mCE": [v[1] for v in values]}
        ylabel, title = f"% of baseline {base.name}", "Corruption error (lower is better)"
    else:
        series = {
            "clean": [_clean(run.corruptions) or np.nan for run in with_corr],
            "mean corruption": [mean_corruption_accuracy(run.corruptions) for run in with_corr],
        }
        ylabel, title = "accuracy (%)", "Clean vs mean corruption accuracy"
    x = np.arange(len(with_corr))
    width = 0.8 / len(series)
    fig = _new_figure(max(5.0, 1.0 + 0.6 * len(with_corr)), 4.2)
    ax = fig.add_subplot()
    for k, (label, vals) in enumerate(series.items()):
        heights = np.array([np.nan if v is None else 100 * v for v in vals], dtype=float)
        bars = ax.bar(x + (k - (len(series) - 1) / 2) * width, np.nan_to_num(heights), width, label=label)
        ax.bar_label(bars, labels=["" if not np.isfinite(h) else f"{h:.0f}" for h in heights], fontsize=6)
    if base is not None:
        ax.axhline(100, color="0.3", linestyle="--", linewidth=1)
    tallest = max((100 * v for vals in series.values() for v in vals if v is not None and math.isfinite(v)), default=100)
    ax.set_ylim(0, max(tallest, 100) * 1.15)  # head room for the value labels and the legend
    ax.set_xticks(x, [_run_label(run, base) for run in with_corr], rotation=30, ha="right", fontsize=7)
    ax.set(ylabel=ylabel, title=title)
    ax.legend(fontsize=7)
    return _png_bytes(fig)


def _common_parent(runs: Sequence[RunResult]) -> Path:
    return Path(os.path.commonpath([str(run.path.parent) for run in runs]))


def _sources_section(runs: Sequence[RunResult], parent: Path) -> str:
    rows = []
    for run in runs:
        sha = str(run._from_eval("sha256") or "")[:12]
        n_f = run.fgsm.get("n") if run.fgsm else None
        n_c = run.corruptions.get("n") if run.corruptions else None
        try:
            where = run.path.relative_to(parent).as_posix()
        except ValueError:
            where = str(run.path)
        rows.append([run.name, where, sha, run.dataset, "" if n_f is None else str(n_f),
                     "" if n_c is None else str(n_c), str(run._from_eval("device") or "")])
    header = ["Run", "Folder", "Checkpoint sha256", "Dataset", "FGSM n", "Corruption n", "Device"]
    return "\n".join(["## Sources", "", f"Folders relative to `{parent}`.", "",
                      _md_table(header, rows, left=4)])


def _notes_block(notes: Sequence[str]) -> list[str]:
    return ["", *(f"- {note}" for note in dict.fromkeys(notes))] if notes else []


def write_report(
    run_dirs: str | os.PathLike | Iterable[str | os.PathLike],
    out_dir: str | os.PathLike | None = None,
    baseline: str | os.PathLike | None = None,
) -> Path:
    """Gather the runs' eval JSONs into ``report.md`` + plots; return the report.md path.

    ``run_dirs``: run folders or folders of runs (see :func:`collect_runs`). ``baseline``: a run folder
    (one of the runs, or a separate one that is then added as a row) or a run's name; it must have
    corruption results, since CE/mCE are normalised by it. ``out_dir`` defaults to
    ``<common parent of the runs>/report``. Writes fgsm_overlay.png, corruption_overlay.png and
    mce_bars.png (with a baseline) or mean_corruption_bars.png (without), for whatever data exists.
    """
    runs = collect_runs(run_dirs)
    base = _resolve_baseline(baseline, runs)
    if base is not None and not (base.corruptions and _corruption_cells(base.corruptions)):
        raise RobustkitError(
            f"baseline {base.name} has no corruption results: run `robustkit corrupt {base.path}` first, "
            "or choose another --baseline"
        )
    parent = _common_parent(runs)
    out = Path(out_dir) if out_dir is not None else parent / "report"

    bars_name = "mce_bars.png" if base is not None else "mean_corruption_bars.png"
    plots = {
        "fgsm_overlay.png": ("Accuracy vs ε", _plot_fgsm_overlay(runs, base)),
        "corruption_overlay.png": ("Accuracy vs severity", _plot_corruption_overlay(runs, base)),
        bars_name: ("mCE" if base is not None else "Mean corruption accuracy", _plot_bars(runs, base)),
    }
    stale = "mean_corruption_bars.png" if base is not None else "mce_bars.png"
    (out / stale).unlink(missing_ok=True)  # a previous report's other bar chart would now be misleading
    written = []
    for name, (caption, png) in plots.items():
        if png is None:
            (out / name).unlink(missing_ok=True)
            continue
        rio.write_bytes(out / name, png)
        written.append(f"![{caption}]({name})")

    created = datetime.now(timezone.utc).isoformat(timespec="seconds")
    lines = [
        "# robustkit report",
        "",
        f"{len(runs)} run(s), generated {created}"
        + (f", baseline `{base.name}`." if base is not None else ", no baseline (pass --baseline for CE/mCE)."),
        "",
    ]
    for section in (_robustness_section(runs, base), _corruption_section(runs, base), _low_data_section(runs)):
        text, notes = section
        if text:
            lines += [text, *_notes_block(notes), ""]
    if written:
        lines += ["## Plots", "", *(f"{w}\n" for w in written)]
    lines += [_sources_section(runs, parent), ""]
    return rio.write_text(out / "report.md", "\n".join(lines))
