"""Per-checkpoint outputs: ``eval/{fgsm,pgd,...,corruptions,corruptions-released}.{json,csv,png}`` and the rich
tables the CLI prints."""

from __future__ import annotations

import os
from pathlib import Path

from robustkit import io as rio
from robustkit.report.formatting import _fmt_eps, _pct, _record_columns
from robustkit.report.plots import _in_benchmark_order, _plot_fgsm, _plot_heatmap, _title
from robustkit.report.protocols import COMMON, EXTRA, IMAGENET_PROTOCOL, protocol_numbers, severity_means
from robustkit.report.results import (
    Result,
    _check_result,
    _clean,
    _corruption_cells,
    _eps_key,
    _fgsm_points,
    _severity_means,
    attack_label,
    corruption_means,
    eval_stem,
    mean_corruption_accuracy,
)


# --------------------------------------------------------------------------------------------------
# Per-checkpoint outputs
# --------------------------------------------------------------------------------------------------
def write_fgsm_outputs(result: dict, out_dir: str | os.PathLike) -> list[Path]:
    """Write ``ATTACK.json``, ``ATTACK.csv`` (long format) and ``ATTACK.png`` (accuracy vs ε) into ``out_dir``.

    ``ATTACK`` is :func:`eval_stem`: ``fgsm``, ``pgd`` or ``torchattacks-NAME``, so each attack keeps its own
    files. ``out_dir`` is the folder the files go in (normally ``RUN/eval``). Records are written sorted by
    ε; the result dict itself is otherwise written as given. Returns the three paths.
    """
    _check_result(result, "fgsm")
    out = Path(out_dir)
    records = sorted(result["results"], key=lambda r: float(r["eps"]))
    payload = {**result, "kind": "fgsm", "results": records}
    stem = eval_stem(payload)
    return [
        rio.write_json(out / f"{stem}.json", payload),
        rio.write_csv(out / f"{stem}.csv", records, _record_columns(records, ("eps", "accuracy", "n"))),
        rio.write_bytes(out / f"{stem}.png", _plot_fgsm(payload)),
    ]


def write_corruption_outputs(result: dict, out_dir: str | os.PathLike) -> list[Path]:
    """Write ``corruptions.json``, ``corruptions.csv`` and ``corruptions.png`` (heatmap) into ``out_dir``;
    ``corruptions-released.*`` for results on the released files (``source: released``), so a model keeps both.

    The JSON leads with ``protocol`` (:func:`robustkit.report.protocols.protocol_numbers`: the benchmark
    numbers over the 15 corruptions, or what is missing for them; the 4 extra and all 19 apart) and carries
    ``mean_common_accuracy`` (the 15 x 5 number, None unless complete) and ``mean_corruption_accuracy`` (the
    mean over whatever cells were evaluated, not a benchmark number). Partial results are fine: missing
    cells show as '–' in the heatmap.
    """
    _check_result(result, "corruptions")
    out = Path(out_dir)
    numbers = protocol_numbers(result)
    lead = {"kind": "corruptions", "protocol": numbers.to_json(), "mean_common_accuracy": numbers.accuracy}
    payload = {**lead, **{k: v for k, v in result.items() if k not in lead}}
    if payload.get("mean_corruption_accuracy") is None:
        payload["mean_corruption_accuracy"] = mean_corruption_accuracy(payload)
    records = payload["results"]
    columns = _record_columns(records, ("corruption", "severity", "accuracy", "n"))
    stem = eval_stem(payload)
    return [
        rio.write_json(out / f"{stem}.json", payload),
        rio.write_csv(out / f"{stem}.csv", records, columns),
        rio.write_bytes(out / f"{stem}.png", _plot_heatmap(payload)),
    ]


def fgsm_table(result: Result):
    """A rich table: ε, accuracy (%), change against clean (points), n; one row per cached ε, sorted by ε."""
    from rich.table import Table

    clean = _clean(result)
    attack = attack_label(result).upper()
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

    A 'clean' line on top (the reference); below the corruptions, the benchmark line (mean over the 15 benchmark
    corruptions, per severity and over all 15 x 5), then, when extra corruptions were evaluated, 'extra 4' and
    'all 19' lines, labelled apart. When the 15 x 5 are not all there the benchmark cells stay '–', the caption
    says what is missing, and a last line gives the mean of the evaluated cells. ImageNet-C results get the
    AlexNet-normalised mCE and relative mCE in the caption. Missing cells show '–'. Every cached corruption gets
    a row, in the benchmark's order (the 15, then the extra 4, then any other), not the order they were stored in.
    """
    from rich.table import Table

    cells = _in_benchmark_order(_corruption_cells(result))
    numbers = protocol_numbers(result)
    severities = sorted({s for sev in cells.values() for s in sev})
    preset = result.get("preset")
    caption = [_protocol_caption(numbers)]
    released_files = result.get("source") == "released"
    stored_as_released = not released_files and result.get("storage") == "released"
    if numbers.mce is not None and not (released_files or stored_as_released):
        caption.append("generated images evaluated as floats: the released ImageNet-C files (what AlexNet's errors "
                       "and published mCEs were measured on) are JPEGs at quality 85, which smooth much of the "
                       "noise away; --storage released stores them so")
    if any(c in cells for c in EXTRA):
        caption.append("extra 4 = speckle_noise, gaussian_blur, spatter, saturate: Hendrycks & Dietterich's "
                       "validation corruptions, not part of the benchmark number")
    label = f"{preset}, stored as released" if preset and stored_as_released else preset
    table = Table(title=_title(result, f"corruptions ({label})" if label else "corruptions"),
                  caption="\n".join(caption))
    table.add_column("corruption")
    for s in severities:
        table.add_column(str(s), justify="right")
    table.add_column("mean", justify="right", style="bold")
    blank = [""] * len(severities)
    table.add_row("clean", *blank, _pct(_clean(result)) or "–", end_section=True)
    means = corruption_means(result)
    for c, sev in cells.items():
        table.add_row(c, *(_pct(sev[s]) if s in sev else "–" for s in severities), _pct(means.get(c)))
    table.add_section()

    def summary_row(label: str, names, overall) -> None:
        by_sev = severity_means(cells, names)
        table.add_row(label, *(_pct(by_sev.get(s)) or "–" for s in severities), _pct(overall) or "–")

    summary_row("benchmark 15", COMMON, numbers.accuracy)
    if any(c in cells for c in EXTRA):
        summary_row("extra 4", EXTRA, numbers.extra_accuracy)
        summary_row("all 19", (*COMMON, *EXTRA), numbers.all_accuracy)
    if not numbers.complete:
        sev_means = _severity_means(result)
        table.add_row(f"mean of {numbers.evaluated_cells} evaluated", *(_pct(sev_means.get(s)) for s in severities),
                      _pct(numbers.evaluated_mean) or "–")
    return table


def _protocol_caption(numbers) -> str:
    """One line: the protocol number(s), or what is missing for them."""
    if not numbers.complete:
        return numbers.missing_text()
    text = f"{numbers.protocol}: accuracy over the 15 benchmark corruptions x 5 severities {_pct(numbers.accuracy)}%"
    if numbers.protocol == IMAGENET_PROTOCOL:
        if numbers.mce is not None:
            text += f"; AlexNet-normalised mCE {_pct(numbers.mce)}%"
            if numbers.relative_mce is not None:
                text += f", relative mCE {_pct(numbers.relative_mce)}%"
        if numbers.mce_note:
            text += f" ({numbers.mce_note})"
    return text
