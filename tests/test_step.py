"""The training step runner (robustkit/step.py) and the masked sub-networks it relies on.

The static step (masked sub-networks, fixed shapes, device scalars: what the CUDA graphs replay) must
compute what the eager, sliced step of methods/ computes. These tests run it uncaptured on the CPU;
tests/test_gpu.py checks on a GPU that the captured graphs replay it.
"""

from __future__ import annotations

import contextlib
import json

import pytest
import torch
import torch.nn.functional as F

from cli_helpers import invoke
from conftest import inductor_compiles_here
from robustkit.config import TrainConfig
from robustkit.methods import METHODS, Batch
from robustkit.models import ChannelMasks, at_width, create_model, masked
from robustkit.rng import generator
from robustkit.step import COMPILE_PAYS_AFTER_STEPS, choose_mode, make_step
from robustkit.train import fit

# Measured on the CPU (torch 2.14): masked vs sliced logits equal bitwise, parameter gradients within 2.2e-6
# relative (a convolution over C input channels of which some are zero sums in another order than one over
# the kept channels). Stated tolerance: 1e-5.
GRAD_TOL = 1e-5


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / (a.double().norm() + 1e-30))


def _global_rel(a: list, b: list) -> float:
    num = sum(((x.double() - y.double()) ** 2).sum() for x, y in zip(a, b))
    return float(num.sqrt() / sum((x.double() ** 2).sum() for x in a).sqrt())


@pytest.fixture(scope="module")
def wrn():
    torch.manual_seed(0)
    model = create_model("wrn-16-2", num_classes=10)
    with torch.no_grad():   # a trained-looking affine: with zero biases a masking slip would not show
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5), m.bias.normal_(0.0, 0.2)
    return model


@pytest.mark.parametrize("width", [0.8, 0.87, 0.97, 0.55])
@pytest.mark.parametrize("resolution", [32, 28, 24])
def test_masked_sub_network_computes_the_sliced_one(wrn, width, resolution):
    """Logits, KL loss and every parameter gradient of the masked sub-network equal the sliced one (train mode,
    batch statistics), and neither touches the BatchNorm running statistics."""
    g = torch.Generator().manual_seed(int(width * 100) + resolution)
    x = F.interpolate(torch.rand(8, 3, 32, 32, generator=g), size=(resolution,) * 2, mode="bilinear",
                      align_corners=True)
    target = torch.softmax(torch.randn(8, 10, generator=g), 1)
    wrn.train()
    buffers = {k: v.clone() for k, v in wrn.state_dict().items() if "running" in k or "tracked" in k}

    def run(ctx):
        wrn.zero_grad(set_to_none=True)
        with ctx:
            logits = wrn(x)
        loss = F.kl_div(F.log_softmax(logits, 1), target, reduction="batchmean")
        loss.backward()
        return logits.detach(), loss.detach(), [p.grad.clone() for p in wrn.parameters()]

    masks = ChannelMasks(wrn)
    masks.fill(width)
    sliced = run(at_width(wrn, width))
    maskd = run(masked(wrn, masks))
    assert _rel(sliced[0], maskd[0]) < 1e-6 and abs(float(sliced[1] - maskd[1])) < 1e-6
    for (name, _), a, b in zip(wrn.named_parameters(), sliced[2], maskd[2]):
        assert _rel(a, b) < GRAD_TOL if a.norm() > 0 else b.norm() == 0, name
    after = {k: v for k, v in wrn.state_dict().items() if k in buffers}
    assert all(torch.equal(buffers[k], after[k]) for k in buffers)


