"""Batch norm folded into the convolution before it (robustkit.models.fold): which pairs fold, and that the folded
model computes what the model does (logits and input gradients), on robustkit's WRN and torchvision's ResNet."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from robustkit.models import create_model
from robustkit.models.fold import fold_batchnorm
from robustkit.models.width import SlimBatchNorm2d
from robustkit.sources.models import Normalized


def _trained_looking(model: nn.Module, seed: int = 0) -> nn.Module:
    """Batch norms with statistics and affine parameters far from their initial 0/1 (a fold of the initial values
    would hide a wrong formula), in eval mode."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            c = m.num_features
            if m.running_mean is not None:
                m.running_mean.copy_(torch.rand(c, generator=g) - 0.5)
                m.running_var.copy_(torch.rand(c, generator=g) * 1.5 + 0.5)
            m.weight.data.copy_(torch.rand(c, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(c, generator=g) * 0.6 - 0.3)
    return model.eval()


def _batch_norms(model: nn.Module) -> int:
    return sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())


# Counted from the architectures, not from the code: a WRN block's bn2 follows its conv1 (one per block); its
# bn1 follows a residual sum, except in the first block when that block has a projection shortcut, where the
# stem's output goes to bn1 alone (wrn-28-2: 16 -> 32 channels; wrn-10-1: 16 -> 16, identity, so the stem's
# output also feeds the sum); the final bn follows a sum. ResNet-18: every one of its 20 batch norms follows a
# convolution (17 on the main path, 3 on the downsampling shortcuts).
@pytest.mark.parametrize("arch,size,expected", [("wrn-10-1", 32, 3), ("wrn-28-2", 32, 13), ("resnet18", 64, 20),
                                                ("normalized-resnet18", 64, 20)])
def test_folded_model_computes_the_same_logits_and_input_gradients(arch, size, expected):
    torch.manual_seed(0)
    if arch.startswith("wrn"):
        model = create_model(arch)
    else:
        model = torchvision.models.resnet18(num_classes=10)
        if arch.startswith("normalized"):
            model = Normalized(model, (0.49, 0.48, 0.45), (0.25, 0.24, 0.26))
    model = _trained_looking(model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    folded, n, why = fold_batchnorm(model)
    assert (n, why) == (expected, None)
    assert _batch_norms(folded) == _batch_norms(model) - expected
    assert not folded.training
    x = torch.rand(6, 3, size, size, requires_grad=True)
    y = torch.randint(0, 10, (6,))
    ref = model(x)
    (g_ref,) = torch.autograd.grad(nn.functional.cross_entropy(ref, y), x)
    out = folded(x)
    (g_out,) = torch.autograd.grad(nn.functional.cross_entropy(out, y), x)
    scale = ref.abs().max().item()
    assert (out - ref).abs().max().item() <= 1e-5 * max(1.0, scale)       # float32 rounding of the folded weights
    assert torch.allclose(g_out, g_ref, rtol=1e-4, atol=1e-6 * g_ref.abs().max().item())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())   # the model itself is untouched
    model.train()
    folded, _, _ = fold_batchnorm(model)
    assert model.training and not folded.training   # ... its mode included


