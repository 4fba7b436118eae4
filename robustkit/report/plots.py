"""Every plot robustkit draws, as PNG bytes: per-checkpoint curves/heatmaps and the multi-run overlays.

A private ``Figure`` with the Agg canvas: no pyplot, no global backend switch, nothing leaked between plots.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence

from robustkit.report.corruption_error import _versus_baseline
from robustkit.report.protocols import COMMON, EXTRA, protocol_numbers
from robustkit.report.results import (
    Result,
    _clean,
    _corruption_cells,
    _fgsm_points,
    _severity_means,
    attack_label,
    corruption_means,
)
from robustkit.report.runs import RunResult, _run_label


# --------------------------------------------------------------------------------------------------
# Plots (private Figure + Agg canvas: no pyplot, no global backend switch)
# --------------------------------------------------------------------------------------------------
_warming: threading.Thread | None = None
_DPI = 120


def _warm_up() -> None:
    """Draw a small figure with text to PNG and throw it away: imports matplotlib and the PNG writer, loads the
    font list and the font, renders digits and letters. A process pays this once (0.3-0.4 s; the same plot
    drawn again costs half as much)."""
    fig = _make_figure(3.0, 2.0)
    ax = fig.add_subplot()
    ax.imshow([[0.0, 1.0]])
    ax.text(0, 0, "0123456789.% –", fontsize=7)
    ax.set(title="abcdefghijklmnopqrstuvwxyz", xlabel="ε")
    _png_bytes(fig)


def warm_up_in_background() -> None:
    """Start :func:`_warm_up` in a daemon thread, once per process, so that an evaluation grid's plot does not pay
    it at the end: the grid's thread mostly waits on the device meanwhile. Every plot waits for the warm-up to
    finish first (matplotlib is not thread-safe); a warm-up that fails is forgotten (the plot then raises the
    real error itself)."""
    global _warming
    if _warming is None:
        def run():
            try:
                _warm_up()
            except Exception:  # noqa: BLE001 - the plot that follows reports what is wrong
                pass

        _warming = threading.Thread(target=run, name="robustkit-plot-warm-up", daemon=True)
        _warming.start()


def _background_done() -> None:
    """Wait for the plot thread (warm-up, prepared frames): matplotlib is not thread-safe."""
    if _warming is not None:
        _warming.join()


def _new_figure(width: float, height: float):
    _background_done()
    return _make_figure(width, height)


def _make_figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained", dpi=_DPI)   # (the dpi savefig draws at)
    FigureCanvasAgg(fig)
    return fig


def _lay_out_now(fig) -> None:
    """Run ``fig``'s layout engine now and take it off the figure: the axes keep their places, and savefig then
    draws once instead of twice (it draws once more to lay out a figure that has an engine)."""
    fig.get_layout_engine().execute(fig)
    fig.set_layout_engine(None)


def _png_bytes(fig) -> bytes:
    import io as _bytes_io

    if fig.get_layout_engine() is not None:   # laid out now: savefig then draws once, the same pixels
        _lay_out_now(fig)
    buf = _bytes_io.BytesIO()
    fig.savefig(buf, format="png", dpi=_DPI)
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
    attack = attack_label(result).upper()
    ax.set(xlabel="ε (inputs in [0, 1])", ylabel="accuracy (%)", ylim=(0, 100), title=_title(result, attack))
    ax.grid(alpha=0.3)
    ax.legend(loc="upper right", fontsize=8)
    return _png_bytes(fig)


def _in_benchmark_order(cells: dict[str, dict[int, float]]) -> dict[str, dict[int, float]]:
    """``cells`` (corruption -> ...) with the corruptions in robustkit.corruptions.CORRUPTIONS order: the 15
    benchmark ones, then the extra 4, then any other name (alphabetical), whatever order they were stored in
    (a later run of a few corruptions into a folder of cached cells puts those first)."""
    rank = {c: i for i, c in enumerate((*COMMON, *EXTRA))}
    return {c: cells[c] for c in sorted(cells, key=lambda c: (rank.get(c, len(rank)), c))}


def _heatmap_parts(result: Result):
    """(grid of values in percent, NaN where missing; row labels; column labels; title) of the heatmap."""
    import numpy as np

    cells = _in_benchmark_order(_corruption_cells(result))
    severities = sorted({s for sev in cells.values() for s in sev}) or [1, 2, 3, 4, 5]
    clean = _clean(result)
    numbers = protocol_numbers(result)
    rows = [*cells, "benchmark 15" if numbers.complete else f"mean of {numbers.evaluated_cells} evaluated"]
    cols = ["clean", *(str(s) for s in severities), "mean"]
    grid = np.full((len(rows), len(cols)), np.nan)
    means = corruption_means(result)
    for i, c in enumerate(cells):
        grid[i, 1:-1] = [cells[c].get(s, np.nan) for s in severities]
        grid[i, -1] = means.get(c, np.nan)
    # Bottom row: the benchmark's numbers (the 15, per severity and over 15 x 5) when complete, else the mean
    # over the evaluated cells, labelled as such.
    sev_means = numbers.by_severity if numbers.complete else _severity_means(result)
    grid[-1, 1:-1] = [sev_means.get(s, np.nan) for s in severities]
    overall = numbers.accuracy if numbers.complete else numbers.evaluated_mean
    grid[-1, -1] = np.nan if overall is None else overall
    grid[:, 0] = np.nan if clean is None else clean
    preset = result.get("preset")
    return grid * 100, rows, cols, _title(result, f"corruptions ({preset})" if preset else "corruptions")


def _heatmap_frame(rows: Sequence[str], cols: Sequence[str], title: str, make_figure=None):
    """The heatmap's figure before its values: axes, ticks, separators, title and colour bar, laid out (constrained)
    and without a layout engine left (savefig then draws once: with one left it draws every text twice; 19 x 5
    cells on 2 cores: 0.34 -> 0.30 s, the same PNG to the byte). Neither the values nor the cell labels take part
    in the layout (the labels sit inside the axes), so the frame depends on the labels and the title alone and can
    be made before the values exist (:func:`prepare_heatmap_in_background`). Returns (figure, axes, image)."""
    import numpy as np
    from matplotlib import colormaps

    fig = (make_figure or _new_figure)(1.2 + 0.75 * len(cols), 1.2 + 0.38 * len(rows))
    ax = fig.add_subplot()
    cmap = colormaps["viridis"].with_extremes(bad="0.85")  # a copy: the registered map stays untouched
    image = ax.imshow(np.ma.masked_invalid(np.full((len(rows), len(cols)), np.nan)), cmap=cmap, vmin=0, vmax=100,
                      aspect="auto")
    ax.set_xticks(range(len(cols)), cols)
    ax.set_yticks(range(len(rows)), rows, fontsize=8)
    ax.set_xlabel("severity")
    # Thin separators set the reference column and the mean row/column apart from the data cells.
    for x in (0.5, len(cols) - 1.5):
        ax.axvline(x, color="white", linewidth=2)
    ax.axhline(len(rows) - 1.5, color="white", linewidth=2)
    ax.set_title(title, fontsize=9)
    fig.colorbar(image, ax=ax, label="accuracy (%)", shrink=0.8)
    _lay_out_now(fig)
    return fig, ax, image


_prepared: dict = {}   # (rows, cols, title) -> a heatmap frame made in the background, used once
_PREPARED_MAX = 16


def prepare_heatmap_in_background(result: Result) -> None:
    """Make the frame of ``result``'s heatmap (:func:`_heatmap_frame`) in a daemon thread, after the warm-up: an
    evaluation grid passes the result it will have when complete (placeholder values: only which cells exist counts),
    while its own thread mostly waits on the device. The heatmap at the end then only fills in the values and its
    cell labels (a 19 x 5 heatmap on 2 cores: 0.42 -> 0.30-0.33 s at the end); a result whose labels or title differ
    from the prepared one's (a grid stopped early) gets a frame of its own, as before. The same PNG either way."""
    global _warming
    _, rows, cols, title = _heatmap_parts(result)
    key, before = (tuple(rows), tuple(cols), title), _warming

    def run():
        if before is not None:
            before.join()
        try:
            frame = _heatmap_frame(rows, cols, title, make_figure=_make_figure)
        except Exception:  # noqa: BLE001 - the heatmap at the end makes its own frame, and reports what is wrong
            return
        while len(_prepared) >= _PREPARED_MAX:   # a long session of grids that each stopped early: keep a few
            _prepared.pop(next(iter(_prepared)))
        _prepared[key] = frame

    _warming = threading.Thread(target=run, name="robustkit-plot-prepare", daemon=True)
    _warming.start()