def test_masked_channels_are_exact_zeros_and_get_no_gradient(wrn):
    """The dropped channels of a masked pass: BatchNorm outputs exactly 0, their weights' gradients exactly 0
    (what slicing would never compute), here for the first block of a 0.8-wide sub-network."""
    masks = ChannelMasks(wrn)
    masks.fill(0.8)
    seen = {}
    hook = wrn.blocks[0].bn2.register_forward_hook(lambda m, i, o: seen.update(bn2=o.detach()))
    wrn.zero_grad(set_to_none=True)
    with masked(wrn, masks):
        wrn(torch.rand(4, 3, 32, 32)).sum().backward()
    hook.remove()
    c = wrn.blocks[0].bn2.num_features
    k = int(c * 0.8 + 0.5)
    assert k < c and torch.count_nonzero(seen["bn2"][:, k:]) == 0 and torch.count_nonzero(seen["bn2"][:, :k]) > 0
    conv = wrn.blocks[0].conv2.weight.grad
    assert torch.count_nonzero(conv[k:]) == 0 and torch.count_nonzero(conv[:k, k:]) == 0
    assert torch.count_nonzero(wrn.blocks[0].bn2.weight.grad[k:]) == 0


def test_masked_refuses_a_model_set_to_a_sliced_width(wrn):
    """One of at_width or masked, never both: a masked pass over a sliced model would mask tensors of the wrong
    size or silently run a narrower network than the masks say."""
    masks = ChannelMasks(wrn)
    masks.fill(0.8)
    with at_width(wrn, 0.8), pytest.raises(ValueError, match="at_width or masked"):
        with masked(wrn, masks):
            pass
    assert all(m.masked_affine is None for m in wrn.modules() if hasattr(m, "masked_affine"))

def test_a_sub_network_never_updates_running_statistics_even_where_rounding_keeps_every_channel():
    """16 channels x 0.97 rounds to 16: that layer is not 'full' in a sub-network (its input comes from
    narrower layers), so sliced and masked both leave its running statistics alone."""
    model = create_model("wrn-10-1", num_classes=10).train()
    before = model.blocks[0].bn1.running_mean.clone()
    with at_width(model, 0.97):
        model(torch.rand(4, 3, 32, 32))
    assert torch.equal(model.blocks[0].bn1.running_mean, before)
    assert int(model.blocks[0].bn1.num_batches_tracked) == 0
    model(torch.rand(4, 3, 32, 32))   # the full network does update them
    assert not torch.equal(model.blocks[0].bn1.running_mean, before)


def _runner(mode: str, method: str, momentum: float = 0.9, **cfg_kw):
    torch.manual_seed(0)
    model = create_model("wrn-10-1", num_classes=10)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=momentum, weight_decay=5e-4, nesterov=momentum > 0)
    cfg_kw = {"resolutions": [32, 28, 24], "subnets": 3, **cfg_kw}
    cfg = TrainConfig(method=method, min_width=0.8, **cfg_kw)
    step = make_step(mode, model=model, net=model, optimizer=opt, cfg=cfg, spec=METHODS[method],
                     autocast=contextlib.nullcontext, amp=False, memory_format=torch.contiguous_format, num_classes=10)
    return model, opt, step


def _lockstep(first, second, steps: int, batch: int, seed: int):
    """Two step runners on the same random batches and draws, step after step: yields (step, logs 1, logs 2)."""
    g = torch.Generator().manual_seed(seed)
    for i in range(steps):
        x, y = torch.rand(batch, 3, 32, 32, generator=g), torch.randint(0, 10, (batch,), generator=g)
        a, b = (run(Batch(x, y, step=i, total_steps=10), generator("cpu", 0, "train", i), 0.1) for run in (first, second))
        yield i, a, b


@pytest.mark.parametrize("method, kw", [("baseline", {}), ("cutmix", {"cutmix_prob": 1.0}), ("gradaug", {}),
                                        ("gradaug", {"semi": True}), ("gradaug", {"cutmix_prob": 1.0})])
