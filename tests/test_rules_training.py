"""The training rules the README states, each pinned against an expectation computed here independently.

* learning rate: the closed-form cosine 0.5 * lr * (1 + cos(pi * s / T)), per step, in the optimizer and in
  metrics.jsonl (steps chosen where a linear decay differs clearly);
* GradAug-semi: loss and every parameter gradient against a hand-written functional WRN-10-1 (weights
  sliced by hand for each sub-network), and BatchNorm running statistics moved by the full-width forward only;
* Mean Teacher: the loss against its formula, the EMA decay inside the ramp-up (0.99), after it (0.999)
  and in the warm-up (1 - 1 / (step + 1));
* the training accuracy: the step's correct-count and metrics.jsonl's train_acc against a recount with a
  copy of the model taken before each step, on the same augmented images;
* bf16 autocast + channels_last: one training step's momentum buffers against the fp32 step's.

The training step is being rebuilt; these tests only use its stable entry points: ``fit``, ``cosine_lr``,
``TRAIN_STEPS``, ``gradaug_step(model, batch, plan)`` with ``SubNet(width, resolution)``, ``mean_teacher.*``
and ``create_model("wrn-10-1")``.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math

import pytest
import torch
import torch.nn.functional as F

from robustkit.config import TrainConfig
from robustkit.methods import TRAIN_STEPS, Batch, mean_teacher
from robustkit.methods.gradaug import SubNet, gradaug_step
from robustkit.models import create_model
from robustkit.train import cosine_lr, fit

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY = dict(dataset="digits", arch="wrn-10-1", labels=100, batch_size=16, eval_limit=40, eval_batch_size=128,
            device="cpu")


def closed_form_cosine(base: float, s: int, total: int) -> float:
    return 0.5 * base * (1.0 + math.cos(math.pi * s / total))


# ------------------------------------------------------------------------------------------ learning rate
def test_cosine_lr_closed_form_where_linear_differs():
    # T = 10: at s = 2, 3, 7, 8 the cosine (0.0905, 0.0794, 0.0206, 0.0095) is >= 0.009 away from the
    # linear decay 0.1 * (1 - s / T) (0.08, 0.07, 0.03, 0.02); at s = 0, 5, 10 both agree.
    for s, by_hand in ((0, 0.1), (2, 0.09045084971874737), (3, 0.07938926261462366), (5, 0.05),
                       (7, 0.02061073738537634), (8, 0.009549150281252633), (10, 0.0)):
        assert cosine_lr(0.1, s, 10) == pytest.approx(by_hand, abs=1e-12)
        assert cosine_lr(0.1, s, 10) == pytest.approx(closed_form_cosine(0.1, s, 10), abs=1e-12)
    assert abs(cosine_lr(0.1, 2, 10) - 0.08) > 0.009
    assert cosine_lr(0.05, 250, 1000) == pytest.approx(0.5 * 0.05 * (1 + math.cos(math.pi / 4)))


# ---------------------------------------------------------------------------------- training accuracy
@pytest.mark.parametrize("method, semi", [("baseline", False), ("gradaug", True)])
def test_fit_lr_and_train_accuracy_against_independent_recounts(tmp_path, monkeypatch, method, semi):
    """One short fit: every step's optimizer lr and every metrics.jsonl line against the closed form; the
    step's correct-count and train_acc against a recount with a copy of the model taken before the step."""
    original = TRAIN_STEPS[method]
    recounts, reported = [], []

    def spy(model, batch, cfg, gen, autocast=contextlib.nullcontext):
        before = copy.deepcopy(model)   # same weights, same (train) mode, same augmented images
        joint = batch.x if batch.xu is None else torch.cat([batch.x, batch.xu])  # one forward of all images
        with torch.no_grad():
            pred = before(joint)[: len(batch.y)].argmax(1)
        recounts.append(sum(int(p) == int(t) for p, t in zip(pred.tolist(), batch.y.tolist())))   # plain loop
        logs = original(model, batch, cfg, gen, autocast)
        reported.append(int(logs["correct"]))
        return logs

    lrs = []
    sgd_step = torch.optim.SGD.step

    def recording_step(self, *args, **kwargs):
        lrs.append(self.param_groups[0]["lr"])
        return sgd_step(self, *args, **kwargs)

    monkeypatch.setitem(TRAIN_STEPS, method, spy)
    monkeypatch.setattr(torch.optim.SGD, "step", recording_step)
    total, lr, batch = 6, 0.1, TINY["batch_size"]
    cfg = TrainConfig(**TINY, method=method, semi=semi, steps=total, lr=lr, eval_every=total, log_every=2,
                      subnets=2)
    fit(cfg, tmp_path / "r", progress=False)

    assert lrs == pytest.approx([closed_form_cosine(lr, s, total) for s in range(total)], abs=1e-12)
    assert len(recounts) == total and reported == recounts
    assert 0 < sum(recounts) < total * batch      # neither all right nor all wrong: the count is informative
    lines = [json.loads(x) for x in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [2, 4, 6]
    for r in lines:
        done = r["step"]
        # the lr logged is the one of the window's last step, done - 1
        assert r["lr"] == pytest.approx(closed_form_cosine(lr, done - 1, total), abs=1e-12)
        window = recounts[done - 2:done]
        assert r["train_acc"] == pytest.approx(sum(window) / (2 * batch), abs=1e-12)


# -------------------------------------------------------------------------------------------- GradAug-semi
def _kept(channels: int, width: float) -> int:
    """Channels of a sub-network at ``width``: rounded to nearest (GradAug, Yang et al. 2020), at least 1."""
    return channels if width >= 1.0 else max(1, math.floor(channels * width + 0.5))


def _reference_wrn_10_1(p: dict[str, torch.Tensor], x: torch.Tensor, width: float, mean, std,
                        stats: dict | None = None) -> torch.Tensor:
    """WRN-10-1 (pre-activation, groups 16/16/32/64, strides 1/2/2) written out by hand, in training mode,
    at ``width``: every conv keeps its first round(width * C) output channels and as many input channels as
    arrive; every BatchNorm normalises with the batch's statistics over its first C channels; the classifier
    keeps all classes. ``stats`` collects each BatchNorm's batch mean and unbiased variance."""

    def conv(name, h, stride, pad):
        w = p[name + ".weight"]
        return F.conv2d(h, w[: _kept(w.shape[0], width), : h.shape[1]], None, stride, pad)

    def bn(name, h):
        c = h.shape[1]
        mu = h.mean((0, 2, 3), keepdim=True)
        var = ((h - mu) ** 2).mean((0, 2, 3), keepdim=True)
        if stats is not None:
            n = h.numel() // c
            stats[name] = (mu.flatten().detach(), (var.flatten() * n / (n - 1)).detach())
        out = (h - mu) / torch.sqrt(var + 1e-5)
        return out * p[name + ".weight"][:c].view(1, -1, 1, 1) + p[name + ".bias"][:c].view(1, -1, 1, 1)

    h = conv("stem", (x - mean) / std, 1, 1)
    for i, stride in enumerate((1, 2, 2)):
        o = F.relu(bn(f"blocks.{i}.bn1", h))
        y = F.relu(bn(f"blocks.{i}.bn2", conv(f"blocks.{i}.conv1", o, stride, 1)))
        y = conv(f"blocks.{i}.conv2", y, 1, 1)
        h = y + (h if i == 0 else conv(f"blocks.{i}.shortcut", o, stride, 0))
    h = F.relu(bn("bn", h)).mean((2, 3))
    return h @ p["fc.weight"][:, : h.shape[1]].t() + p["fc.bias"]


def _semi_setup(seed=0, b=6, u=10):
    torch.manual_seed(seed)
    model = create_model("wrn-10-1", num_classes=10, mean=[0.4, 0.5, 0.6], std=[0.2, 0.25, 0.3]).train()
    x, y, xu = torch.rand(b, 3, 32, 32), torch.randint(0, 10, (b,)), torch.rand(u, 3, 32, 32)
    return model, Batch(x, y, xu)


def _soft_kl_batchmean(target: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """KL(target || softmax(logits)) summed over classes, averaged over the images (batchmean)."""
    log_q = logits - torch.logsumexp(logits, 1, keepdim=True)
    return (target * (target.log() - log_q)).sum() / len(target)


def test_gradaug_semi_loss_and_every_gradient_against_a_hand_written_step():
    plan = [SubNet(0.9, 28), SubNet(0.8, 24), SubNet(0.85, 32)]
    model, batch = _semi_setup()
    params = {k: v.detach().clone().requires_grad_(True) for k, v in model.named_parameters()}
    mean, std = model.mean.clone(), model.std.clone()

    logs = gradaug_step(model, batch, plan)

    # The rule, by hand: one joint forward of labeled + unlabeled through the full network; cross-entropy on
    # the labeled slice; the full network's detached softmax over all 16 images is the target of every
    # sub-network, which sees the joint batch bilinearly resized (align_corners=True); KL batchmean; the
    # gradients add up.
    b = len(batch.y)
    joint = torch.cat([batch.x, batch.xu])
    full = _reference_wrn_10_1(params, joint, 1.0, mean, std)
    log_p = full[:b] - torch.logsumexp(full[:b], 1, keepdim=True)
    ce = -log_p[torch.arange(b), batch.y].mean()
    target = torch.softmax(full.detach(), 1)
    kls = []
    for sub in plan:
        resized = F.interpolate(joint, size=(sub.resolution, sub.resolution), mode="bilinear", align_corners=True)
        kls.append(_soft_kl_batchmean(target, _reference_wrn_10_1(params, resized, sub.width, mean, std)))
    total = ce + sum(kls)
    expected = dict(zip(params, torch.autograd.grad(total, list(params.values()))))

    assert logs["ce"].item() == pytest.approx(ce.item(), rel=1e-5)
    assert logs["kl"].item() == pytest.approx(sum(k.item() for k in kls), rel=1e-4)
    assert logs["loss"].item() == pytest.approx(total.item(), rel=1e-5)
    assert logs["n"] == b
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        torch.testing.assert_close(p.grad, expected[name], rtol=1e-4, atol=1e-6, msg=name)


def test_gradaug_semi_batchnorm_running_statistics_move_only_with_the_full_width_forward():
    plan = [SubNet(0.8, 24), SubNet(0.9, 32)]
    model, batch = _semi_setup(seed=1)
    bns = [n for n, m in model.named_modules() if isinstance(m, torch.nn.BatchNorm2d)]
    params = {k: v.detach().clone() for k, v in model.named_parameters()}
    # running statistics that are not torch's defaults, so that any update shows
    with torch.no_grad():
        for name in bns:
            m = model.get_submodule(name)
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    before = {n: (model.get_submodule(n).running_mean.clone(), model.get_submodule(n).running_var.clone()) for n in bns}

    gradaug_step(model, batch, plan)

    stats: dict = {}
    _reference_wrn_10_1(params, torch.cat([batch.x, batch.xu]), 1.0, model.mean, model.std, stats)
    assert set(stats) == set(bns)
    for name in bns:
        m = model.get_submodule(name)
        mu, var = stats[name]
        # torch's BatchNorm rule with momentum 0.1, once: running <- 0.9 running + 0.1 batch (unbiased var)
        torch.testing.assert_close(m.running_mean, 0.9 * before[name][0] + 0.1 * mu, rtol=1e-4, atol=1e-6, msg=name)
        torch.testing.assert_close(m.running_var, 0.9 * before[name][1] + 0.1 * var, rtol=1e-4, atol=1e-6, msg=name)
        assert int(m.num_batches_tracked) == 1, name


# ------------------------------------------------------------------------------------------- Mean Teacher
def _mt_setup(seed=0, b=4, u=6):
    torch.manual_seed(seed)
    model = create_model("wrn-10-1", num_classes=10).train()
    cfg = TrainConfig(method="mean-teacher", steps=4000, rampup=0.3, consistency=30.0)
    teacher = mean_teacher.make_state(model, cfg)
    with torch.no_grad():   # a teacher clearly unlike the student, as after many EMA steps
        for p in teacher.parameters():
            p.add_(0.3 * torch.randn_like(p))
    x, y, xu = torch.rand(b, 3, 32, 32), torch.randint(0, 10, (b,)), torch.rand(u, 3, 32, 32)
    x2, xu2 = torch.rand(b, 3, 32, 32), torch.rand(u, 3, 32, 32)   # the second, independent view
    return model, teacher, cfg, (x, y, xu, x2, xu2)


def test_mean_teacher_loss_and_gradient_follow_the_formula():
    model, teacher, cfg, (x, y, xu, x2, xu2) = _mt_setup()
    step = 300   # inside the ramp-up (0.3 x 4000 = 1200 steps): t = 0.25
    student_copy, teacher_copy = copy.deepcopy(model), copy.deepcopy(teacher)
    teacher.eval()   # the step must put the teacher in train mode itself
    batch = Batch(x, y, xu, x2, xu2, step=step, total_steps=cfg.steps, state=teacher)
    logs = TRAIN_STEPS["mean-teacher"](model, batch, cfg, torch.Generator().manual_seed(0))

    # By hand (Tarvainen & Valpola 2017; consistency = mean over classes and images of the squared softmax
    # difference, the authors' softmax_mse_loss / classes): weight 30 x exp(-5 (1 - t)^2), t = 300 / 1200.
    b = len(y)
    s_logits = student_copy(torch.cat([x, xu]))
    with torch.no_grad():
        t_logits = teacher_copy.train()(torch.cat([x2, xu2]))   # teacher in train mode, on the second view
    log_p = s_logits[:b] - torch.logsumexp(s_logits[:b], 1, keepdim=True)
    ce = -log_p[torch.arange(b), y].mean()
    sq = (torch.softmax(s_logits, 1) - torch.softmax(t_logits, 1)) ** 2
    cons = sq.sum() / sq.numel()
    ramp = math.exp(-5.0 * (1.0 - 0.25) ** 2)
    loss = ce + 30.0 * ramp * cons
    loss.backward()

    assert logs["ce"].item() == pytest.approx(ce.item(), rel=1e-5)
    assert logs["consistency"].item() == pytest.approx(cons.item(), rel=1e-4)
    assert logs["loss"].item() == pytest.approx(loss.item(), rel=1e-5)
    assert cons.item() > 1e-4 and 30.0 * ramp * cons.item() > 0.01 * ce.item()  # the term weighs in
    for (name, p), q in zip(model.named_parameters(), student_copy.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-6, msg=name)
    assert all(p.grad is None for p in teacher.parameters())


@pytest.mark.parametrize("step, alpha", [
    (20, 1.0 - 1.0 / 21),   # warm-up: 1 - 1/(step+1) = 0.952 is below the ramp-up decay 0.99
    (500, 0.99),            # inside the ramp-up (step < 0.3 x 4000): min(1 - 1/501, 0.99) = 0.99
    (1500, 0.999),          # after it: min(1 - 1/1501 = 0.99933, 0.999) = 0.999
])
def test_mean_teacher_ema_decay_inside_and_after_the_rampup(step, alpha):
    model, teacher, cfg, _ = _mt_setup(seed=2)
    with torch.no_grad():   # the student after some optimizer step
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    t_before = {k: v.detach().clone() for k, v in teacher.named_parameters()}
    buffers_before = {k: v.clone() for k, v in teacher.named_buffers()}
    student = {k: v.detach().clone() for k, v in model.named_parameters()}

    mean_teacher.after_step(model, teacher, cfg, step)

    for name, p in teacher.named_parameters():
        expected = alpha * t_before[name] + (1.0 - alpha) * student[name]
        torch.testing.assert_close(p, expected, rtol=1e-6, atol=1e-7, msg=name)
    for name, v in teacher.named_buffers():   # BatchNorm statistics come from the teacher's own forwards
        assert torch.equal(v, buffers_before[name]), name
    for name, p in model.named_parameters():  # the student is left as it was
        assert torch.equal(p, student[name]), name


# ---------------------------------------------------------------------------------- bf16 + channels_last
def test_bf16_channels_last_step_matches_fp32_momentum(tmp_path):
    """One GradAug-semi training step with bf16 autocast + channels_last against the fp32 step, from the
    same initial weights and the same batch (same seed): the momentum buffers after one SGD step (the
    gradient plus weight decay) agree within a relative tolerance.

    Measured on the development machine (torch 2.14 CPU, one thread, this config): the largest per-tensor
    relative difference ||m_bf16 - m_fp32|| / ||m_fp32|| was 0.354 (the stem; early layers' gradients at
    initialisation are small sums of large terms, so bf16's 8-bit mantissa shows), 0.153 over all tensors
    at once, and the first step's loss (CE + KL) differed by 1.5e-4 relative (2.32520 vs 2.32554).
    Tolerances: 0.6 per tensor and 0.3 overall (about twice the measured), 1e-3 relative on the loss. (Even fp32 with channels_last differs from contiguous fp32
    by 1.3 % here, against 6e-6 for contiguous fp32 vs float64: torch's CPU channels_last kernels on
    digits' flat backgrounds.) Images transposed on their way to channels_last, a wrong loss or a step
    taken on other images gives differences of order 1.
    """
    base = dict(TINY, method="gradaug", semi=True, steps=1, eval_every=1, log_every=1, subnets=2)
    fit(TrainConfig(**base, amp=False, channels_last=False), tmp_path / "fp32", progress=False)
    fit(TrainConfig(**base, amp=True, channels_last=True), tmp_path / "bf16", progress=False)
    states = [torch.load(tmp_path / d / "checkpoint.pt", weights_only=True)["optimizer"]["state"]
              for d in ("fp32", "bf16")]
    ref, low = ([s[i]["momentum_buffer"] for i in sorted(s)] for s in states)
    assert len(ref) == len(low) == len(list(create_model("wrn-10-1").parameters()))
    rel = [((a.float() - b.float()).norm() / b.float().norm()).item() for a, b in zip(low, ref)]
    overall = (torch.cat([(a.float() - b.float()).flatten() for a, b in zip(low, ref)]).norm()
               / torch.cat([b.float().flatten() for b in ref]).norm()).item()
    print(f"bf16+channels_last vs fp32 momentum: max per-tensor rel {max(rel):.4g}, overall {overall:.4g}")
    losses = [json.loads((tmp_path / d / "metrics.jsonl").read_text().splitlines()[0])["train_loss"]
              for d in ("fp32", "bf16")]
    print(f"first-step loss fp32 {losses[0]:.6f} bf16 {losses[1]:.6f}")
    assert overall > 0   # the bf16 path really ran (fp32 on both sides would agree exactly)
    assert max(rel) <= 0.6, rel
    assert overall <= 0.3, overall
    assert losses[1] == pytest.approx(losses[0], rel=1e-3)
