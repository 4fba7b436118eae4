"""Convolution + bias (+ residual) + ReLU as one cuDNN call (robustkit.models.fuse, `corrupt --fuse-conv`).

cuDNN's fused ops run on CUDA only; here (CPU) the tests check which patterns are fused, that a fused model off CUDA
computes exactly what the folded model computes, and, with the gate opened and an independent implementation of
what each cuDNN op computes (relu(conv(x, w) + bias [+ z])) standing in for it, that every fused call hands cuDNN
the right arguments. tests/test_gpu.py runs the real ops."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
import torch.nn.functional as F
import torchvision
from test_fold import _trained_looking
from torch import nn

import robustkit.models.fuse as fuse
from robustkit.models import create_model
from robustkit.models.fold import fold_batchnorm
from robustkit.models.fuse import FusedConvReLU, fuse_conv_relu


def _reference_conv_relu(x, w, b, stride, padding, dilation, groups):
    return F.relu(F.conv2d(x, w, b, stride, padding, dilation, groups))


def _reference_conv_add_relu(x, w, z, alpha, b, stride, padding, dilation, groups):
    return F.relu(F.conv2d(x, w, b, stride, padding, dilation, groups) + alpha * z)


@pytest.fixture
def stand_in(monkeypatch) -> dict:
    """The gate opened to CPU tensors, the two cuDNN ops replaced by reference implementations that count their
    calls and record the dtypes they are given."""
    seen = {"relu": 0, "add_relu": 0, "dtypes": set()}

    def conv_relu(x, w, b, *rest):
        seen["relu"] += 1
        seen["dtypes"] |= {x.dtype, w.dtype} | ({b.dtype} if b is not None else set())
        return _reference_conv_relu(x, w, b, *rest)

    def conv_add_relu(x, w, z, alpha, b, *rest):
        seen["add_relu"] += 1
        seen["dtypes"] |= {x.dtype, w.dtype, z.dtype} | ({b.dtype} if b is not None else set())
        return _reference_conv_add_relu(x, w, z, alpha, b, *rest)

    monkeypatch.setattr(fuse, "_on_cudnn", lambda x: True)
    monkeypatch.setattr(fuse, "_CONV_RELU", conv_relu)
    monkeypatch.setattr(fuse, "_CONV_ADD_RELU", conv_add_relu)
    monkeypatch.setattr(fuse._CudnnFusion, "failed", None)
    return seen


def _model(arch: str) -> nn.Module:
    torch.manual_seed(0)
    if arch.startswith("wrn"):
        return _trained_looking(create_model(arch))
    return _trained_looking(getattr(torchvision.models, arch)(num_classes=10))


# Counted from the architectures, after the batch norms are folded: a ResNet's stem conv -> relu, every block's
# conv -> relu but its last, and the last conv -> (+ shortcut) -> relu (ResNet-18: 8 basic blocks of 2 convs, 1 + 8
# + 8; ResNet-50: 16 bottlenecks of 3, 1 + 32 + 16). A pre-activation WRN block: conv1 -> (bn2) -> relu, one per
# block, plus the stem when the first block's bn1 folded into it (wrn-28-2: 12 + 1; wrn-10-1: 3 blocks, and its
# stem's output also feeds the first sum, so its bn1 did not fold: 3); its conv2 goes to a sum with no relu after.
@pytest.mark.parametrize("arch,size,expected,residual", [("wrn-10-1", 32, 3, 0), ("wrn-28-2", 32, 13, 0),
                                                         ("resnet18", 64, 17, 8), ("resnet50", 64, 49, 16)])
def test_fused_model_computes_the_folded_models_logits(arch, size, expected, residual):
    model = _model(arch)
    folded, _, _ = fold_batchnorm(model)
    before = {k: v.clone() for k, v in folded.state_dict().items()}
    fused, n, with_residual, why = fuse_conv_relu(folded)
    assert (n, with_residual, why) == (expected, residual, None)
    assert sum(isinstance(m, FusedConvReLU) for m in fused.modules()) == expected
    assert all(torch.equal(v, folded.state_dict()[k]) for k, v in before.items())   # the folded model is untouched
    assert not fused.training
    x = torch.rand(4, 3, size, size)
    with torch.no_grad():
        assert torch.equal(fused(x), folded(x))   # off CUDA: the very ops the fused call replaced


@pytest.mark.parametrize("arch,size", [("resnet18", 64), ("wrn-28-2", 32)])
def test_every_fused_call_gives_cudnn_the_right_arguments(stand_in, arch, size):
    """The gate opened and reference ops in cuDNN's place: each fused call's stride, padding, dilation, groups,
    bias and residual reach the op (ResNet-18: stride-2 and 7x7 convs, projection shortcuts as the residual)."""
    folded, _, _ = fold_batchnorm(_model(arch))
    fused, n, with_residual, _ = fuse_conv_relu(folded)
    x = torch.rand(4, 3, size, size)
    with torch.no_grad():
        out, ref = fused(x), folded(x)
    assert (stand_in["relu"], stand_in["add_relu"]) == (n - with_residual, with_residual)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


class _Odd(nn.Module):
    """Dilated and grouped convolutions, a residual that broadcasts, and relu written four ways."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(4, 8, 3, padding=2, dilation=2, groups=2)
        self.b = nn.Conv2d(8, 8, 3, stride=2, padding=(1, 0), bias=False)
        self.c = nn.Conv2d(8, 8, 1)
        self.d = nn.Conv2d(8, 8, 1)
        self.shift = nn.Parameter(torch.rand(1, 8, 1, 1))
        self.act = nn.ReLU(inplace=True)

    def forward(self, x):
        y = F.relu(self.a(x), inplace=True)
        y = self.b(y).relu()
        y = torch.relu(self.c(y) + y)
        return self.act(self.d(y) + self.shift)   # fused, but at run time the broadcast residual takes the plain ops


