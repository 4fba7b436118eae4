"""The result files' plot is warmed up in the background while an evaluation grid runs on an accelerator
(robustkit.report.plots.warm_up_in_background, robustkit.jobs._warm_up_plots): once per process, every plot waits
for it, and it changes no pixel."""

from __future__ import annotations

import shutil
import threading
import time

import pytest
import torch
from handmade import corr_result

from robustkit import jobs
from robustkit.distributed import World
from robustkit.report import plots

CELLS = {(c, s): 0.5 + 0.05 * s for c in ("gaussian_noise", "fog", "contrast") for s in (1, 3)}


def test_the_warm_up_runs_once_and_every_plot_waits_for_it(monkeypatch):
    done = threading.Event()
    runs = []

    def slow_warm_up():
        time.sleep(0.3)
        runs.append(threading.current_thread().name)
        done.set()

    seen = []
    make = plots._make_figure

    def spy_make(width, height):
        seen.append(done.is_set())
        return make(width, height)

    monkeypatch.setattr(plots, "_warming", None)
    monkeypatch.setattr(plots, "_warm_up", slow_warm_up)
    monkeypatch.setattr(plots, "_make_figure", spy_make)
    plots.warm_up_in_background()
    plots.warm_up_in_background()          # a second grid in the same process: no second warm-up
    png = plots._plot_heatmap(corr_result(CELLS))
    assert png.startswith(b"\x89PNG")
    assert seen == [True], "the plot drew before the warm-up had finished"
    plots._warming.join()
    assert runs == ["robustkit-plot-warm-up"]


def test_a_warm_up_changes_no_pixel_of_the_plots(monkeypatch):
    before = plots._plot_heatmap(corr_result(CELLS))
    monkeypatch.setattr(plots, "_warming", None)
    plots.warm_up_in_background()
    plots._warming.join()
    assert plots._plot_heatmap(corr_result(CELLS)) == before


def test_a_failed_warm_up_is_forgotten(monkeypatch):
    def broken():
        raise RuntimeError("no fonts")

    escaped = []
    monkeypatch.setattr(threading, "excepthook", escaped.append)   # what would print a thread's traceback
    monkeypatch.setattr(plots, "_warming", None)
    monkeypatch.setattr(plots, "_warm_up", broken)
    plots.warm_up_in_background()
    assert plots._plot_heatmap(corr_result(CELLS)).startswith(b"\x89PNG")
    assert escaped == [], "the warm-up's error escaped its thread (a traceback on the user's screen)"


def test_grids_warm_up_on_an_accelerator_only_and_on_the_writing_rank(monkeypatch):
    started = []
    monkeypatch.setattr(plots, "warm_up_in_background", lambda: started.append(1))
    jobs._warm_up_plots(torch.device("cpu"))        # the CPU grid would lose a core to it (measured)
    assert started == []
    jobs._warm_up_plots(torch.device("cuda", 0))   # no GPU needed: nothing here touches the device
    assert started == [1]
    monkeypatch.setattr(jobs, "world", lambda: World(rank=1, size=2, local_rank=1))
    jobs._warm_up_plots(torch.device("cuda", 1))   # rank 1 writes no result files
    assert started == [1]


def test_both_evaluation_grids_start_the_warm_up_for_their_device(monkeypatch, evaluated_runs, tmp_path):
    devices = []
    monkeypatch.setattr(jobs, "_warm_up_plots", devices.append)
    runs = tmp_path / "runs"
    shutil.copytree(evaluated_runs / "baseline", runs / "baseline")
    jobs.run_corruptions([runs], ["contrast"], [1], limit=20, device="cpu", force=True)
    jobs.run_fgsm([runs], [0.0], limit=20, device="cpu", force=True)
    assert devices == [torch.device("cpu"), torch.device("cpu")]


