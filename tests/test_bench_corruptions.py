"""bench/bench_corruptions.py: a corruption's time is the median of its timed passes, so one pause of the host in
one pass does not become the corruption's figure (fog at 224 px read 0.68x its usual rate once on the H100)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch
from conftest import load_script

BENCH = Path(__file__).resolve().parents[1] / "bench"


@pytest.fixture(scope="module")
def bench_script():
    return load_script(BENCH / "bench_corruptions.py")


def test_one_slow_pass_does_not_become_the_corruptions_time(bench_script, monkeypatch):
    pauses = []

    def fake_corrupt(x, name, severity, preset, seed):   # the untimed call, then a pass with a 0.2 s pause in it
        time.sleep(pauses.pop(0))
        return x
    monkeypatch.setattr(bench_script, "corrupt", fake_corrupt)
    images = torch.zeros(2, 3, 8, 8, dtype=torch.uint8)
    pauses[:] = [0.0, 0.2, 0.001, 0.001]
    assert bench_script.time_ours(images, "fog", [3], "imagenet-c", repeats=3) < 0.05 / 2
    assert pauses == []
    pauses[:] = [0.0, 0.2]
    assert bench_script.time_ours(images, "fog", [3], "imagenet-c") >= 0.2 / 2   # one pass: the pause is the figure
