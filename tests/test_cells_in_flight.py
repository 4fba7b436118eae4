"""A corruption grid reads each cell's counts back while the device works on the cells after it
(robustkit.evaluate.InFlight, robustkit.jobs.CELLS_AHEAD): no host sync between cells. And while an evaluation
grid runs on an accelerator, Python hands its lock between threads every 0.2 ms (jobs._quick_thread_switches).

On the CPU every result is there at once, so these tests make the "device" slow by hand (``InFlight._finished``
says no copy has finished): the grid must then run ``CELLS_AHEAD`` cells in front of its reads, read them in
order, record exactly what it records when it reads each cell at once, and keep the cells it launched when an
error or Ctrl-C stops it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from robustkit import evaluate, jobs
from robustkit.evaluate import InFlight
from robustkit.jobs import Progress, run_corruptions

CELLS = dict(corruptions=["contrast", "fog"], severities=[1, 2, 3], limit=30, device="cpu")


@pytest.fixture
def ckpt(evaluated_runs, tmp_path) -> Path:
    shutil.copytree(evaluated_runs / "baseline", tmp_path / "baseline")
    return tmp_path / "baseline" / "checkpoint.pt"


@pytest.fixture
def slow_device(monkeypatch):
    """No result is finished until the grid waits for it."""
    monkeypatch.setattr(InFlight, "_finished", staticmethod(lambda event: False))


def test_results_come_back_in_order_at_most_ahead_unread(slow_device):
    flight = InFlight(ahead=2)
    read = []
    for k in range(5):
        flight.put(f"cell {k}", torch.tensor([k, 10 * k]))
        read.append(flight.ready())
        assert len(flight) <= 2
    assert read == [[], [], [("cell 0", [0, 0])], [("cell 1", [1, 10])], [("cell 2", [2, 20])]]
    assert flight.drain() == [("cell 3", [3, 30]), ("cell 4", [4, 40])] and len(flight) == 0


def test_finished_results_are_read_at_once_and_ahead_0_reads_every_one(monkeypatch):
    flight = InFlight(ahead=5)   # the CPU: every result is finished when it is put
    flight.put("a", torch.tensor([3]))
    assert flight.ready() == [("a", [3])]
    monkeypatch.setattr(InFlight, "_finished", staticmethod(lambda event: False))
    flight = InFlight(ahead=0)   # even unfinished: read before the next cell is launched
    flight.put("b", torch.tensor([4]))
    assert flight.ready() == [("b", [4])]
    with pytest.raises(ValueError, match="ahead"):
        InFlight(-1)


class _Launches:
    """Spies on the grid: the cells it launches (corruption_counts) and, at each progress report, how many it had
    launched by then."""

    def __init__(self, monkeypatch, fail_at: int | None = None):
        self.cells, self.at_report = [], []
        real = evaluate.corruption_counts

        def launch(models, images, labels, name, sev, **kw):
            if fail_at is not None and len(self.cells) + 1 == fail_at:
                raise RuntimeError("CUDA error: an illegal memory access was encountered")
            self.cells.append((name, sev))
            return real(models, images, labels, name, sev, **kw)

        monkeypatch.setattr(jobs, "corruption_counts", launch)
        self.progress = Progress()
        self.progress.advance = lambda n=1, label=None: self.at_report.append(len(self.cells))


def test_the_grid_runs_ahead_of_its_reads_and_records_what_it_records_reading_each_cell_at_once(
        ckpt, tmp_path, monkeypatch):
    monkeypatch.setattr(jobs, "CELLS_AHEAD", 0)
    at_once = run_corruptions([ckpt], out=tmp_path / "at-once", **CELLS)[0]
    monkeypatch.setattr(InFlight, "_finished", staticmethod(lambda event: False))
    monkeypatch.setattr(jobs, "CELLS_AHEAD", 3)
    spy = _Launches(monkeypatch)
    ahead = run_corruptions([ckpt], out=tmp_path / "ahead", progress=spy.progress, **CELLS)[0]
    # cell k is read (and reported) once cell k + 3 is launched; the last three when the grid has launched them all
    assert spy.at_report == [4, 5, 6, 6, 6, 6]
    assert ahead["results"] == at_once["results"] and ahead["complete"]
    on_disk = json.loads((tmp_path / "ahead" / "corruptions.json").read_text())
    assert on_disk["results"] == at_once["results"]


def test_an_error_keeps_the_cells_launched_before_it_and_a_resume_runs_only_the_rest(
        ckpt, tmp_path, monkeypatch, slow_device):
    monkeypatch.setattr(jobs, "CELLS_AHEAD", 3)
    spy = _Launches(monkeypatch, fail_at=5)
    with pytest.raises(RuntimeError, match="illegal memory access"):
        run_corruptions([ckpt], out=tmp_path / "r", progress=spy.progress, **CELLS)
    assert spy.at_report == [4]   # one cell read before the error; the other three still in flight then
    kept = json.loads((tmp_path / "r" / "corruptions.json").read_text())
    assert [(r["corruption"], r["severity"]) for r in kept["results"]] == spy.cells == [
        ("contrast", 1), ("contrast", 2), ("contrast", 3), ("fog", 1)]
    again = _Launches(monkeypatch)
    result = run_corruptions([ckpt], out=tmp_path / "r", progress=again.progress, **CELLS)[0]
    assert again.cells == [("fog", 2), ("fog", 3)] and result["complete"]


def test_ctrl_c_keeps_the_cells_in_flight(ckpt, tmp_path, monkeypatch, slow_device):
    monkeypatch.setattr(jobs, "CELLS_AHEAD", 3)
    spy = _Launches(monkeypatch)

    def interrupt(n=1, label=None):
        spy.at_report.append(len(spy.cells))
        raise KeyboardInterrupt   # at the first report: cell 1 read, cells 2-4 in flight

    spy.progress.advance = interrupt
    with pytest.raises(KeyboardInterrupt):
        run_corruptions([ckpt], out=tmp_path / "r", progress=spy.progress, **CELLS)
    assert spy.at_report == [4]   # no report for the cells read after Ctrl-C
    kept = json.loads((tmp_path / "r" / "corruptions.json").read_text())
    assert len(kept["results"]) == 4 and not kept["complete"]


@pytest.mark.parametrize("fail", [False, True])
def test_a_grid_on_an_accelerator_hands_the_gil_over_quickly_and_restores_the_interval(ckpt, tmp_path, monkeypatch,
                                                                                        fail):
    """While the cells run on an accelerator, threads beside the grid get Python's lock for 0.2 ms at a time, not
    5 ms (jobs._quick_thread_switches); the interval the process had comes back however the grid ends. The CPU grid
    keeps the process's interval. (The device is faked: only ``dev.type`` decides.)"""
    import sys

    seen = []
    real = evaluate.corruption_counts

    def launch(*a, **kw):
        seen.append(sys.getswitchinterval())
        if fail:
            raise RuntimeError("out of memory")
        return real(*a, **kw)

    monkeypatch.setattr(jobs, "corruption_counts", launch)

    def intervals_in_a_grid(out) -> list[float]:   # the interval each cell saw; the grid fails where asked to
        seen.clear()
        if fail:
            with pytest.raises(RuntimeError, match="out of memory"):
                run_corruptions([ckpt], out=out, **CELLS)
        else:
            run_corruptions([ckpt], out=out, **CELLS)
        assert seen
        return list(seen)

    process_had = sys.getswitchinterval()
    sys.setswitchinterval(0.003)
    try:
        with jobs._quick_thread_switches(torch.device("cuda", 0)):
            assert sys.getswitchinterval() == pytest.approx(jobs.SWITCH_INTERVAL_S) == pytest.approx(0.0002)
        assert sys.getswitchinterval() == pytest.approx(0.003)
        # the CPU grid (the only one that runs here) leaves the interval alone, whether its cells succeed or fail
        assert all(v == pytest.approx(0.003) for v in intervals_in_a_grid(tmp_path / "r"))
        assert sys.getswitchinterval() == pytest.approx(0.003)
        # on an accelerator (faked): the short interval during the cells, the old one after, even after an error
        monkeypatch.setattr(jobs, "_quick_thread_switches", _as_if_on_cuda(jobs._quick_thread_switches))
        assert all(v == pytest.approx(0.0002) for v in intervals_in_a_grid(tmp_path / "r2"))
        assert sys.getswitchinterval() == pytest.approx(0.003)
    finally:
        sys.setswitchinterval(process_had)