def test_static_step_equals_the_eager_step(method, kw):
    """Three steps of the static step (uncaptured) vs the method's eager step on the same batches and draws:
    logs (loss, correct) and, after each step, weights and momentum buffers. Measured: weights within 3e-7,
    losses within 5e-7 relative; stated: 1e-5 (float summation order only). The learning rates (0.07, 0.06, 0.05)
    are not the optimizer's construction-time 0.1: the static step's first update, which creates the momentum
    buffers through torch's SGD, must use the step's own rate, as every later one does."""
    runs = {m: _runner(m, method, **kw) for m in ("eager", "static")}
    g = torch.Generator().manual_seed(3)
    for i in range(3):
        x, y = torch.rand(16, 3, 32, 32, generator=g), torch.randint(0, 10, (16,), generator=g)
        xu = torch.rand(16, 3, 32, 32, generator=g) if kw.get("semi") else None
        logs = {}
        for mode, (model, opt, step) in runs.items():
            logs[mode] = step(Batch(x, y, xu, step=i, total_steps=10), generator("cpu", 0, "train", i), 0.07 - 0.01 * i)
        assert int(logs["eager"]["correct"]) == int(logs["static"]["correct"])
        assert abs(float(logs["eager"]["loss"]) - float(logs["static"]["loss"])) <= 1e-5 * float(logs["eager"]["loss"])
        (me, oe, _), (ms, os_, _) = runs["eager"], runs["static"]
        assert _global_rel([p.detach() for p in me.parameters()], [p.detach() for p in ms.parameters()]) < 1e-5
        assert _global_rel([oe.state[p]["momentum_buffer"] for p in me.parameters()],
                           [os_.state[p]["momentum_buffer"] for p in ms.parameters()]) < 1e-5
        for (k, a), b in zip(me.state_dict().items(), ms.state_dict().values()):
            if "running" in k:
                assert _rel(a, b) < 1e-5, k


def test_the_fp16_step_equals_torchs_grad_scaler_loop():
    """static-fp16 (what graphs-fp16 captures): float16 autocast with dynamic loss scaling on the device, against
    torch's own: a plain loop with torch.amp.GradScaler and torch's SGD on the same batches. The initial scale
    2^22 overflows float16 in the backward pass (the first steps, the run's first among them, are skipped and the
    scale halved), and a growth interval of 2 doubles it after two clean steps: the scales agree at every step,
    and the weights too (measured: equal to the last bit on the CPU, torch 2.14; stated: 1e-6)."""
    model, _, step = _runner("static-fp16", "baseline")
    step.scale.fill_(2.0**22)
    step.growth_interval = 2
    torch.manual_seed(0)
    ref = create_model("wrn-10-1", num_classes=10)
    ref_opt = torch.optim.SGD(ref.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4, nesterov=True)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**22, growth_interval=2)
    g = torch.Generator().manual_seed(1)
    scales, skipped = [], 0
    for i in range(10):
        x, y = torch.rand(16, 3, 32, 32, generator=g), torch.randint(0, 10, (16,), generator=g)
        lr = 0.07 - 0.005 * i
        logs = step(Batch(x, y, step=i, total_steps=10), generator("cpu", 0, "train", i), lr)
        for group in ref_opt.param_groups:
            group["lr"] = lr
        ref_opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.float16):
            logits = ref(x)
        loss = F.cross_entropy(logits.float(), y)
        scaler.scale(loss).backward()
        scaler.step(ref_opt)
        scaler.update()
        assert float(step.scale) == scaler.get_scale(), i
        assert abs(float(logs["loss"]) - loss.item()) <= 1e-6 * loss.item()
        assert _global_rel([p.detach() for p in ref.parameters()], [p.detach() for p in model.parameters()]) < 1e-6, i
        skipped += int(step.found_inf)
        scales.append(float(step.scale))
    assert step.mode == "static-fp16"
    assert skipped >= 2 and scales[0] < 2.0**22 and any(b > a for a, b in zip(scales, scales[1:]))