def test_folded_convolutions_keep_the_channels_last_layout():
    """A channels_last model (robustkit's CUDA default) gets channels_last folded weights: an NCHW weight would make
    cuDNN convert it, or pick slower kernels, on every call."""
    model = _trained_looking(create_model("wrn-10-1")).to(memory_format=torch.channels_last)
    folded, n, _ = fold_batchnorm(model)
    convs = [m for m in folded.modules() if type(m) is nn.Conv2d]
    assert n == len(convs) == 3
    assert all(c.weight.is_contiguous(memory_format=torch.channels_last) and not c.weight.is_contiguous()
               for c in convs)
    x = torch.rand(2, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        assert torch.allclose(folded(x), model(x), atol=1e-5)


def test_a_batch_norm_with_batch_statistics_or_a_shared_conv_is_not_folded():
    """Batch norms that normalise with batch statistics (no running ones; robustkit's masked pass) stay, and a
    convolution called twice (its folded weights would change the other call too) is not folded."""
    class Shared(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 3, padding=1)
            self.bn = nn.BatchNorm2d(3)
            self.plain = nn.Conv2d(3, 4, 3, padding=1)
            self.stats = nn.BatchNorm2d(4, track_running_stats=False)

        def forward(self, x):
            return self.bn(self.conv(self.conv(x))).mean() + self.stats(self.plain(x)).mean()

    model = _trained_looking(Shared())
    assert fold_batchnorm(model) == (model, 0, "no batch norm directly after a convolution")

    wrn = _trained_looking(create_model("wrn-10-1"))
    for m in wrn.modules():
        if isinstance(m, SlimBatchNorm2d):
            m.masked_affine = (m.weight, m.bias)
    _, n, _ = fold_batchnorm(wrn)
    assert n == 0


def test_a_model_torch_fx_cannot_trace_comes_back_as_it_is_with_the_reason():
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
            self.bn = nn.BatchNorm2d(4)

        def forward(self, x):
            if x.sum() > 0:   # control flow on a tensor's value
                x = -x
            return self.bn(self.conv(x))

    model = _trained_looking(Branchy())
    same, n, why = fold_batchnorm(model)
    assert same is model and n == 0 and why.startswith("torch.fx cannot trace it")


@pytest.fixture
def folded_counts(spy_results) -> list[int]:
    """The number of pairs each call of fold_batchnorm folds, as the evaluation jobs call it."""
    import robustkit.models.fold as fold

    return spy_results(fold, "fold_batchnorm", lambda out: out[1])


def test_corrupt_fold_bn_reaches_the_model_and_the_results_say_so(evaluated_runs, tmp_path, monkeypatch,
                                                                  folded_counts):
    """`corrupt --fold-bn` evaluates the folded network (every call of the fold is on the evaluated model; its
    accuracies are the plain run's, up to an image flipped by float rounding) and the results record it; a model
    with nothing to fold is evaluated as it is, with a one-line note."""
    import robustkit.models.fold as fold
    from cli_helpers import invoke, plain_and_switched

    ckpt = next(evaluated_runs.glob("*/checkpoint.pt"))
    args = ["corrupt", str(ckpt), "--corruptions", "gaussian_noise,contrast", "--severities", "1,3", "--device", "cpu",
            "--no-progress"]
    a, b = plain_and_switched(args, ["--fold-bn"], tmp_path, "corruptions.json")
    assert folded_counts and all(n > 0 for n in folded_counts)
    assert a["fold_bn"] is False and b["fold_bn"] is True
    for x, y in zip([a["clean_accuracy"]] + [r["accuracy"] for r in a["results"]],
                    [b["clean_accuracy"]] + [r["accuracy"] for r in b["results"]]):
        assert abs(x - y) <= 1 / a["n"] + 1e-12

    monkeypatch.setattr(fold, "fold_batchnorm", lambda model: (model, 0, "no batch norm directly after a convolution"))
    noted = invoke(*args, "--fold-bn", "--out", tmp_path / "noted")
    def squeezed(text):   # rich wraps long lines, inside a path too
        return "".join(text.split())
    assert noted.exit_code == 0
    assert squeezed(f"note: --fold-bn: nothing folded in {ckpt}: no batch norm directly after a convolution") in \
        squeezed(noted.output)


def test_fgsm_fold_bn_reaches_the_model_too(evaluated_runs, tmp_path, folded_counts):
    """`fgsm --fold-bn`: the attacked network is the folded one, the results record it, and the accuracies are
    the plain run's to an image (not bit for bit: the README's torchattacks equality holds without it)."""
    from cli_helpers import plain_and_switched

    ckpt = next(evaluated_runs.glob("*/checkpoint.pt"))
    args = ["fgsm", str(ckpt), "--eps", "0.05,0.1", "--device", "cpu", "--no-progress"]
    a, b = plain_and_switched(args, ["--fold-bn"], tmp_path, "fgsm.json")
    assert folded_counts and all(n > 0 for n in folded_counts)
    assert a["fold_bn"] is False and b["fold_bn"] is True
    for x, y in zip(a["results"], b["results"]):
        assert x["eps"] == y["eps"] and abs(x["accuracy"] - y["accuracy"]) <= 1 / a["n"] + 1e-12


def test_unset_switches_take_the_devices_default_and_flags_override_it(evaluated_runs, tmp_path, monkeypatch):
    """--fold-bn / --cudnn-benchmark not given: the device type's entry of EVAL_SWITCH_DEFAULTS decides (off where it
    has none, which is the CPU today); given, the flag wins. (So making one a CUDA default is one table entry.)"""
    import json

    import robustkit.jobs as jobs
    from cli_helpers import invoke
    from robustkit.jobs import ModelOptions, resolve_switches

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert resolve_switches(None, cpu).fold_bn is False and resolve_switches(None, cpu).cudnn_benchmark is False
    monkeypatch.setattr(jobs, "EVAL_SWITCH_DEFAULTS", {"cuda": {"fold_bn": True}})
    assert resolve_switches(ModelOptions(), cuda).fold_bn is True
    assert resolve_switches(ModelOptions(fold_bn=False), cuda).fold_bn is False
    assert resolve_switches(ModelOptions(), cuda).cudnn_benchmark is False
    assert resolve_switches(ModelOptions(), cpu).fold_bn is False

    monkeypatch.setattr(jobs, "EVAL_SWITCH_DEFAULTS", {"cpu": {"fold_bn": True, "cudnn_benchmark": True}})
    ckpt = next(evaluated_runs.glob("*/checkpoint.pt"))
    args = ["corrupt", str(ckpt), "--corruptions", "contrast", "--severities", "1", "--device", "cpu", "--no-progress"]
    assert invoke(*args, "--out", tmp_path / "default").exit_code == 0
    assert invoke(*args, "--no-fold-bn", "--out", tmp_path / "off").exit_code == 0
    default, off = (json.loads((tmp_path / d / "corruptions.json").read_text()) for d in ("default", "off"))
    assert (default["fold_bn"], default["cudnn_benchmark"]) == (True, True)
    assert (off["fold_bn"], off["cudnn_benchmark"]) == (False, True)
