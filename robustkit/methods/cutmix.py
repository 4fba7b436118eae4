"""CutMix (Yun et al., ICCV 2019), as its authors define it, batched on the device.

With probability ``p`` a batch is mixed: a box of the batch is replaced by the same box of a shuffled copy
of the batch. The box area follows lambda ~ Beta(1, 1) = U(0, 1): sides ``int(size * sqrt(1 - lambda))``,
centre uniform over the image, clipped at the borders; the labels are then mixed by the *true* (clipped)
box area, ``lam = 1 - box_area / image_area``: loss = lam * CE(y) + (1 - lam) * CE(y[perm]). One box for
the whole batch (the authors' recipe).

Draws: the coin, lambda and the centre come from the step's CPU generator (Python numbers: the box is a
slice, no device sync); the permutation from a device generator seeded from it (no host-to-device copy).
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from robustkit.methods.common import Batch, Method


@dataclass(frozen=True)
class Mix:
    perm: torch.Tensor      # which image's box each image receives
    box: tuple[int, int, int, int]  # rows r0:r1, cols c0:c1
    lam: float              # weight of the original label: 1 - box area / image area


def draw(x: torch.Tensor, p: float, gen: torch.Generator) -> Mix | None:
    """This step's CutMix draw for images ``x`` (N, C, H, W), or None (no mixing, probability 1 - p)."""
    if not p > 0:
        return None  # nothing drawn: without CutMix a method's random stream is what it always was
    coin, lam = torch.rand(2, generator=gen, dtype=torch.float64).tolist()
    if coin >= p:
        return None
    n, _, h, w = x.shape
    cut = math.sqrt(1.0 - lam)
    ch, cw = int(h * cut), int(w * cut)
    cy, cx = (int(v) for v in torch.randint(0, 1 << 30, (2,), generator=gen).tolist())
    cy, cx = cy % h, cx % w
    r0, r1 = min(max(cy - ch // 2, 0), h), min(max(cy + ch // 2, 0), h)
    c0, c1 = min(max(cx - cw // 2, 0), w), min(max(cx + cw // 2, 0), w)
    seed = int(torch.randint(0, 1 << 62, (1,), generator=gen))
    perm = torch.randperm(n, generator=torch.Generator(x.device).manual_seed(seed), device=x.device)
    return Mix(perm, (r0, r1, c0, c1), 1.0 - (r1 - r0) * (c1 - c0) / (h * w))


def apply(x: torch.Tensor, mix: Mix) -> torch.Tensor:
    """The mixed batch (a new tensor; ``x`` is left as it was)."""
    r0, r1, c0, c1 = mix.box
    out = x.clone()
    out[:, :, r0:r1, c0:c1] = x[mix.perm, :, r0:r1, c0:c1]
    return out


def mixed_cross_entropy(logits: torch.Tensor, y: torch.Tensor, mix: Mix | None) -> torch.Tensor:
    if mix is None:
        return F.cross_entropy(logits, y)
    return mix.lam * F.cross_entropy(logits, y) + (1.0 - mix.lam) * F.cross_entropy(logits, y[mix.perm])


def prob(cfg) -> float:
    return float(getattr(cfg, "cutmix_prob", None) or 0.0)


def train_step(model, batch: Batch, cfg, gen: torch.Generator, autocast=contextlib.nullcontext) -> dict:
    """Cross-entropy of the full network on the (with probability p) CutMix'ed labeled batch."""
    mix = draw(batch.x, prob(cfg), gen)
    x = batch.x if mix is None else apply(batch.x, mix)
    with autocast():
        logits = model(x)
    loss = mixed_cross_entropy(logits.float(), batch.y, mix)
    loss.backward()
    correct = (logits.detach().argmax(1) == batch.y).sum()
    return {"loss": loss.detach(), "ce": loss.detach(), "correct": correct, "n": batch.y.numel()}


METHOD = Method("cutmix", train_step, description="CutMix (p = --cutmix-prob, default 0.5)")
