"""Mean Teacher (Tarvainen & Valpola, NeurIPS 2017).

The teacher is an exponential moving average (EMA) of the student's weights and is never touched by the
optimizer. Per step:

1. the student sees the labeled and the unlabeled batch (one augmentation draw, ``Batch.x``/``xu``):
   cross-entropy on the labeled part;
2. the teacher, in train mode and without gradients, sees an independent augmentation draw of the same
   images (``Batch.x2``/``xu2``);
3. consistency = mean squared difference of the two softmax outputs (averaged over classes and images,
   as the authors' ``softmax_mse_loss`` / number of classes), weighted by ``consistency`` x a sigmoid
   ramp-up ``exp(-5 (1 - t)^2)``, t = step / ramp-up steps (``rampup``, a fraction of the run), then 1;
4. after the optimizer step: teacher = a * teacher + (1 - a) * student for every parameter, with
   ``a = min(1 - 1 / (step + 1), decay)``; decay is ``ema_decay_rampup`` (0.99) during the ramp-up and
   ``ema_decay`` (0.999) after it, the paper's CIFAR-10 setting. BatchNorm statistics of the teacher come
   from its own forward passes (as in the authors' code).

Evaluation uses the teacher (what the paper reports); ``eval_model: student`` picks the student. Our
choices where the paper leaves room: weight 100 with the class-averaged MSE (the authors' CIFAR-10
ResNet setting), ramp-up over the first 30 % of the steps.
"""

from __future__ import annotations

import contextlib
import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

from robustkit.methods.common import Batch, Method


def rampup(step: int, total_steps: int, fraction: float) -> float:
    """Sigmoid ramp-up exp(-5 (1 - t)^2), t = step / (fraction * total), 1 from there on."""
    length = fraction * total_steps
    if length <= 0:
        return 1.0
    t = min(max(step / length, 0.0), 1.0)
    return math.exp(-5.0 * (1.0 - t) ** 2)


def ema_alpha(step: int, cfg) -> float:
    """The EMA weight of the old teacher after optimizer step ``step`` (0-based)."""
    in_rampup = step < cfg.rampup * cfg.steps
    decay = cfg.ema_decay_rampup if in_rampup else cfg.ema_decay
    return min(1.0 - 1.0 / (step + 1), decay)


def make_state(model: nn.Module, cfg) -> nn.Module:
    teacher = copy.deepcopy(model)
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


@torch.no_grad()
def after_step(model: nn.Module, teacher: nn.Module, cfg, step: int) -> None:
    a = ema_alpha(step, cfg)
    t_params = [p for p in teacher.parameters()]
    s_params = [p.detach() for p in model.parameters()]
    torch._foreach_mul_(t_params, a)
    torch._foreach_add_(t_params, s_params, alpha=1.0 - a)


def eval_module(model: nn.Module, teacher: nn.Module, cfg) -> nn.Module:
    return model if cfg.eval_model == "student" else teacher


def consistency_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(F.softmax(student_logits.float(), 1), F.softmax(teacher_logits.float(), 1))


def train_step(model, batch: Batch, cfg, gen: torch.Generator, autocast=contextlib.nullcontext) -> dict:
    teacher = batch.state
    b = batch.y.numel()
    x_s = batch.x if batch.xu is None else torch.cat([batch.x, batch.xu])
    x_t = batch.x2 if batch.xu2 is None else torch.cat([batch.x2, batch.xu2])
    with autocast():
        logits = model(x_s)
    teacher.train()
    with torch.no_grad(), autocast():
        t_logits = teacher(x_t)
    ce = F.cross_entropy(logits[:b].float(), batch.y)
    weight = cfg.consistency * rampup(batch.step, batch.total_steps, cfg.rampup)
    cons = consistency_loss(logits, t_logits)
    loss = ce + weight * cons
    loss.backward()
    correct = (logits[:b].detach().argmax(1) == batch.y).sum()
    return {"loss": loss.detach(), "ce": ce.detach(), "consistency": cons.detach(), "correct": correct, "n": b}


METHOD = Method("mean-teacher", train_step, uses_unlabeled=lambda cfg: True, views=2, make_state=make_state,
                after_step=after_step, eval_module=eval_module,
                description="Mean Teacher: EMA teacher, consistency on labeled + unlabeled images")