def test_dilation_groups_and_a_broadcast_residual(stand_in):
    model = _Odd().eval()
    fused, n, with_residual, why = fuse_conv_relu(model)
    assert (n, with_residual, why) == (4, 2, None)
    x = torch.rand(2, 4, 12, 12)
    with torch.no_grad():
        out, ref = fused(x), model(x)
    assert (stand_in["relu"], stand_in["add_relu"]) == (2, 1)   # d + shift: shapes differ, so not cuDNN's add
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)


class _Unsafe(nn.Module):
    """Nothing here may be fused: a conv output used twice, a conv called twice, a sum used twice, reflect
    padding, padding given as a string, and a sum scaled by alpha."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 3, 3, padding=1)
        self.b = nn.Conv2d(3, 3, 3, padding=1)
        self.c = nn.Conv2d(3, 3, 3, padding=1)
        self.d = nn.Conv2d(3, 3, 3, padding=1, padding_mode="reflect")
        self.e = nn.Conv2d(3, 3, 3, padding="same")
        self.f = nn.Conv2d(3, 3, 3, padding=1)

    def forward(self, x):
        a = self.a(x)
        y = F.relu(a) + a
        y = F.relu(self.b(F.relu(self.b(y))))
        s = self.c(y) + y
        y = F.relu(s) * s
        y = F.relu(self.d(y))
        y = F.relu(self.e(y))
        return F.relu(torch.add(self.f(y), y, alpha=2))


def test_unsafe_patterns_are_left_alone():
    model = _Unsafe().eval()
    same, n, with_residual, why = fuse_conv_relu(model)
    assert same is model and (n, with_residual) == (0, 0) and why.startswith("no ReLU directly after")


def test_under_autocast_cudnn_gets_what_autocast_would_give_the_convolution(stand_in):
    folded, _, _ = fold_batchnorm(_model("resnet18"))
    fused, _, _, _ = fuse_conv_relu(folded)
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out, ref = fused(x), folded(x)
    assert stand_in["dtypes"] == {torch.bfloat16}
    torch.testing.assert_close(out.float(), ref.float(), rtol=0.05, atol=0.05)


def test_recording_gradients_takes_the_plain_ops(stand_in):
    """cuDNN's fused ops have no backward: where autograd records (an attack's input gradients), the plain ops run,
    and input gradients are the folded model's."""
    folded, _, _ = fold_batchnorm(_model("resnet18"))
    fused, _, _, _ = fuse_conv_relu(folded)
    x = torch.rand(2, 3, 64, 64, requires_grad=True)
    (g,) = torch.autograd.grad(fused(x).sum(), x)
    (g_ref,) = torch.autograd.grad(folded(x).sum(), x)
    assert (stand_in["relu"], stand_in["add_relu"]) == (0, 0)
    assert torch.equal(g, g_ref)


def test_deterministic_settings_take_the_plain_ops(stand_in, monkeypatch):
    """torch runs the fused ops with cuDNN's deterministic setting off: under --deterministic they are not used."""
    monkeypatch.setattr(torch.backends.cudnn, "deterministic", True)
    fused, _, _, _ = fuse_conv_relu(fold_batchnorm(_model("wrn-10-1"))[0])
    with torch.no_grad():
        fused(torch.rand(2, 3, 32, 32))
    assert (stand_in["relu"], stand_in["add_relu"]) == (0, 0)