def test_the_heatmap_is_laid_out_before_its_cell_labels_and_drawn_once(monkeypatch):
    """The heatmap is laid out once, before its cell labels exist, and savefig draws it once: a layout engine left
    on the figure makes savefig draw every text twice (measured on 2 cores: 0.34 -> 0.30 s for 19 x 5 cells; the
    PNG the same bytes). Every cell still gets its label, inside the axes."""
    from matplotlib.figure import Figure

    draws, real = [], Figure.draw

    def counting(self, renderer):
        draws.append(self.get_layout_engine())
        labels = [t for t in self.axes[0].texts]
        draws.append(len(labels))
        return real(self, renderer)

    monkeypatch.setattr(Figure, "draw", counting)
    cells = {(c, s): 0.5 for c in ("gaussian_noise", "fog") for s in (1, 2, 3)}
    plots._plot_heatmap(corr_result(cells))
    rows, cols = 2 + 1, 3 + 2                   # + the mean row; + clean and mean columns
    assert draws == [None, rows * cols], draws   # one draw, no layout engine left, every cell labelled


def test_laying_the_heatmap_out_early_changes_no_pixel(monkeypatch):
    """The same PNG, byte for byte, as when savefig lays the figure out itself with the cell labels there (as
    before 2026-11-27): the labels take no part in the layout."""
    cells = {(c, s): 0.4 + 0.1 * s for c in ("gaussian_noise", "fog", "elastic_transform") for s in (1, 3, 5)}
    early = plots._plot_heatmap(corr_result(cells))
    monkeypatch.setattr(plots, "_lay_out_now", lambda fig: None)   # the engine stays: savefig lays it out
    assert plots._plot_heatmap(corr_result(cells)) == early


def test_every_plot_is_laid_out_once_and_drawn_once_with_the_same_pixels(monkeypatch):
    """_png_bytes lays a figure out before savefig (one draw instead of two): the FGSM curve comes out the same, byte
    for byte, as when savefig lays it out itself."""
    from handmade import fgsm_result
    from matplotlib.figure import Figure

    result = fgsm_result({0.0: 0.9, 0.1: 0.5, 0.2: 0.2})
    draws, real = [], Figure.draw
    monkeypatch.setattr(Figure, "draw", lambda self, renderer: draws.append(1) or real(self, renderer))
    once = plots._plot_fgsm(result)
    assert len(draws) == 1
    monkeypatch.setattr(plots, "_lay_out_now", lambda fig: None)
    assert plots._plot_fgsm(result) == once and len(draws) == 3   # savefig's own layout: two draws


# ---------------------------------------------------------------- the heatmap's frame, made while the grid runs
FULL = {(c, s): 0.3 + 0.1 * s + (0.05 if c == "fog" else 0.0)
        for c in ("gaussian_noise", "fog", "contrast", "elastic_transform") for s in (1, 2, 3, 4, 5)}


def _heatmap_in_one_go(result) -> bytes:
    """The heatmap drawn the way it was before its frame could be made ahead: the image made with its values, then
    the same decorations, layout, cell labels and PNG (an independent reference for the prepared path)."""
    import numpy as np
    from matplotlib import colormaps

    grid, rows, cols, title = plots._heatmap_parts(result)
    fig = plots._make_figure(1.2 + 0.75 * len(cols), 1.2 + 0.38 * len(rows))
    ax = fig.add_subplot()
    image = ax.imshow(np.ma.masked_invalid(grid), cmap=colormaps["viridis"].with_extremes(bad="0.85"), vmin=0,
                      vmax=100, aspect="auto")
    ax.set_xticks(range(len(cols)), cols)
    ax.set_yticks(range(len(rows)), rows, fontsize=8)
    ax.set_xlabel("severity")
    for x in (0.5, len(cols) - 1.5):
        ax.axvline(x, color="white", linewidth=2)
    ax.axhline(len(rows) - 1.5, color="white", linewidth=2)
    ax.set_title(title, fontsize=9)
    fig.colorbar(image, ax=ax, label="accuracy (%)", shrink=0.8)
    for i in range(len(rows)):
        for j in range(len(cols)):
            v = grid[i, j]
            text, color = ("–", "0.3") if not np.isfinite(v) else (f"{v:.1f}", "black" if v > 60 else "white")
            ax.text(j, i, text, ha="center", va="center", fontsize=7, color=color).set_in_layout(False)
    return plots._png_bytes(fig)