def _as_if_on_cuda(switches):
    return lambda dev: switches(torch.device("cuda", 0))


def test_it_counts_the_reads_that_waited_for_the_device():
    """stats(): a read that finds its copy unfinished waits on its event, and is counted with the seconds it
    waited; a finished one is not (the figures bench_pipeline and bench_corrupt_cold print)."""
    class Event:
        def __init__(self, done):
            self.done, self.synced = done, 0

        def query(self):
            return self.done

        def synchronize(self):
            self.synced += 1

    flight = InFlight(ahead=1)
    events = [Event(False), Event(True), Event(False)]
    for k, event in enumerate(events):
        flight._unread.append((k, torch.tensor([k]), event))   # as put() leaves a CUDA result
    assert flight.ready() == [(0, [0]), (1, [1])]   # 0: more than 1 unread, waited for; 1: finished
    assert flight.drain() == [(2, [2])]
    assert [e.synced for e in events] == [1, 0, 1]
    stats = flight.stats()
    assert (stats["ahead"], stats["reads"], stats["waits"]) == (1, 3, 2) and stats["wait_s"] >= 0


def test_the_fgsm_sweep_on_an_accelerator_hands_the_gil_over_quickly_too(ckpt, tmp_path, monkeypatch):
    """The plots' warm-up runs beside fgsm's attacks as beside corrupt's cells: the same short interval there."""
    import sys

    from robustkit import attacks

    seen, real = [], attacks.fgsm_sweep
    monkeypatch.setattr(attacks, "fgsm_sweep", lambda *a, **kw: seen.append(sys.getswitchinterval()) or real(*a, **kw))
    monkeypatch.setattr(jobs, "_quick_thread_switches", _as_if_on_cuda(jobs._quick_thread_switches))
    before = sys.getswitchinterval()
    jobs.run_fgsm([ckpt], [0.0, 0.1], limit=20, device="cpu", out=tmp_path / "f")
    assert seen == [pytest.approx(0.0002)] and sys.getswitchinterval() == before
