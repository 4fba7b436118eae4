"""`corrupt --cudnn-benchmark` (robustkit.evaluate.CudnnTuned): cuDNN's algorithm timing is on for the network's
forward and for nothing else (not the corruptions, not after it), and off under --deterministic. The flag is a
plain switch on a CPU too, so this is tested here; what it buys is measured on a GPU (bench/profile_corruptions.py
--network-variants tuned)."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from cli_helpers import invoke
from robustkit.evaluate import CudnnTuned


class _Seen(nn.Module):
    """Records torch.backends.cudnn.benchmark at each call."""

    def __init__(self, fail: bool = False):
        super().__init__()
        self.seen: list[bool] = []
        self.fail = fail

    def forward(self, x):
        self.seen.append(torch.backends.cudnn.benchmark)
        if self.fail:
            raise RuntimeError("boom")
        return x


@pytest.fixture
def cudnn_flags():
    old = torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic
    yield
    torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = old


@pytest.mark.parametrize("before", [False, True])
def test_the_forward_runs_tuned_and_the_flag_is_restored_after(cudnn_flags, before):
    torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = before, False
    inner = _Seen()
    CudnnTuned(inner)(torch.zeros(1))
    assert inner.seen == [True] and torch.backends.cudnn.benchmark is before
    failing = _Seen(fail=True)
    with pytest.raises(RuntimeError, match="boom"):
        CudnnTuned(failing)(torch.zeros(1))
    assert failing.seen == [True] and torch.backends.cudnn.benchmark is before


def test_deterministic_settings_keep_the_timing_off(cudnn_flags):
    torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = False, True
    inner = _Seen()
    CudnnTuned(inner)(torch.zeros(1))
    assert inner.seen == [False]


def test_corrupt_cudnn_benchmark_tunes_the_network_only(evaluated_runs, tmp_path, monkeypatch, cudnn_flags):
    """Through the CLI: every evaluating forward of the network runs with the flag on, every corruption with it off, the
    accuracies equal the plain run's (the flag changes nothing on a CPU), and the results record it."""
    import robustkit.corruptions as corruptions
    import robustkit.models.wrn as wrn

    torch.backends.cudnn.benchmark = False
    network, corrupting = [], []
    real_forward, real_corrupt = wrn.WideResNet.forward, corruptions.corrupt

    def forward(self, x):
        network.append(torch.backends.cudnn.benchmark)
        return real_forward(self, x)

    def corrupt(*args, **kwargs):
        corrupting.append(torch.backends.cudnn.benchmark)
        return real_corrupt(*args, **kwargs)
    monkeypatch.setattr(wrn.WideResNet, "forward", forward)
    monkeypatch.setattr(corruptions, "corrupt", corrupt)
    ckpt = next(evaluated_runs.glob("*/checkpoint.pt"))
    args = ["corrupt", str(ckpt), "--corruptions", "gaussian_noise,contrast", "--severities", "2", "--device", "cpu",
            "--no-progress"]
    plain = invoke(*args, "--out", tmp_path / "plain")
    assert plain.exit_code == 0 and network and not any(network)
    network.clear()
    corrupting.clear()
    tuned = invoke(*args, "--cudnn-benchmark", "--out", tmp_path / "tuned")
    assert tuned.exit_code == 0, tuned.output
    # the first forward is the 2-image check of the model's outputs, untuned (timing that shape would be waste)
    assert len(network) > 1 and network[0] is False and all(network[1:]) and corrupting and not any(corrupting)
    assert torch.backends.cudnn.benchmark is False
    a, b = (json.loads((tmp_path / d / "corruptions.json").read_text()) for d in ("plain", "tuned"))
    assert [r["accuracy"] for r in a["results"]] == [r["accuracy"] for r in b["results"]]
    assert a["cudnn_benchmark"] is False and b["cudnn_benchmark"] is True


def test_with_compile_the_tuning_wraps_the_compiled_model(evaluated_runs):
    """--compile --cudnn-benchmark: the tuning is outside the compiled model (TorchInductor's code calls cuDNN's
    convolutions at run time, under the flag); inside, Dynamo would have to trace a change of a global flag."""
    from robustkit.compiling import CompiledEval
    from robustkit.jobs import ModelOptions, Progress, _build, targets

    (t,) = targets([next(evaluated_runs.glob("*/checkpoint.pt"))])
    model = _build(t, torch.device("cpu"), False, ModelOptions(compile=True, cudnn_benchmark=True), Progress())
    assert isinstance(model, CudnnTuned) and isinstance(model.model, CompiledEval)


def test_fgsm_cudnn_benchmark_tunes_the_forwards(evaluated_runs, tmp_path, monkeypatch, cudnn_flags):
    import robustkit.models.wrn as wrn

    torch.backends.cudnn.benchmark = False
    network = []
    real_forward = wrn.WideResNet.forward

    def forward(self, x):
        network.append(torch.backends.cudnn.benchmark)
        return real_forward(self, x)
    monkeypatch.setattr(wrn.WideResNet, "forward", forward)
    ckpt = next(evaluated_runs.glob("*/checkpoint.pt"))
    tuned = invoke("fgsm", str(ckpt), "--eps", "0.05", "--device", "cpu", "--no-progress", "--cudnn-benchmark",
                   "--out", tmp_path / "tuned")
    assert tuned.exit_code == 0, tuned.output
    assert len(network) > 1 and network[0] is False and all(network[1:])   # the output check, then the sweep
    assert json.loads((tmp_path / "tuned" / "fgsm.json").read_text())["cudnn_benchmark"] is True
    assert torch.backends.cudnn.benchmark is False
