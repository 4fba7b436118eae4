"""bench/bench_corruptions.py: a corruption's time is the median of its timed passes, so one pause of the host in
one pass does not become the corruption's figure (fog at 224 px read 0.68x its usual rate once on the H100)."""

from __future__ import annotations

import json
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


def test_every_kernel_variant_sets_attributes_its_module_has(bench_script):
    """A variant that set an attribute the kernels no longer read would time the shipped kernels under its label."""
    pytest.importorskip("triton")
    labels = {}
    for name in ("jpeg_compression", "spatter", "glass_blur"):
        variants = bench_script.kernel_variants(name)
        labels[name] = [label for label, _ in variants]
        for label, changes in variants:
            for obj, attr, value in changes:
                assert hasattr(obj, attr) and type(getattr(obj, attr)) is type(value), (name, label, attr)
    assert bench_script.kernel_variants("fog") is None
    assert labels["spatter"][:2] == list(bench_script.ALWAYS_TIMED)   # timed in every CUDA run, `quick` included


def test_kernel_compile_times_compiles_both_kinds_of_distance_kernel(capsys):
    """bench/kernel_compile_times.py (a small cap: K = 3, 2, 1) compiles each kind of move both ways for an H100."""
    pytest.importorskip("triton")
    script = load_script(BENCH / "kernel_compile_times.py")
    assert script.main(["--cap", "3"]) == 0
    rows = [(line[:24].strip(), *line[24:].split()) for line in capsys.readouterr().out.splitlines()
            if line.startswith("taps ")]
    assert [r[:3] for r in rows] == [(way, kind, k) for way in ("taps unrolled", "taps in a loop")
                                     for kind, k in (("axial", "3"), ("diagonal", "2"), ("knight", "1"))]
    assert all(float(r[3]) > 0 for r in rows)


def test_fft_first_calls_times_each_batch_sized_corruption_three_ways(capsys, tmp_path):
    """bench/fft_first_calls.py (CPU, a small batch): every BATCH_SIZED corruption at each severity asked for, a call
    on 2 images then the first and second on the grid's batch, in the table and the JSON; a bad batch is one line."""
    from robustkit.corruptions.warm_up import BATCH_SIZED

    script = load_script(BENCH / "fft_first_calls.py")
    argv = ["--device", "cpu", "--batch", "6", "--severities", "1,5", "--json", str(tmp_path / "f.json")]
    assert script.main(argv) == 0
    out = capsys.readouterr().out
    saved = json.loads((tmp_path / "f.json").read_text())
    cells = [(c["corruption"], c["severity"]) for c in saved["cells"]]
    assert cells == [(name, sev) for name in sorted(BATCH_SIZED) for sev in (1, 5)]
    assert all(c["two_ms"] > 0 and c["first_ms"] > 0 and c["second_ms"] > 0 for c in saved["cells"])
    assert all(f"{name} s{sev}" in out for name, sev in cells) and "6: first (ms)" in out
    assert script.main(["--device", "cpu", "--batch", "1"]) == 2
    assert capsys.readouterr().err.strip() == "error: --batch must be >= 2"


def test_no_cpu_leaves_the_cpu_column_out(bench_script, monkeypatch, capsys):
    """--no-cpu (gpu_check.sh quick: a GPU check) times nothing on the CPU; without it the CPU column is timed."""
    timed = []
    monkeypatch.setattr(bench_script, "time_ours", lambda imgs, name, *a, **k: timed.append(name) or 0.01)
    args = ["bench_corruptions.py", "--device", "cpu", "--no-reference", "--sizes", "32", "--corruptions",
            "contrast,fog", "--severities", "3", "--quick"]
    monkeypatch.setattr("sys.argv", args + ["--no-cpu"])
    bench_script.main()
    out = capsys.readouterr().out
    (row,) = [line for line in out.splitlines() if line.startswith("contrast ")]
    assert timed == [] and row.split()[1:3] == ["nan", "nan"]
    monkeypatch.setattr("sys.argv", args)
    bench_script.main()
    assert timed == ["contrast", "fog"]
