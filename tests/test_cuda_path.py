"""The CUDA code path (bf16 autocast, channels_last layout, device generators) exercised on the CPU.

CI never has a GPU, so everything that defaults to on for CUDA can be switched on for the CPU
(``--amp``, ``--channels-last``) and is run here: training with all three methods, FGSM, PGD and every
corruption. bf16 changes the numbers a little; the comparisons below allow for that with margins of many
images, on fixed weights (tests/digits_net.py), never on a model trained in the test.
"""

from __future__ import annotations

import contextlib
import json

import pytest
import torch

from digits_net import load_fixed
from robustkit import methods
from robustkit.attacks import fgsm_sweep, pgd_sweep
from robustkit.config import TrainConfig
from robustkit.corruptions import CORRUPTIONS
from robustkit.evaluate import corruption_accuracies
from robustkit.train import fit


@pytest.fixture(scope="module")
def fixed(one_torch_thread):
    return load_fixed()


def bf16():
    return torch.autocast("cpu", dtype=torch.bfloat16)


@pytest.mark.parametrize("method, semi", [("baseline", False), ("gradaug", False), ("gradaug", True)])
def test_training_runs_the_cuda_path_on_the_cpu(tmp_path, monkeypatch, method, semi):
    seen = []
    original = methods.TRAIN_STEPS[method]

    def spy(model, batch, cfg, gen, autocast=contextlib.nullcontext):
        with autocast():
            seen.append((torch.is_autocast_enabled("cpu"), batch.x.is_contiguous(memory_format=torch.channels_last),
                         model.stem.weight.is_contiguous(memory_format=torch.channels_last),
                         batch.xu is None or batch.xu.is_contiguous(memory_format=torch.channels_last)))
        return original(model, batch, cfg, gen, autocast)

    monkeypatch.setitem(methods.TRAIN_STEPS, method, spy)
    cfg = TrainConfig(dataset="digits", arch="wrn-10-1", labels=100, batch_size=16, method=method, semi=semi,
                      steps=3, eval_every=3, eval_limit=50, device="cpu", amp=True, channels_last=True)
    res = fit(cfg, tmp_path / "r", progress=False)
    assert seen == [(True, True, True, True)] * 3   # every step: bf16 autocast on, NHWC batches and weights
    ck = torch.load(tmp_path / "r" / "checkpoint.pt", weights_only=True)
    assert ck["config"]["amp"] is True and ck["config"]["channels_last"] is True
    assert all(torch.isfinite(v).all() for v in ck["model"].values() if v.is_floating_point())
    assert res.test_acc is not None and 0.0 <= res.test_acc <= 1.0


def test_cpu_defaults_are_the_plain_path(tmp_path, monkeypatch):
    seen = []
    original = methods.TRAIN_STEPS["baseline"]

    def spy(model, batch, cfg, gen, autocast=contextlib.nullcontext):
        with autocast():
            seen.append((torch.is_autocast_enabled("cpu"), batch.x.is_contiguous(memory_format=torch.channels_last)))
        return original(model, batch, cfg, gen, autocast)

    monkeypatch.setitem(methods.TRAIN_STEPS, "baseline", spy)
    cfg = TrainConfig(dataset="digits", arch="wrn-10-1", labels=100, batch_size=16, method="baseline", steps=1,
                      eval_limit=20, device="cpu")
    fit(cfg, tmp_path / "r", progress=False)
    assert seen == [(False, False)]


def test_fgsm_and_pgd_on_the_cuda_path_are_close_to_fp32(fixed):
    model, x, _, y = fixed
    eps = [0.0, 0.02, 0.05]
    ref = fgsm_sweep(model, x, y, eps, batch_size=128)
    nhwc = fgsm_sweep(model, x, y, eps, batch_size=128, channels_last=True)
    both = fgsm_sweep(model, x, y, eps, batch_size=128, amp=True, channels_last=True)
    for r, a, b in zip(ref, nhwc, both):
        # layout alone: the same arithmetic up to summation order (one image of slack for a near-tie)
        assert abs(r["accuracy"] - a["accuracy"]) <= 1 / len(y) + 1e-12
        assert abs(r["accuracy"] - b["accuracy"]) <= 0.05   # bf16: 20 of 397 images of margin
    p_ref = pgd_sweep(model, x[:128], y[:128], [0.0, 0.02], steps=3, batch_size=64, seed=3)
    p_cuda = pgd_sweep(model, x[:128], y[:128], [0.0, 0.02], steps=3, batch_size=64, seed=3, amp=True,
                       channels_last=True)
    for r, b in zip(p_ref, p_cuda):
        assert abs(r["accuracy"] - b["accuracy"]) <= 0.08  # 10 of 128 images


def test_every_corruption_on_the_cuda_path(fixed):
    model, x, _, y = fixed
    for name in CORRUPTIONS:
        ref = corruption_accuracies([model], x, y, name, 3, preset="cifar-10-c", seed=1, batch_size=200)[0]
        nhwc = corruption_accuracies([model], x, y, name, 3, preset="cifar-10-c", seed=1, batch_size=200,
                                     channels_last=True)[0]
        both = corruption_accuracies([model], x, y, name, 3, preset="cifar-10-c", seed=1, batch_size=200,
                                     autocast=bf16, channels_last=True)[0]
        assert abs(ref - nhwc) <= 1 / len(y) + 1e-12, name
        assert abs(ref - both) <= 0.05, (name, ref, both)


def test_cli_flags_reach_the_jobs(fixed, tmp_path):
    from typer.testing import CliRunner

    from robustkit.cli import app

    run = tmp_path / "run"
    cfg = TrainConfig(dataset="digits", arch="wrn-10-1", labels=100, batch_size=16, method="baseline", steps=2,
                      eval_limit=20, device="cpu")
    fit(cfg, run, progress=False)
    runner = CliRunner()
    res = runner.invoke(app, ["fgsm", str(run), "--eps", "0.05", "--limit", "40", "--amp", "--channels-last",
                              "--no-progress", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    head = json.loads((run / "eval" / "fgsm.json").read_text())
    assert head["amp"] is True and head["channels_last"] is True
    res = runner.invoke(app, ["corrupt", str(run), "--corruptions", "fog", "--severities", "2", "--limit", "40",
                              "--amp", "--channels-last", "--no-progress", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    head = json.loads((run / "eval" / "corruptions.json").read_text())
    assert head["amp"] is True and head["channels_last"] is True
