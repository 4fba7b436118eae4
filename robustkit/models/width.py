"""Random-width layers: one set of weights, many sub-networks.

A sub-network of width ``w`` uses the first ``round(w * C)`` channels of every layer with C channels.
The model's input channels (RGB) and output classes never change. BatchNorm keeps running statistics for
the full width only: at a sub-width it normalises with the statistics of the current batch and leaves the
running buffers alone, since the statistics of a 0.8-wide sub-network are not those of the full network.

Set the width of a whole model with :func:`set_width` or, scoped, ``with at_width(model, 0.8): ...``.
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
    """BatchNorm2d over the first C channels; running statistics are used and updated at full width only."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = x.shape[1]
        if c == self.num_features:
            return super().forward(x)
        # Sub-width: batch statistics, running buffers untouched (also in eval mode).
        return F.batch_norm(x, None, None, self.weight[:c], self.bias[:c], True, 0.0, self.eps)


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
