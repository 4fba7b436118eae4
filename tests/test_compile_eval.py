"""``robustkit fgsm/corrupt --compile``: the evaluated network compiled by TorchInductor (robustkit.compiling).

The compiled model must give the eager model's outputs and input gradients (to float rounding), compile once per
grad mode however the last batch falls (the tail is padded), fall back with one note where it cannot compile, and
the CLI must pass the switch through and record it in the results.
"""

from __future__ import annotations

import pytest
import torch

from cli_helpers import plain_and_switched
from conftest import inductor_compiles_here
from robustkit import CompiledEval   # the public name (robustkit.compiling.CompiledEval)
from robustkit.models import create_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    model = create_model("wrn-10-1", num_classes=10, mean=[0.5] * 3, std=[0.25] * 3)
    for m in model.modules():   # running statistics other than 0/1, so eval-mode BatchNorm does something
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2), m.running_var.uniform_(0.5, 2.0)
    return model.eval()


def test_compiled_outputs_and_input_gradients_equal_the_model_and_the_tail_compiles_nothing_new():
    """Full batches, a short last batch (padded to the batch size inside), with and without input gradients.

    Measured on the CPU (torch 2.14): logits within 2e-6 and input gradients within 1e-7 of the eager model.
    Stated: 1e-4 (fused kernels sum in another order); a wrong padding slice or a pad that leaked into the real
    rows moves them by O(1). Graphs: one per grad mode (forward; forward + backward for attacks), none for the tail.
    """
    why = inductor_compiles_here()
    if why:
        pytest.skip(f"TorchInductor cannot compile on this machine ({why})")
    import torch._dynamo

    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    model = _model()
    compiled = CompiledEval(model)
    g = torch.Generator().manual_seed(1)
    full, tail = torch.rand(8, 3, 32, 32, generator=g), torch.rand(3, 3, 32, 32, generator=g)
    with torch.no_grad():
        for x in (full, tail, full):
            out, ref = compiled(x), model(x)
            assert out.shape == ref.shape
            assert (out - ref).abs().max() <= 1e-4
    for x in (full, tail):
        xa, xb = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
        torch.nn.functional.cross_entropy(compiled(xa), torch.arange(len(x)) % 10).backward()
        torch.nn.functional.cross_entropy(model(xb), torch.arange(len(x)) % 10).backward()
        assert (xa.grad - xb.grad).abs().max() <= 1e-4
    assert compiled.batch == 8 and compiled.failed is None
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] <= 2


def test_a_failed_compilation_says_so_once_and_evaluates_uncompiled(monkeypatch):
    """No C++ compiler (or a model Dynamo cannot trace): torch.compile raises at the first call. One note, then the
    model itself, bit for bit."""
    calls = []

    def broken(model, graphs):
        def call(x):
            calls.append(1)
            raise RuntimeError("InductorError: no working C++ compiler found\ndetails")
        return call

    monkeypatch.setattr("robustkit.compiling.compile_fixed_shapes", broken)
    notes, model = [], _model()
    compiled = CompiledEval(model, note=notes.append)
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        for _ in range(3):
            assert torch.equal(compiled(x), model(x))
    assert len(calls) == 1 and len(notes) == 1
    assert "could not compile" in notes[0] and "no working C++ compiler" in notes[0] and "details" not in notes[0]


def test_out_of_memory_is_not_mistaken_for_a_failed_compilation(monkeypatch):
    def oom(model, graphs):
        def call(x):
            raise torch.OutOfMemoryError("CUDA out of memory")
        return call

    monkeypatch.setattr("robustkit.compiling.compile_fixed_shapes", oom)
    with pytest.raises(torch.OutOfMemoryError):
        CompiledEval(_model())(torch.rand(2, 3, 32, 32))


class _Recording(torch.nn.Module):
    """A stand-in for the compiled model: the model itself, recording the batch sizes it is called with."""

    sizes: list[int] = []

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        _Recording.sizes.append(x.shape[0])
        return self.model(x)


@pytest.mark.parametrize("command", ["corrupt", "fgsm"])
def test_cli_compile_evaluates_padded_fixed_batches_with_the_same_results(command, evaluated_runs, tmp_path,
                                                                          monkeypatch):
    """The switch reaches the model: every batch the compiled model sees has the batch size (the digits test
    split's 300 images in batches of 128: a tail of 44, padded), the accuracies equal the uncompiled run's, and
    the results say ``compiled``. (Compilation is a pass-through here; the test above compiles.)"""
    ckpt = next(evaluated_runs.glob("*/checkpoint.pt"))
    monkeypatch.setattr("robustkit.compiling.compile_fixed_shapes", lambda model, graphs: _Recording(model))
    _Recording.sizes = []
    args = {"corrupt": ["corrupt", str(ckpt), "--corruptions", "gaussian_noise,contrast", "--severities", "1,3"],
            "fgsm": ["fgsm", str(ckpt), "--eps", "0.05,0.1"]}[command]
    common = ["--device", "cpu", "--batch-size", "128", "--no-progress"]
    name = {"corrupt": "corruptions.json", "fgsm": "fgsm.json"}[command]
    a, b = plain_and_switched([*args, *common], ["--compile"], tmp_path, name)
    assert [r["accuracy"] for r in a["results"]] == [r["accuracy"] for r in b["results"]]
    assert a["clean_accuracy"] == b["clean_accuracy"]
    assert a["compiled"] is False and b["compiled"] is True
    assert _Recording.sizes and set(_Recording.sizes) == {128}
