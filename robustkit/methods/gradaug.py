"""GradAug (Yang, Zhu & Chen, NeurIPS 2020) and GradAug-semi.

Per step:
1. the full network on the labeled batch, cross-entropy with the true labels;
2. ``subnets`` sub-networks: widths = [min_width] + (n-1) uniform samples in [min_width, 1], run widest
   first (as the authors do); each sees the batch bilinearly resized to a resolution drawn from
   ``resolutions`` and is trained with KL(full network's detached softmax || sub-network's softmax);
3. gradients of all terms add up (one ``backward`` per term, so one sub-network graph at a time);
   the loop makes one optimizer step.

GradAug-semi (``cfg.semi``): the sub-network loss needs no labels, so the unlabeled batch joins it. The
labeled and unlabeled images go through the full network together (one forward, BatchNorm statistics
over both, cross-entropy on the labeled part only); its softmax on all of them is the target of every
sub-network, whose KL is averaged over labeled and unlabeled images alike. Feeding both through one
forward is our choice (the paper does not specify it); it costs one forward per network for both sets.

GradAug + CutMix (the paper's GradAug†, ``--cutmix-prob p``): the full network trains on the CutMix batch,
the sub-networks on the same mixed images, with the full network's soft predictions as targets. The
authors' released training script (taoyang1122/GradAug, train.py) has no CutMix path, so this follows
the paper's description; the sub-networks see the mixed batch resized, as in our CIFAR recipe.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from robustkit.methods import cutmix
from robustkit.methods.common import Batch, Method, local_grads
from robustkit.models import at_width


@dataclass(frozen=True)
class SubNet:
    width: float
    resolution: int


def sample_subnets(cfg, gen: torch.Generator) -> list[SubNet]:
    """Draw this step's sub-networks from the CPU generator ``gen`` (widest first)."""
    n = cfg.subnets
    lo = cfg.min_width
    widths = [lo] + (lo + (1.0 - lo) * torch.rand(n - 1, generator=gen, dtype=torch.float64)).tolist()
    res_idx = torch.randint(len(cfg.resolutions), (n,), generator=gen).tolist()
    widths.sort(reverse=True)
    return [SubNet(float(w), int(cfg.resolutions[i])) for w, i in zip(widths, res_idx)]


def resize(x: torch.Tensor, size: int) -> torch.Tensor:
    if x.shape[-1] == size and x.shape[-2] == size:
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=True)


def kl_to_target(logits: torch.Tensor, target_probs: torch.Tensor) -> torch.Tensor:
    """KL(target || softmax(logits)), averaged over the batch."""
    return F.kl_div(F.log_softmax(logits.float(), dim=1), target_probs, reduction="batchmean")


def gradaug_step(model, batch: Batch, plan: list[SubNet], autocast=contextlib.nullcontext,
                 mix: cutmix.Mix | None = None) -> dict:
    """One GradAug(-semi) step with a given sub-network plan; accumulates gradients, returns logs.

    ``mix``: a CutMix draw for the labeled images (GradAug + CutMix): the full network is trained on the
    mixed images with the area-mixed cross-entropy, and the sub-networks see the same mixed images
    (resized) and follow the full network's soft predictions on them.
    """
    b = batch.y.numel()
    x_lab = batch.x if mix is None else cutmix.apply(batch.x, mix)
    x_all = x_lab if batch.xu is None else torch.cat([x_lab, batch.xu])
    with local_grads(model, bool(plan)):   # under DDP, gradients are all-reduced once, in the last backward
        with autocast():
            logits = model(x_all)
        ce = cutmix.mixed_cross_entropy(logits[:b].float(), batch.y, mix)
        ce.backward()
    target = F.softmax(logits.detach().float(), dim=1)
    kl_total = torch.zeros((), device=ce.device)
    for i, sub in enumerate(plan):
        with local_grads(model, i < len(plan) - 1):
            with at_width(model, sub.width), autocast():
                sub_logits = model(resize(x_all, sub.resolution))
            kl = kl_to_target(sub_logits, target)
            kl.backward()
        kl_total = kl_total + kl.detach()
    correct = (logits[:b].detach().argmax(1) == batch.y).sum()
    return {"loss": ce.detach() + kl_total, "ce": ce.detach(), "kl": kl_total, "correct": correct, "n": b}


def train_step(model, batch: Batch, cfg, gen: torch.Generator, autocast=contextlib.nullcontext) -> dict:
    plan = sample_subnets(cfg, gen)
    return gradaug_step(model, batch, plan, autocast, cutmix.draw(batch.x, cutmix.prob(cfg), gen))


METHOD = Method("gradaug", train_step, uses_unlabeled=lambda cfg: bool(cfg.semi),
                description="GradAug (--semi: GradAug-semi; --cutmix-prob: GradAug + CutMix)")