def test_the_fp16_step_scales_each_pass_loss_by_the_loss_scale():
    """Each part of a GradAug step in static-fp16 (the full pass, every sub-network of the plan) leaves its
    gradients times the loss scale: divided by it, they are the float32 gradients of the same part on the same
    weights, masks and inputs, up to float16's rounding (measured on the CPU: 1.0e-2 to 2.9e-2 relative, torch
    2.14; stated 0.1). A loss left unscaled is off by the scale, 2^16 (relative difference ~1)."""
    model, _, step = _runner("static-fp16", "gradaug")
    g = torch.Generator().manual_seed(2)
    x, y = torch.rand(16, 3, 32, 32, generator=g), torch.randint(0, 10, (16,), generator=g)
    step(Batch(x, y, step=0, total_steps=10), generator("cpu", 0, "train", 0), 0.07)
    plan = step._load(Batch(x, y, step=1, total_steps=10), generator("cpu", 0, "train", 1), 0.07)
    scale = float(step.scale)
    assert scale == 2.0**16 and len(plan) == 3

    def both(run, grads):
        step.half = step.amp = True
        run()
        half = [t / scale for t in grads]
        step.half = step.amp = False
        run()
        return half, [t.clone() for t in grads]

    rels = [_global_rel(*reversed(both(step._full, step.grads)))]
    for slot, sub in enumerate(plan):
        step.masks[slot].fill(sub.width)
        rels.append(_global_rel(*reversed(both(lambda: step._sub(slot, sub.resolution), step.sub_grads[slot]))))
    assert max(rels) < 0.1, rels


def _fit(tmp_path, name, mode, steps=4, stop_at=None, resume=False, method="gradaug"):
    cfg = TrainConfig(dataset="digits", arch="wrn-10-1", method=method, semi=method == "gradaug", labels=100,
                      steps=steps, batch_size=16, log_every=1, eval_every=2, device="cpu")
    run = tmp_path / name
    fit(None if resume else cfg, run, resume=resume, progress=False, stop_at=stop_at, step_mode=mode)
    return run


@pytest.mark.parametrize("mode", ["static", "static-inductor", "static-fp16"])
def test_static_fit_resumes_exactly(tmp_path, mode, monkeypatch):
    """fit with the static step (and the compiled one, --compile on the CPU; and the float16 one, whose loss
    scale here starts at 2^22 and grows after every clean step, so that it moves within the run and a resume
    that lost it would not scale as the uninterrupted run does): 2 steps + resume for 2 more equals 4
    uninterrupted steps, bit for bit. (GradAug-semi; the float16 one as the baseline: float16 convolutions are slow on
    a CPU, and the loss scale does not depend on the method.)"""
    if mode.endswith("-inductor") and (why := inductor_compiles_here()):
        pytest.skip(f"TorchInductor cannot compile on this machine ({why})")
    import robustkit.step

    monkeypatch.setattr(robustkit.step, "FP16_INIT_SCALE", 2.0**22)
    monkeypatch.setattr(robustkit.step, "FP16_GROWTH_INTERVAL", 1)
    method = "baseline" if mode == "static-fp16" else "gradaug"
    whole = _fit(tmp_path, "whole", mode, method=method)
    _fit(tmp_path, "part", mode, stop_at=2, method=method)
    (tmp_path / "mid.pt").write_bytes((tmp_path / "part" / "checkpoint.pt").read_bytes())
    part = _fit(tmp_path, "part", mode, resume=True, method=method)
    a = torch.load(whole / "checkpoint.pt", weights_only=True)
    b = torch.load(part / "checkpoint.pt", weights_only=True)
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    la = [json.loads(line) for line in (whole / "metrics.jsonl").read_text().splitlines()]
    lb = [json.loads(line) for line in (part / "metrics.jsonl").read_text().splitlines()]
    assert [r["train_loss"] for r in la] == [r["train_loss"] for r in lb]
    assert {r["step_mode"] for r in la} == {mode}
    assert a["step_state"] == b["step_state"]
    if mode == "static-fp16":
        mid = torch.load(tmp_path / "mid.pt", weights_only=True)["step_state"]
        assert mid["loss_scale"] != 2.0**22 and a["step_state"]["loss_scale"] != mid["loss_scale"]


