"""Random-width layers: one set of weights, many sub-networks.

A sub-network of width ``w`` uses the first ``round(w * C)`` channels of every layer with C channels.
The model's input channels (RGB) and output classes never change. BatchNorm keeps running statistics for
the full width only: at a sub-width it normalises with the statistics of the current batch and leaves the
running buffers alone, since the statistics of a 0.8-wide sub-network are not those of the full network.

Set the width of a whole model with :func:`set_width` or, scoped, ``with at_width(model, 0.8): ...``.

Two ways to run a sub-network, with the same result up to float rounding:

* sliced (:func:`at_width`): every layer computes only its first ``round(w * C)`` channels. The fewest
  FLOPs, so the default on the CPU; but every width is a new set of tensor shapes.
* masked (:class:`ChannelMasks`, ``with masked(model, masks): ...``): tensors keep their full size and each
  BatchNorm multiplies its affine weight and bias by a per-channel 0/1 mask, so the channels beyond
  ``round(w * C)`` leave it as exact zeros. In a pre-activation network every convolution reads a
  BatchNorm(-ReLU) output, so the dropped channels add nothing to the kept ones; the dropped outputs of a
  convolution only ever reach masked BatchNorms or the residual sum, never a kept channel, and their
  gradients, and those of the weights that touch them, are exactly zero. One tensor shape serves every
  width and the mask is filled on the device, so the pass can be captured once as a CUDA graph
  (robustkit/step.py). BatchNorm uses batch statistics and leaves the running buffers alone, as when sliced.

Under torchrun, :func:`set_sync_batchnorm` makes every BatchNorm compute its training statistics over the
batches of all ranks, at every width (torch's ``SyncBatchNorm`` cannot serve: it knows one width and runs
on GPUs only). The per-channel sums and sums of squares are added across ranks with one differentiable
all-reduce per layer, so N ranks with batch b normalise, and back-propagate, exactly as one process with
batch N x b (up to float rounding).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn


def scaled_channels(channels: int, width: float) -> int:
    """Channels kept at ``width``: rounded to nearest, at least 1 (the GradAug authors' rule)."""
    if width >= 1.0:
        return channels
    return max(1, int(channels * width + 0.5))


class _WidthMixin:
    width: float = 1.0


class SlimConv2d(_WidthMixin, nn.Conv2d):
    """Conv2d whose input channels follow the incoming tensor and whose outputs scale with ``width``.

    ``fixed_out=True`` keeps all output channels (not used by WRN, where every conv output is a feature map).
    """

    def __init__(self, *args, fixed_out: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.fixed_out = fixed_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.width >= 1.0 and x.shape[1] == self.in_channels:
            return super().forward(x)
        out = self.out_channels if self.fixed_out else scaled_channels(self.out_channels, self.width)
        weight = self.weight[:out, : x.shape[1]]
        bias = None if self.bias is None else self.bias[:out]
        return F.conv2d(x, weight, bias, self.stride, self.padding, self.dilation, self.groups)


class SlimBatchNorm2d(_WidthMixin, nn.BatchNorm2d):
    """BatchNorm2d over the first C channels; running statistics are used and updated at full width only.

    ``sync`` (set by :func:`set_sync_batchnorm`): in training mode, statistics over all ranks' batches.
    """

    sync: bool = False

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # set by masked(): (weight * mask, bias * mask). An instance attribute from the start, so that it is the
        # same kind of attribute before and after a masked pass (torch.compile guards the two differently)
        self.masked_affine: tuple[torch.Tensor, torch.Tensor] | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.masked_affine is not None:
            # Masked sub-width: batch statistics (running buffers untouched), channels beyond the mask -> 0.
            weight, bias = self.masked_affine
            return F.batch_norm(x, None, None, weight, bias, True, 0.0, self.eps)
        c = x.shape[1]
        full = c == self.num_features and self.width >= 1.0   # a sub-network is never "full", even where
        # rounding keeps every channel of this layer (16 x 0.97 -> 16): its input comes from narrower layers
        if self.sync and self.training:
            if full:
                self.num_batches_tracked.add_(1)
            momentum = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
            return synced_batch_norm(x, self.weight[:c], self.bias[:c], self.running_mean if full else None,
                                     self.running_var if full else None, momentum, self.eps)
        if full:
            return super().forward(x)
        # Sub-width: batch statistics, running buffers untouched (also in eval mode).
        return F.batch_norm(x, None, None, self.weight[:c], self.bias[:c], True, 0.0, self.eps)


def synced_batch_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, running_mean: torch.Tensor | None,
                      running_var: torch.Tensor | None, momentum: float, eps: float) -> torch.Tensor:
    """Training-mode batch norm of ``x`` (N, C, H, W) with statistics over the batches of all ranks.

    Per channel, this rank's sum, sum of squares and count are summed across ranks (one all-reduce, which
    back-propagates as an all-reduce of the gradients), giving the global mean and biased variance
    (E[x^2] - E[x]^2 in float32, clamped at 0). Running buffers, when given, move towards the global mean
    and unbiased variance as ``F.batch_norm`` moves them. Output in ``x``'s dtype, as cuDNN's under autocast.
    """
    from robustkit.distributed import all_sum_differentiable

    c = x.shape[1]
    xf = x.float()
    count = xf.new_full((1,), float(x.numel() // c))
    total = all_sum_differentiable(torch.cat([xf.sum((0, 2, 3)), (xf * xf).sum((0, 2, 3)), count]))
    n = total[2 * c:].detach()
    mean = total[:c] / n
    var = (total[c:2 * c] / n - mean * mean).clamp_min(0.0)
    if running_mean is not None and running_var is not None:
        with torch.no_grad():
            running_mean.lerp_(mean.detach(), momentum)
            running_var.lerp_(var.detach() * n / (n - 1).clamp_min(1.0), momentum)
    scale = torch.rsqrt(var + eps) * weight
    shift = bias - mean * scale
    return (xf * scale[None, :, None, None] + shift[None, :, None, None]).to(x.dtype)


def set_sync_batchnorm(model: nn.Module, on: bool) -> None:
    """Synchronise the training statistics of every random-width BatchNorm of ``model`` across ranks."""
    for m in model.modules():
        if isinstance(m, SlimBatchNorm2d):
            m.sync = bool(on)


class SlimLinear(_WidthMixin, nn.Linear):
    """Linear layer whose input features follow the incoming tensor; outputs (classes) are fixed."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == self.in_features:
            return super().forward(x)
        return F.linear(x, self.weight[:, : x.shape[1]], self.bias)


def set_width(model: nn.Module, width: float) -> None:
    """Set the width multiplier (0 < width <= 1) of every random-width layer in ``model``."""
    if not 0.0 < width <= 1.0:
        raise ValueError(f"width must be in (0, 1], got {width}")
    for m in model.modules():
        if isinstance(m, _WidthMixin):
            m.width = float(width)


@contextlib.contextmanager
def at_width(model: nn.Module, width: float) -> Iterator[nn.Module]:
    """Run ``model`` at ``width`` inside the block, back to full width afterwards."""
    set_width(model, width)
    try:
        yield model
    finally:
        set_width(model, 1.0)


class ChannelMasks:
    """The channel masks of a masked sub-network: one 0/1 vector (the parameters' dtype) per BatchNorm size.

    ``fill(width)`` sets them for a width (``round(width * C)`` leading channels on, like slicing) with one
    small device op per size, no host-to-device copy and no host sync; the tensors themselves never
    change, so a captured CUDA graph that reads them serves every width.
    """

    def __init__(self, model: nn.Module):
        param = next(model.parameters())
        sizes = sorted({m.num_features for m in model.modules() if isinstance(m, SlimBatchNorm2d)})
        self._index = {c: torch.arange(c, device=param.device) for c in sizes}
        self.masks = {c: torch.ones(c, dtype=param.dtype, device=param.device) for c in sizes}

    def fill(self, width: float) -> None:
        if not 0.0 < width <= 1.0:
            raise ValueError(f"width must be in (0, 1], got {width}")
        for c, mask in self.masks.items():
            torch.lt(self._index[c], scaled_channels(c, width), out=mask)   # 1.0 / 0.0


@contextlib.contextmanager
def masked(model: nn.Module, masks: ChannelMasks) -> Iterator[nn.Module]:
    """Run ``model`` as the masked sub-network that ``masks`` currently describe, inside the block.

    The masked BatchNorm weights and biases of all layers are made in two multi-tensor (foreach) products
    on entry, differentiably: a few kernels per pass instead of four per layer.
    """
    layers = [m for m in model.modules() if isinstance(m, SlimBatchNorm2d)]
    if any(isinstance(m, _WidthMixin) and m.width != 1.0 for m in model.modules()):
        raise ValueError("masked(): the model is set to a sliced width; use one of at_width or masked")
    chosen = [masks.masks[m.num_features] for m in layers]
    weights = torch._foreach_mul([m.weight for m in layers], chosen)
    biases = torch._foreach_mul([m.bias for m in layers], chosen)
    for m, w, b in zip(layers, weights, biases):
        m.masked_affine = (w, b)
    try:
        yield model
    finally:
        for m in layers:
            m.masked_affine = None