def _plot_heatmap(result: Result) -> bytes:
    """Corruption x severity heatmap in percent, with a 'clean' reference column and mean row/column;
    corruption rows in the benchmark's order (:func:`_in_benchmark_order`)."""
    import numpy as np

    grid, rows, cols, title = _heatmap_parts(result)
    _background_done()   # (before a frame it may still be preparing is looked for)
    frame = _prepared.pop((tuple(rows), tuple(cols), title), None)
    fig, ax, image = frame if frame is not None else _heatmap_frame(rows, cols, title)
    image.set_data(np.ma.masked_invalid(grid))
    for i in range(len(rows)):
        for j in range(len(cols)):
            v = grid[i, j]
            text, color = ("–", "0.3") if not np.isfinite(v) else (f"{v:.1f}", "black" if v > 60 else "white")
            ax.text(j, i, text, ha="center", va="center", fontsize=7, color=color).set_in_layout(False)
    return _png_bytes(fig)


def _plot_overlay(runs: Sequence[RunResult], base: RunResult | None, result_of, points_of, **axes) -> bytes | None:
    """One accuracy line per run that has points: ``points_of(result_of(run))`` maps x to accuracy; the clean
    accuracy is drawn at x = 0 unless the points have an x = 0 of their own. ``axes``: xlabel, ylabel, title."""
    with_points = [run for run in runs if result_of(run) and points_of(result_of(run))]
    if not with_points:
        return None
    fig = _new_figure(7.5, 4.2)
    ax = fig.add_subplot()
    for run, color in zip(with_points, _colors(len(with_points))):
        points = points_of(result_of(run))
        clean = _clean(result_of(run))
        if clean is not None:
            points = {0: clean, **points}
        ax.plot(list(points), [100 * a for a in points.values()], marker="o", markersize=3, color=color,
                linestyle="--" if run is base else "-", label=_run_label(run, base))
    ax.set(ylim=(0, 100), **axes)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    return _png_bytes(fig)