def test_a_refusal_warns_once_and_the_plain_ops_take_over(stand_in, monkeypatch):
    calls = []

    def refuses(*args):
        calls.append(1)
        raise RuntimeError("cuDNN error: CUDNN_STATUS_NOT_SUPPORTED\nmore")

    monkeypatch.setattr(fuse, "_CONV_RELU", refuses)
    folded, _, _ = fold_batchnorm(_model("wrn-10-1"))
    fused, _, _, _ = fuse_conv_relu(folded)
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad(), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first, second, ref = fused(x), fused(x), folded(x)
    assert len(calls) == 1 and torch.equal(first, ref) and torch.equal(second, ref)
    assert [str(w.message).split(" (")[0] for w in caught] == ["--fuse-conv: cuDNN refused a fused convolution + ReLU"]
    assert fuse._CudnnFusion.failed == "RuntimeError: cuDNN error: CUDNN_STATUS_NOT_SUPPORTED"


def test_running_out_of_memory_is_raised_not_swallowed(stand_in, monkeypatch):
    def oom(*args):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(fuse, "_CONV_RELU", oom)
    fused, _, _, _ = fuse_conv_relu(fold_batchnorm(_model("wrn-10-1"))[0])
    with torch.no_grad(), pytest.raises(torch.cuda.OutOfMemoryError):
        fused(torch.rand(2, 3, 32, 32))
    assert fuse._CudnnFusion.failed is None


def test_a_model_torch_fx_cannot_trace_comes_back_as_it_is():
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 1)

        def forward(self, x):
            return F.relu(self.conv(x)) if x.sum() > 0 else x

    model = Branchy()
    same, n, _, why = fuse_conv_relu(model)
    assert same is model and n == 0 and why.startswith("torch.fx cannot trace it")


@pytest.fixture
def fused_counts(spy_results) -> list[int]:
    """The number of convolutions each call of fuse_conv_relu fuses, as the evaluation jobs call it."""
    return spy_results(fuse, "fuse_conv_relu", lambda out: out[1])


def test_corrupt_fuse_conv_folds_fuses_and_says_so(evaluated_runs, tmp_path, fused_counts):
    """`corrupt --fuse-conv` folds the batch norms and fuses (every call is on the evaluated model); on the CPU its
    accuracies are --fold-bn's exactly (the same ops); the results record both; with --no-fold-bn it refuses in one
    line; fgsm, which needs gradients, has no such flag."""
    from cli_helpers import invoke, plain_and_switched

    ckpt = next(evaluated_runs.glob("*/checkpoint.pt"))
    args = ["corrupt", str(ckpt), "--corruptions", "gaussian_noise,contrast", "--severities", "1,3", "--device", "cpu",
            "--no-progress"]
    a, b = plain_and_switched(args, ["--fuse-conv"], tmp_path, "corruptions.json", plain=["--fold-bn"])
    assert fused_counts and all(n > 0 for n in fused_counts)
    assert (a["fold_bn"], a["fuse_conv"]) == (True, False) and (b["fold_bn"], b["fuse_conv"]) == (True, True)
    assert [a["clean_accuracy"]] + [r["accuracy"] for r in a["results"]] == \
        [b["clean_accuracy"]] + [r["accuracy"] for r in b["results"]]

    refused = invoke(*args, "--fuse-conv", "--no-fold-bn", "--out", tmp_path / "refused")
    assert refused.exit_code == 2 and "Traceback" not in refused.output
    assert "--fuse-conv folds the batch norms into the convolutions first: drop --no-fold-bn" in refused.output
    assert not (tmp_path / "refused").exists()
    assert "No such option: --fuse-conv" in invoke("fgsm", str(ckpt), "--fuse-conv").output


def test_fgsm_never_fuses_even_when_asked_through_the_api(evaluated_runs, tmp_path, fused_counts):
    from robustkit.jobs import ModelOptions, run_fgsm

    [result] = run_fgsm([next(evaluated_runs.glob("*/checkpoint.pt"))], [0.05], limit=20, device="cpu",
                        out=tmp_path / "f", options=ModelOptions(fuse_conv=True))
    assert fused_counts == [] and result["fuse_conv"] is False and result["fold_bn"] is False