@pytest.mark.parametrize("requested, device, method, processes, mode, says", [
    (None, "cpu", "gradaug", 1, "eager", None),
    (True, "cpu", "gradaug", 1, "static-inductor", None),
    (True, "cpu", "baseline", 2, "eager", "torchrun"),
    (True, "cpu", "mean-teacher", 1, "eager", "no compiled step for --method mean-teacher"),
    (False, "cuda", "gradaug", 1, "eager", None),
    (True, "cuda", "gradaug", 2, "eager", "torchrun"),
    (True, "cuda", "mean-teacher", 1, "eager", "--method mean-teacher"),
    (None, "cuda", "shakedrop", 1, "eager", None),
    (None, "cuda", "baseline", 1, "graphs", None),
    (None, "cuda", "cutmix", 1, "graphs", None),
    (None, "cuda", "gradaug", 1, "graphs-streams", None),      # the sub-networks side by side
    (True, "cuda", "cutmix", 1, "graphs-inductor", None),      # --compile on CUDA: TorchInductor inside the graphs
    (True, "cuda", "gradaug", 1, "graphs-inductor-streams", None),
])
def test_choose_mode(requested, device, method, processes, mode, says):
    got, why = choose_mode(requested, method, torch.device(device), processes)
    assert got == mode
    assert (why is None) if says is None else (says in why and why.startswith("--compile: ") and "\n" not in why)


@pytest.mark.parametrize("device, method, steps, mode", [
    ("cuda", "baseline", COMPILE_PAYS_AFTER_STEPS, "graphs-inductor"),
    ("cuda", "gradaug", COMPILE_PAYS_AFTER_STEPS + 1, "graphs-inductor-streams"),
    ("cuda", "baseline", COMPILE_PAYS_AFTER_STEPS - 1, "graphs"),
    ("cuda", "gradaug", 10_000, "graphs-streams"),
    ("cpu", "gradaug", 10**6, "eager"),                 # the CPU never compiles unasked
    ("cuda", "mean-teacher", 10**6, "eager"),           # no static step to compile
])
def test_a_long_cuda_run_compiles_its_step_by_default_and_says_so(device, method, steps, mode):
    """--compile unset: on CUDA a run of COMPILE_PAYS_AFTER_STEPS steps or more gets TorchInductor (the
    compilation pays there), with one line saying so and how to turn it off; shorter runs and the CPU do not."""
    got, said = choose_mode(None, method, torch.device(device), 1, steps=steps)
    assert got == mode
    if mode.startswith("graphs-inductor"):
        assert said.startswith("compiling the step with TorchInductor") and f"{steps:,} steps" in said
        assert "--no-compile" in said and "\n" not in said
    else:
        assert said is None
    assert choose_mode(False, method, torch.device(device), 1, steps=steps) == ("eager", None)


def test_fit_counts_the_steps_this_process_will_run_when_choosing_its_step(tmp_path, monkeypatch):
    """The step's compilation pays over the steps run in this process: a run's total, less what a resumed run has
    done, up to --stop-at."""
    import robustkit.train as train_mod

    seen = []

    def spy(*args, steps=None, **kwargs):
        seen.append(steps)
        return choose_mode(*args, steps=steps, **kwargs)

    monkeypatch.setattr(train_mod, "choose_mode", spy)
    cfg = TrainConfig(dataset="digits", arch="wrn-10-1", labels=100, batch_size=16, steps=7, eval_every=7,
                      log_every=1, device="cpu")
    fit(cfg, tmp_path / "r", progress=False, stop_at=3)
    fit(None, tmp_path / "r", resume=True, progress=False, stop_at=5)
    fit(None, tmp_path / "r", resume=True, progress=False)
    assert seen == [3, 2, 2]


