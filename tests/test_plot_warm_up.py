"""The result files' plot is warmed up in the background while an evaluation grid runs on an accelerator
(robustkit.report.plots.warm_up_in_background, robustkit.jobs._warm_up_plots): once per process, every plot waits
for it, and it changes no pixel."""

from __future__ import annotations

import shutil
import threading
import time

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
