"""Noise corruptions: Gaussian, shot (Poisson), impulse (salt and pepper), speckle.

All four draw one random tensor the size of the batch, so every image (and every pixel and channel,
as in the reference, which draws per array element) gets independent noise from the generator.
"""

from __future__ import annotations

import torch

Tensor = torch.Tensor


def gaussian_noise(x: Tensor, std: float, g: torch.Generator, preset: str) -> Tensor:
    """Additive N(0, std) noise per pixel and channel."""
    return x + std * torch.randn(x.shape, generator=g, device=x.device, dtype=x.dtype)


def shot_noise(x: Tensor, photons: float, g: torch.Generator, preset: str) -> Tensor:
    """Poisson photon noise: ``Poisson(x * photons) / photons`` (fewer photons = stronger)."""
    return torch.poisson(x * photons, generator=g) / photons


def impulse_noise(x: Tensor, amount: float, g: torch.Generator, preset: str) -> Tensor:
    """Salt and pepper as skimage ``random_noise(mode='s&p')``: a fraction ``amount`` of values is
    replaced, half by 1 (salt) and half by 0 (pepper)."""
    hit = torch.rand(x.shape, generator=g, device=x.device) < amount
    salt = torch.rand(x.shape, generator=g, device=x.device) < 0.5
    return torch.where(hit, salt.to(x.dtype), x)


def speckle_noise(x: Tensor, std: float, g: torch.Generator, preset: str) -> Tensor:
    """Multiplicative noise ``x + x * N(0, std)``."""
    return x + x * (std * torch.randn(x.shape, generator=g, device=x.device, dtype=x.dtype))