def _plot_fgsm_overlay(runs: Sequence[RunResult], base: RunResult | None, attack: str | None = None) -> bytes | None:
    """Accuracy per ε, one line per run; ε = 0 is the clean accuracy. Each run's first attack (FGSM when it has
    one), or with ``attack`` (``pgd``, ``torchattacks:NAME``) the runs evaluated with that one."""
    def result_of(run: RunResult):
        if attack is None:
            return run.fgsm
        return next((a for a in run.attacks if attack_label(a) == attack), None)

    title = "Accuracy under attack" if attack is None else f"Accuracy under {attack.upper()}"
    return _plot_overlay(runs, base, result_of, _fgsm_points, xlabel="ε (inputs in [0, 1])",
                         ylabel="accuracy (%)", title=title)


def _plot_corruption_overlay(runs: Sequence[RunResult], base: RunResult | None) -> bytes | None:
    """Accuracy per severity, one line per run; severity 0 = clean. Over the 15 benchmark corruptions when every
    run has all 15 x 5, else over the corruptions each run has (the axis label says which)."""
    with_corr = [run.corruptions for run in runs if run.corruptions]
    if with_corr and all(protocol_numbers(r).complete for r in with_corr):
        return _plot_overlay(runs, base, lambda run: run.corruptions, lambda r: protocol_numbers(r).by_severity,
                             xlabel="severity (0 = clean)", ylabel="accuracy over the 15 benchmark corruptions (%)",
                             title="Accuracy under corruption")
    return _plot_overlay(runs, base, lambda run: run.corruptions, _severity_means, xlabel="severity (0 = clean)",
                         ylabel="mean accuracy over the evaluated corruptions (%)", title="Accuracy under corruption")


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
        numbers = [protocol_numbers(run.corruptions) for run in with_corr]
        series = {"clean": [_clean(run.corruptions) or np.nan for run in with_corr]}
        if any(n.complete for n in numbers):
            series["corruption acc. (15 x 5)"] = [n.accuracy for n in numbers]
        if not all(n.complete for n in numbers):
            series["mean of evaluated cells"] = [None if n.complete else n.evaluated_mean for n in numbers]
        ylabel, title = "accuracy (%)", "Clean vs corruption accuracy"
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