def test_a_model_with_shakedrop_layers_takes_the_eager_step():
    """--method gradaug --arch wrn-D-K-shakedrop: ShakeDrop's per-image draws come from a per-step generator that
    only the eager step serves."""
    assert choose_mode(None, "gradaug", torch.device("cuda"), 1, random_layers=True) == ("eager", None)
    mode, why = choose_mode(True, "gradaug", torch.device("cuda"), 1, random_layers=True)
    assert mode == "eager" and "ShakeDrop" in why
    model = create_model("wrn-10-1-shakedrop", num_classes=10)
    with pytest.raises(ValueError, match="ShakeDrop"):
        make_step("static", model=model, net=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
                  cfg=TrainConfig(method="gradaug"), spec=METHODS["gradaug"], autocast=contextlib.nullcontext,
                  amp=False, memory_format=torch.contiguous_format, num_classes=10)


def test_compile_where_no_compiled_step_exists_says_why_once_and_trains(tmp_path):
    res = invoke("train", "--dataset", "digits", "--arch", "wrn-10-1", "--labels", "100", "--steps", "2",
                 "--batch-size", "16", "--method", "mean-teacher", "--compile", "--out", str(tmp_path / "r"),
                 "--no-progress", "--device", "cpu")
    assert res.exit_code == 0, res.output
    notes = [line for line in res.output.splitlines() if line.startswith("note: --compile")]
    assert len(notes) == 1 and "eager" in notes[0] and "mean-teacher" in notes[0]
    records = [json.loads(line) for line in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["step_mode"] == "eager"


def test_compile_on_the_cpu_trains_with_the_compiled_static_step(tmp_path, monkeypatch):
    """--compile on the CPU: the TorchInductor-compiled static step, no note; the default stays eager; the summary
    line names the mode the steps ran in. (The
    compilation itself is replaced by a pass-through here: test_the_inductor_compiled_step_... compiles.)"""
    class PassThrough(torch.nn.Module):
        def __init__(self, model):
            super().__init__()
            self.inner = model

        def forward(self, x):
            return self.inner(x)

    monkeypatch.setattr("robustkit.step.compile_fixed_shapes", lambda model, graphs: PassThrough(model))
    for flag, mode in (("--compile", "static-inductor"), ("--no-compile", "eager"), (None, "eager")):
        out = tmp_path / str(flag)
        res = invoke("train", "--dataset", "digits", "--arch", "wrn-10-1", "--labels", "100", "--steps", "2",
                     "--batch-size", "16", *([flag] if flag else []), "--out", str(out), "--no-progress",
                     "--device", "cpu")
        assert res.exit_code == 0, res.output
        assert "note:" not in res.output
        records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        assert {r["step_mode"] for r in records} == {mode}, flag
        assert f"images/s ({mode} steps) |" in res.output, res.output   # the summary says how the steps ran


class _Stream:
    """Stands in for torch.cuda.Stream on the CPU (work runs in order there anyway)."""
    def __init__(self, *a, **k): pass
    def wait_stream(self, other): pass


def _cpu_streams(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "Stream", _Stream)
    monkeypatch.setattr(torch.cuda, "stream", lambda s: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "current_stream", lambda *a: _Stream())
    monkeypatch.setattr(torch.cuda, "graph_pool_handle", lambda: None)


def test_a_failed_capture_says_so_once_and_goes_on_uncaptured(monkeypatch):
    """If an op cannot be captured (another torch, another driver), the run does not die: one note, then the
    same fixed-shape steps uncaptured. Simulated on the CPU: CUDA's stream/graph API replaced by stand-ins whose
    capture raises as torch does."""
    class _Graph:
        def __enter__(self): raise RuntimeError("operation not permitted when stream is capturing\nmore")
        def __exit__(self, *exc): return False

    _cpu_streams(monkeypatch)
    monkeypatch.setattr(torch.cuda, "CUDAGraph", lambda: object())
    monkeypatch.setattr(torch.cuda, "graph", lambda g, pool=None, stream=None: _Graph())
    notes = []
    model, opt, step = _runner("graphs", "gradaug")
    step.note = notes.append
    _, _, ref = _runner("static", "gradaug")
    for _, a, b in _lockstep(step, ref, steps=3, batch=16, seed=5):
        assert float(a["loss"]) == pytest.approx(float(b["loss"]), rel=1e-6)
    assert step.mode == "static" and not step.captured and len(notes) == 1
    assert notes[0].startswith("CUDA graph capture failed (operation not permitted") and "\n" not in notes[0]


def test_a_failed_side_by_side_capture_falls_back_to_graphs_one_after_another(monkeypatch):
    """graphs-streams (the CUDA default for GradAug) needs a stream and a memory pool per sub-network slot. If a
    capture on a slot's stream fails (out of memory, a torch or driver that cannot), the run keeps its captured
    graphs, one after another on torch's capture stream: one note, mode graphs, and the same steps as static.
    Stand-ins on the CPU: a "graph" replays the call it was captured from; capturing on a slot stream raises."""
    from types import SimpleNamespace

    from robustkit.step import StaticStep

    _cpu_streams(monkeypatch)
    captured = []

    def capture(fn, pool, stream):
        if stream is not None:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 MiB\nmore")
        captured.append(fn)
        return SimpleNamespace(replay=fn)

    monkeypatch.setattr(StaticStep, "_capture_part", staticmethod(capture))
    notes = []
    (mg, _, fast), (ms, _, ref) = (_runner(m, "gradaug") for m in ("graphs-streams", "static"))
    fast.note = notes.append
    for i, a, b in _lockstep(fast, ref, steps=4, batch=16, seed=3):
        assert float(a["loss"]) == float(b["loss"]), i
    assert fast.captured and fast.mode == "graphs" and fast.streams is None
    # full + update before the first slot stream failed, then all 11 parts again (full, update, 3 slots x 3 sizes)
    assert len(captured) == 2 + 11 and len(fast.graphs) == 11
    assert all(torch.equal(p, q) for p, q in zip(mg.parameters(), ms.parameters()))
    assert len(notes) == 1 and notes[0].startswith("capturing the sub-networks side by side failed (CUDA out of memory")
    assert "\n" not in notes[0] and "one after another" in notes[0]


def test_the_inductor_compiled_step_equals_the_static_step():
    """static-inductor (TorchInductor-compiled forward and backward; on CUDA the same passes get captured) vs the
    uncompiled static step: two GradAug steps, the full pass and masked sub-networks at two resolutions.

    Measured on the CPU (torch 2.14): losses within 1e-7 and weights within 4e-8 relative. But a ReLU whose input
    lies within float rounding of 0 (about one in 10^7 activations: a few percent of passes) can fall on the
    other side of the kink in fused kernels, which moves that pass's gradients by up to 1e-3 and the weights after
    the step by ~1e-5 (seen on other batches). Stated: 1e-4 for both, still 1000 times below what a sub-network
    with the wrong channels, or a compiled pass that missed a new mask, makes."""
    why = inductor_compiles_here()
    if why:   # the fallback without a compiler is tested below
        pytest.skip(f"TorchInductor cannot compile on this machine ({why})")
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    kw = dict(resolutions=[32, 24], subnets=2)
    (mi, _, inductor), (ms, _, static) = (_runner(m, "gradaug", **kw) for m in ("static-inductor", "static"))
    notes = []
    inductor.note = notes.append
    for _, a, b in _lockstep(inductor, static, steps=2, batch=8, seed=7):
        assert abs(float(a["loss"]) - float(b["loss"])) <= 1e-4 * float(b["loss"])
        assert abs(float(a["kl"]) - float(b["kl"])) <= 1e-4 * float(b["kl"])
        assert _global_rel([p.detach() for p in ms.parameters()], [p.detach() for p in mi.parameters()]) < 1e-4
    assert notes == [] and inductor.mode == "static-inductor" and inductor.net is not mi
    # one compiled graph per variant (full pass; masked pass per resolution), no recompiles: on CUDA a recompile
    # would fall inside a capture (e.g. a full pass guarded differently after a masked one)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] <= 3


def test_a_failed_compilation_says_so_once_and_goes_on_uncompiled(monkeypatch):
    """No C++ compiler or no Triton: torch.compile raises at the first pass, before it runs anything. One note, then
    the same steps with the model itself (equal to the static step, bit for bit)."""
    def broken(model, graphs):
        def call(x):
            raise RuntimeError("InductorError: no working C++ compiler found\ndetails")
        return call

    monkeypatch.setattr("robustkit.step.compile_fixed_shapes", broken)
    (_, _, step), (_, _, ref) = (_runner(m, "gradaug") for m in ("static-inductor", "static"))
    notes = []
    step.note = notes.append
    for _, a, b in _lockstep(step, ref, steps=2, batch=16, seed=5):
        assert float(a["loss"]) == float(b["loss"])
    assert step.mode == "static" and len(notes) == 1
    assert notes[0].startswith("torch.compile failed (RuntimeError: InductorError: no working") and "\n" not in notes[0]


def test_side_by_side_sub_networks_need_captured_graphs():
    """graphs-streams replays captured graphs on several streams; there is no uncaptured form of it."""
    with pytest.raises(ValueError, match="unknown step mode 'static-streams'"):
        _runner("static-streams", "gradaug")
    model = create_model("wrn-10-1", num_classes=10)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    from robustkit.step import StaticStep
    with pytest.raises(ValueError, match="need captured graphs"):
        StaticStep(model, opt, TrainConfig(method="gradaug"), num_classes=10, amp=False,
                   memory_format=torch.contiguous_format, capture=False, streams=True)


@pytest.mark.parametrize("mode, momentum", [("graphs", 0.9), ("graphs-streams", 0.9), ("graphs", 0.0)])
def test_the_replayed_parts_make_the_static_step(monkeypatch, mode, momentum):
    """The bookkeeping of the captured path on the CPU: each "graph" replays the call it was captured from
    (stand-ins for CUDA's graphs and streams), so a captured run must equal the static step bit for bit. It checks
    that every step replays the full pass, each sub-network's slot at its resolution with the slot's width, and
    the update, with the right buffers (a slot replaying another slot's graph breaks it; the masks themselves are
    checked against the eager step above). Without momentum there are no buffers to create: captured from step 1."""
    from types import SimpleNamespace

    from robustkit.step import StaticStep

    _cpu_streams(monkeypatch)
    captured = []

    def capture(fn, pool, stream):
        captured.append(stream)
        return SimpleNamespace(replay=fn)

    monkeypatch.setattr(StaticStep, "_capture_part", staticmethod(capture))
    (mg, og, fast), (ms, os_, ref) = (_runner(m, "gradaug", momentum=momentum) for m in (mode, "static"))
    for i, a, b in _lockstep(fast, ref, steps=5, batch=16, seed=11):
        assert float(a["loss"]) == float(b["loss"]) and float(a["kl"]) == float(b["kl"]), i
    assert fast.captured and fast.mode == mode
    assert all(torch.equal(p, q) for p, q in zip(mg.parameters(), ms.parameters()))
    assert len(captured) == 2 + 3 * 3   # full, update, 3 slots x 3 resolutions
    if mode == "graphs-streams":        # each slot's graphs captured on that slot's own stream
        assert [captured[2 + 3 * k] for k in range(3)] == fast.streams and len(set(map(id, fast.streams))) == 3