def _frames_made(monkeypatch) -> list[str]:
    """The threads that make a heatmap frame, one entry per frame."""
    made, real = [], plots._heatmap_frame
    monkeypatch.setattr(plots, "_heatmap_frame",
                        lambda *a, **kw: made.append(threading.current_thread().name) or real(*a, **kw))
    return made


@pytest.mark.parametrize("cells, clean", [(FULL, 0.9), ({k: v for k, v in FULL.items() if k[1] != 4}, None)])
def test_a_frame_made_ahead_gives_the_heatmap_drawn_in_one_go_byte_for_byte(monkeypatch, cells, clean):
    result = corr_result(cells, clean=clean, run="r1", method="gradaug")
    made = _frames_made(monkeypatch)
    plots.prepare_heatmap_in_background(corr_result({k: 0.0 for k in cells}, clean=None, run="r1", method="gradaug"))
    assert plots._plot_heatmap(result) == _heatmap_in_one_go(result)
    assert made == ["robustkit-plot-prepare"]       # the heatmap took the prepared frame: none of its own
    assert plots._plot_heatmap(result) == _heatmap_in_one_go(result)   # used once: the next draw makes a frame
    assert made == ["robustkit-plot-prepare", "MainThread"]


def test_a_result_whose_labels_differ_from_the_prepared_one_gets_a_frame_of_its_own(monkeypatch):
    """A grid stopped early: its bottom row is 'mean of N evaluated', not 'benchmark 15'; another title: n."""
    made = _frames_made(monkeypatch)
    plots.prepare_heatmap_in_background(corr_result(FULL))
    partial = corr_result(dict(list(FULL.items())[:7]))
    assert plots._plot_heatmap(partial) == _heatmap_in_one_go(partial)
    other_n = corr_result(FULL, n=50)
    assert plots._plot_heatmap(other_n) == _heatmap_in_one_go(other_n)
    assert made == ["robustkit-plot-prepare", "MainThread", "MainThread"]
    plots._prepared.clear()


def test_a_grid_prepares_its_heatmap_frame_while_it_runs(monkeypatch, evaluated_runs, tmp_path):
    """Where plots are worked on ahead (an accelerator, the writing rank; forced here on the CPU), the grid has its
    heatmap's frame made in the background, for the result it will have when complete, and its heatmap uses it:
    the same PNG as a grid that made none."""
    runs = tmp_path / "runs"
    shutil.copytree(evaluated_runs / "baseline", runs / "baseline")
    cells = dict(corruptions=["contrast", "fog"], severities=[1, 2], limit=20, device="cpu")
    jobs.run_corruptions([runs / "baseline"], out=tmp_path / "plain", **cells)
    made = _frames_made(monkeypatch)
    monkeypatch.setattr(jobs, "_plots_ahead", lambda dev: True)
    jobs.run_corruptions([runs / "baseline"], out=tmp_path / "ahead", **cells)
    assert made == ["robustkit-plot-prepare"]
    assert (tmp_path / "ahead" / "corruptions.png").read_bytes() == (tmp_path / "plain" / "corruptions.png").read_bytes()


def test_heatmap_frames_are_prepared_on_an_accelerator_only_and_on_the_writing_rank(monkeypatch):
    asked = []
    monkeypatch.setattr(plots, "prepare_heatmap_in_background", asked.append)
    result = corr_result(FULL)
    jobs._prepare_heatmaps(torch.device("cpu"), [result])
    assert asked == []
    jobs._prepare_heatmaps(torch.device("cuda", 0), [result, result])
    assert asked == [result, result]
    monkeypatch.setattr(jobs, "world", lambda: World(rank=1, size=2, local_rank=1))
    jobs._prepare_heatmaps(torch.device("cuda", 1), [result])
    assert len(asked) == 2