def _plot_seed_summary(groups) -> bytes | None:
    """Per method (a robustkit.report.seeds.SeedGroup each): accuracy vs ε as mean ± std band, and mean
    corruption accuracy as a bar with std error bar and one dot per seed."""
    import math

    from robustkit.report.seeds import mean_std

    groups = [g for g in groups if len(g.runs) > 1]
    if not groups:
        return None
    fig = _new_figure(10.0, 4.0)
    ax_eps, ax_bar = fig.subplots(1, 2, gridspec_kw={"width_ratios": [3, 2]})
    colors = _colors(len(groups))
    for g, color in zip(groups, colors):
        eps = [0.0, *sorted(float(c[4:]) for c in g.values if c.startswith("eps:"))]
        stats = [mean_std(g.values["clean"])] + [mean_std(g.values[f"eps:{e}"]) for e in eps[1:]]
        keep = [(e, m, s) for e, (m, s) in zip(eps, stats) if math.isfinite(m)]
        if keep:
            xs, ms, ss = zip(*keep)
            ax_eps.plot(xs, [100 * m for m in ms], marker="o", markersize=3, color=color,
                        label=f"{g.method} (n={len(g.runs)})")
            ax_eps.fill_between(xs, [100 * (m - s) for m, s in zip(ms, ss)], [100 * (m + s) for m, s in zip(ms, ss)],
                                color=color, alpha=0.2, linewidth=0)
    ax_eps.set(xlabel="FGSM ε (inputs in [0, 1])", ylabel="accuracy (%)", ylim=(0, 100),
               title="Accuracy under FGSM (mean ± std over seeds)")
    ax_eps.grid(alpha=0.3)
    ax_eps.legend(fontsize=7)
    # The benchmark's 15 x 5 accuracy when every group has it, else the mean over the evaluated cells.
    key = "corruption" if all(any(math.isfinite(v) for v in g.values["corruption"]) for g in groups) else "evaluated"
    for i, (g, color) in enumerate(zip(groups, colors)):
        m, s = mean_std(g.values[key])
        if not math.isfinite(m):
            continue
        ax_bar.bar(i, 100 * m, yerr=100 * s, color=color, alpha=0.6, capsize=4)
        dots = [100 * v for v in g.values[key] if math.isfinite(v)]
        ax_bar.scatter([i] * len(dots), dots, color="black", s=10, zorder=3)
    ax_bar.set_xticks(range(len(groups)), [g.method for g in groups], rotation=20, fontsize=8)
    ylabel = "accuracy, 15 corruptions x 5 (%)" if key == "corruption" else "mean over evaluated cells (%)"
    ax_bar.set(ylabel=ylabel, ylim=(0, 100), title="Corruptions (bar: mean ± std; dots: seeds)")
    ax_bar.grid(alpha=0.3, axis="y")
    return _png_bytes(fig)
