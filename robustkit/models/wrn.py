"""WideResNet (Zagoruyko & Komodakis, 2016) built from random-width layers.

WRN-D-K: depth D = 6N + 4 (N pre-activation basic blocks per group), widen factor K, group widths
16K, 32K, 64K with strides 1, 2, 2, then BN-ReLU, global average pooling and a linear classifier.
Global pooling makes any input size >= 32 px work (STL-10's 96 px too). The model takes images in
[0, 1] and normalises with its own mean/std buffers, so attacks and corruptions work in pixel space.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from robustkit.models.registry import register
from robustkit.models.width import SlimBatchNorm2d, SlimConv2d, SlimLinear


class _Block(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int, drop_rate: float):
        super().__init__()
        self.bn1 = SlimBatchNorm2d(c_in)
        self.conv1 = SlimConv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn2 = SlimBatchNorm2d(c_out)
        self.conv2 = SlimConv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.drop_rate = drop_rate
        self.shortcut = None
        if stride != 1 or c_in != c_out:
            self.shortcut = SlimConv2d(c_in, c_out, 1, stride, 0, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        o = F.relu(self.bn1(x))
        y = self.conv1(o)
        y = F.relu(self.bn2(y))
        if self.drop_rate > 0:
            y = F.dropout(y, p=self.drop_rate, training=self.training)
        y = self.conv2(y)
        # Pre-activation shortcut: a projection sees the activated input, identity the raw one.
        return y + (x if self.shortcut is None else self.shortcut(o))


class WideResNet(nn.Module):
    def __init__(
        self,
        depth: int = 28,
        widen_factor: int = 2,
        num_classes: int = 10,
        mean: Sequence[float] = (0.5, 0.5, 0.5),
        std: Sequence[float] = (0.25, 0.25, 0.25),
        drop_rate: float = 0.0,
    ):
        super().__init__()
        if (depth - 4) % 6 != 0 or depth < 10:
            raise ValueError(f"WRN depth must be 6N+4 with N >= 1 (10, 16, 22, 28, 40, ...), got {depth}")
        n = (depth - 4) // 6
        widths = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))
        self.stem = SlimConv2d(3, widths[0], 3, 1, 1, bias=False)
        blocks = []
        c_in = widths[0]
        for g, stride in enumerate((1, 2, 2)):
            for i in range(n):
                blocks.append(_Block(c_in, widths[g + 1], stride if i == 0 else 1, drop_rate))
                c_in = widths[g + 1]
        self.blocks = nn.Sequential(*blocks)
        self.bn = SlimBatchNorm2d(c_in)
        self.fc = SlimLinear(c_in, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (x - self.mean) / self.std
        x = self.blocks(self.stem(x))
        x = F.relu(self.bn(x))
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.fc(x)


_WRN_NAME = re.compile(r"^wrn-(\d+)-(\d+)$")


@register("wrn", pattern=_WRN_NAME, example="wrn-28-2")
def wrn(name: str, **kwargs) -> WideResNet:
    depth, widen = (int(v) for v in _WRN_NAME.match(name).groups())
    return WideResNet(depth=depth, widen_factor=widen, **kwargs)
