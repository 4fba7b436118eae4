"""Evaluation under torchrun (gloo, 2 CPU processes) equals a single-process run exactly."""

from __future__ import annotations

import json
import shutil

import pytest
from cli_helpers import torchrun


def _results(path):
    data = json.loads(path.read_text())
    return data["clean_accuracy"], data["results"]


@pytest.fixture
def run(evaluated_runs, tmp_path):
    dst = tmp_path / "runs"
    shutil.copytree(evaluated_runs / "gradaug", dst / "gradaug", ignore=shutil.ignore_patterns("eval"))
    return dst / "gradaug"


def test_fgsm_and_corruptions_under_torchrun_equal_one_process(run, tmp_path):
    from robustkit.jobs import run_corruptions, run_fgsm

    common = dict(limit=90, batch_size=16, device="cpu")   # 6 batches: 3 per rank, the last one short
    run_fgsm([run], [0.0, 0.05, 0.1], out=tmp_path / "one", **common)
    run_corruptions([run], ["fog", "gaussian_noise"], [1, 3], out=tmp_path / "one", **common)
    flags = ["--limit", "90", "--batch-size", "16", "--device", "cpu", "--no-progress", "--out", tmp_path / "two"]
    res = torchrun(["fgsm", run, "--eps", "0.05,0.1", *flags], tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    res = torchrun(["corrupt", run, "--corruptions", "fog,gaussian_noise", "--severities", "1,3", *flags], tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    for name in ("fgsm.json", "corruptions.json"):
        assert _results(tmp_path / "two" / name) == _results(tmp_path / "one" / name), name
    assert (res.stdout + res.stderr).count("wrote ") == 1   # rank 0 alone writes and prints
