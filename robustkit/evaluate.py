"""Accuracy loops: pure functions of (model, data); no printing, no files."""

from __future__ import annotations

import contextlib

import torch


def as_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 [0,255] -> float [0,1]; float passes through."""
    return images.float().div_(255.0) if images.dtype == torch.uint8 else images.float()


@torch.no_grad()
def predict(model, images: torch.Tensor, batch_size: int = 512, autocast=contextlib.nullcontext) -> torch.Tensor:
    """Predicted class of every image (uint8 or float [0,1] NCHW), on the images' device."""
    was_training = model.training
    model.eval()
    dev = next(model.parameters()).device
    out = []
    try:
        for i in range(0, len(images), batch_size):
            x = as_float(images[i:i + batch_size].to(dev, non_blocking=True))
            if dev.type == "cuda":
                x = x.contiguous(memory_format=torch.channels_last)
            with autocast():
                out.append(model(x).argmax(1))
    finally:
        model.train(was_training)
    return torch.cat(out) if out else torch.empty(0, dtype=torch.long, device=dev)


def accuracy(model, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 512,
             autocast=contextlib.nullcontext) -> float:
    """Top-1 accuracy (fraction) of ``model`` on ``images``/``labels``."""
    if len(labels) == 0:
        return float("nan")
    pred = predict(model, images, batch_size, autocast)
    return (pred == labels.to(pred.device)).float().mean().item()
