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


class _ShakeDropFn(torch.autograd.Function):
    """y = (b + alpha - b*alpha) * x forward, grad * (b + beta - b*beta) backward (per image)."""

    @staticmethod
    def forward(ctx, x, b, alpha, beta):
        ctx.save_for_backward(b, beta)
        return x * (b + alpha - b * alpha)

    @staticmethod
    def backward(ctx, grad):
        b, beta = ctx.saved_tensors
        return grad * (b + beta - b * beta), None, None, None


class ShakeDrop(nn.Module):
    """ShakeDrop (Yamada et al., 2019) on a residual branch.

    Training: per image, b ~ Bernoulli(p_keep), alpha ~ U(-1, 1) forward, beta ~ U(0, 1) backward:
    the branch is scaled by b + alpha - b*alpha forward and its gradient by b + beta - b*beta. Evaluation:
    the expectation, E[b + alpha - b*alpha] = p_keep. Draws come from ``self.generator`` when set (the
    training loop sets one per step, seeded from (seed, step): resumable), else from torch's global RNG.
    """

    generator: torch.Generator | None = None

    def __init__(self, p_keep: float):
        super().__init__()
        if not 0.0 <= p_keep <= 1.0:
            raise ValueError(f"ShakeDrop keep probability must be in [0, 1], got {p_keep}")
        self.p_keep = float(p_keep)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return x * self.p_keep
        n = x.shape[0]
        shape = (n,) + (1,) * (x.dim() - 1)
        g = self.generator if self.generator is not None and self.generator.device == x.device else None
        u = torch.rand((3, *shape), generator=g, device=x.device, dtype=x.dtype)
        b = (u[0] < self.p_keep).to(x.dtype)
        alpha, beta = u[1] * 2 - 1, u[2]
        return _ShakeDropFn.apply(x, b, alpha, beta)

    def extra_repr(self) -> str:
        return f"p_keep={self.p_keep:.3f}"


class _Block(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int, drop_rate: float, p_keep: float | None = None):
        super().__init__()
        self.bn1 = SlimBatchNorm2d(c_in)
        self.conv1 = SlimConv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn2 = SlimBatchNorm2d(c_out)
        self.conv2 = SlimConv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.drop_rate = drop_rate
        self.shortcut = None
        if stride != 1 or c_in != c_out:
            self.shortcut = SlimConv2d(c_in, c_out, 1, stride, 0, bias=False)
        self.shakedrop = ShakeDrop(p_keep) if p_keep is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        o = F.relu(self.bn1(x))
        y = self.conv1(o)
        y = F.relu(self.bn2(y))
        if self.drop_rate > 0:
            y = F.dropout(y, p=self.drop_rate, training=self.training)
        y = self.conv2(y)
        if self.shakedrop is not None:
            y = self.shakedrop(y)
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
        shakedrop: float | None = None,
    ):
        """``shakedrop``: p_L, the keep probability of the last block's ShakeDrop (None: no ShakeDrop);
        block l of L keeps with p_l = 1 - (l / L)(1 - p_L), the linear decay rule."""
        super().__init__()
        if (depth - 4) % 6 != 0 or depth < 10:
            raise ValueError(f"WRN depth must be 6N+4 with N >= 1 (10, 16, 22, 28, 40, ...), got {depth}")
        if widen_factor < 1:
            raise ValueError(f"WRN widen factor K must be >= 1 (wrn-28-2: K = 2), got {widen_factor}")
        n = (depth - 4) // 6
        widths = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))
        self.stem = SlimConv2d(3, widths[0], 3, 1, 1, bias=False)
        blocks = []
        c_in = widths[0]
        total = 3 * n
        for g, stride in enumerate((1, 2, 2)):
            for i in range(n):
                level = g * n + i + 1
                p_keep = None if shakedrop is None else 1.0 - level / total * (1.0 - shakedrop)
                blocks.append(_Block(c_in, widths[g + 1], stride if i == 0 else 1, drop_rate, p_keep))
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


_WRN_NAME = re.compile(r"^wrn-(\d+)-(\d+)(-shakedrop(?:-(\d*\.?\d+))?)?$")


@register("wrn", pattern=_WRN_NAME, example="wrn-28-2")
def wrn(name: str, **kwargs) -> WideResNet:
    """``wrn-D-K``; ``wrn-D-K-shakedrop`` (p_L = 0.5) or ``wrn-D-K-shakedrop-P`` adds ShakeDrop blocks."""
    depth, widen, sd, p_last = _WRN_NAME.match(name).groups()
    shakedrop = (float(p_last) if p_last else 0.5) if sd else None
    if shakedrop is not None and not 0.0 <= shakedrop <= 1.0:
        raise ValueError(f"ShakeDrop p_L must be in [0, 1], got {shakedrop}")
    return WideResNet(depth=int(depth), widen_factor=int(widen), shakedrop=shakedrop, **kwargs)


def has_random_layers(model: nn.Module) -> bool:
    """Whether ``model`` draws randomness of its own in training (ShakeDrop), from a generator per step."""
    return any(isinstance(m, ShakeDrop) for m in model.modules())


def set_generator(model: nn.Module, generator: torch.Generator | None) -> None:
    """Give every stochastic layer (ShakeDrop) of ``model`` this step's generator."""
    for m in model.modules():
        if isinstance(m, ShakeDrop):
            m.generator = generator
