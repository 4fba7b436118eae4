"""Plain supervised training: cross-entropy of the full network on the labeled batch."""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

from robustkit.methods.common import Batch


def train_step(model, batch: Batch, cfg, gen: torch.Generator, autocast=contextlib.nullcontext) -> dict:
    with autocast():
        logits = model(batch.x)
    loss = F.cross_entropy(logits.float(), batch.y)
    loss.backward()
    correct = (logits.detach().argmax(1) == batch.y).sum()
    return {"loss": loss.detach(), "ce": loss.detach(), "correct": correct, "n": batch.y.numel()}