def test_the_fuse_switch_takes_the_devices_default_and_turns_the_fold_on(monkeypatch):
    import robustkit.jobs as jobs
    from robustkit.errors import RobustkitError
    from robustkit.jobs import ModelOptions, resolve_switches

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    # the shipped defaults: fused (and so folded) on CUDA since an H100 measured it, off on the CPU
    assert (resolve_switches(None, cuda).fuse_conv, resolve_switches(None, cuda).fold_bn) == (True, True)
    assert (resolve_switches(None, cpu).fuse_conv, resolve_switches(None, cpu).fold_bn) == (False, False)
    monkeypatch.setattr(jobs, "EVAL_SWITCH_DEFAULTS", {"cuda": {"fuse_conv": True}})
    assert (resolve_switches(None, cuda).fuse_conv, resolve_switches(None, cuda).fold_bn) == (True, True)
    assert resolve_switches(None, cpu).fuse_conv is False
    assert resolve_switches(ModelOptions(fuse_conv=False), cuda).fold_bn is False
    # a default fuse with an explicit --no-fold-bn: the flag wins, nothing folded, nothing fused
    assert (resolve_switches(ModelOptions(fold_bn=False), cuda).fuse_conv,
            resolve_switches(ModelOptions(fold_bn=False), cuda).fold_bn) == (False, False)
    with pytest.raises(RobustkitError, match="drop --no-fold-bn"):
        resolve_switches(ModelOptions(fuse_conv=True, fold_bn=False), cpu)
    # --compile turns the fuse off (the fold stays); a note only where --fuse-conv was asked for
    notes = []
    compiled = resolve_switches(ModelOptions(compile=True), cuda, notes.append)
    assert (compiled.fuse_conv, compiled.fold_bn, notes) == (False, True, [])
    compiled = resolve_switches(ModelOptions(compile=True, fuse_conv=True), cpu, notes.append)
    assert (compiled.fuse_conv, compiled.fold_bn) == (False, True) and len(notes) == 1 and "--compile" in notes[0]


def test_with_compile_nothing_is_fused_and_a_note_says_why(evaluated_runs, tmp_path, fused_counts, monkeypatch):
    """TorchInductor fuses these ops its own way (and cannot look inside cuDNN's): --compile wins, with a note."""
    import robustkit.compiling as compiling
    from cli_helpers import invoke

    monkeypatch.setattr(compiling, "CompiledEval", lambda model, note: model)   # (no compiling in a unit test)
    ckpt = next(evaluated_runs.glob("*/checkpoint.pt"))
    res = invoke("corrupt", str(ckpt), "--corruptions", "contrast", "--severities", "1", "--device", "cpu",
                 "--no-progress", "--compile", "--fuse-conv", "--out", tmp_path / "c")
    assert res.exit_code == 0, res.output
    assert fused_counts == []
    assert "".join(res.output.split()).count("--fuse-conv:notwith--compile") == 1
    recorded = json.loads((tmp_path / "c" / "corruptions.json").read_text())
    assert (recorded["fuse_conv"], recorded["fold_bn"], recorded["compiled"]) == (False, True, True)   # as it ran


def test_fusing_in_place_changes_the_folded_copy_itself_and_computes_the_same(monkeypatch):
    """``in_place``: the GraphModule fold_batchnorm made is fused as it is, not copied and traced again (what
    robustkit.jobs._build asks for); the logits are those of fusing a copy. A model that is not a GraphModule (the
    user's own) is still copied, in place or not."""
    import robustkit.models.fold as fold

    model = _model("wrn-28-2")
    folded, _, _ = fold_batchnorm(model)
    copied, n, _, _ = fuse_conv_relu(folded)
    traces = []
    real = fold._Tracer.trace
    monkeypatch.setattr(fold._Tracer, "trace", lambda self, *a, **kw: traces.append(1) or real(self, *a, **kw))
    same, m, _, why = fuse_conv_relu(folded, in_place=True)
    assert same is folded and (m, why) == (n, None) and traces == []
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(same(x), copied(x))
    plain = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()).eval()
    out, k, _, _ = fuse_conv_relu(plain, in_place=True)
    assert k == 1 and out is not plain and traces == [1]
    assert isinstance(plain[0], nn.Conv2d) and not any(isinstance(m, FusedConvReLU) for m in plain.modules())


def test_the_evaluation_build_fuses_the_folded_copy_without_tracing_it_again(evaluated_runs, monkeypatch):
    """robustkit.jobs._build with --fuse-conv: one torch.fx trace (the fold's), and the network it gives computes what
    folding, then fusing a copy, computes."""
    import robustkit.models.fold as fold
    from robustkit import jobs

    ckpt = next(evaluated_runs.glob("*/checkpoint.pt"))
    opts = jobs.ModelOptions(fold_bn=True, fuse_conv=True)
    (target,) = jobs.targets([ckpt], None, opts)
    traces, real = [], fold._Tracer.trace
    monkeypatch.setattr(fold._Tracer, "trace", lambda self, *a, **kw: traces.append(1) or real(self, *a, **kw))
    built = jobs._build(target, torch.device("cpu"), False, opts, jobs.Progress())
    assert traces == [1] and sum(isinstance(m, FusedConvReLU) for m in built.modules()) > 0
    reference = fuse_conv_relu(fold_batchnorm(target.info.build(torch.device("cpu"), False))[0])[0]
    x = torch.rand(4, 3, 8, 8)
    with torch.no_grad():
        assert torch.equal(built(x), reference(x))
