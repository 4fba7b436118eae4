"""Per-corruption, per-severity parameter tables of the two presets.

``imagenet-c`` holds the numbers of ``imagecorruptions`` 1.1.2 (bethgelab), which are the ImageNet-C
numbers tuned for 224 px images; ``cifar-10-c`` holds those of Hendrycks' ``make_cifar_c.py``
(hendrycks/robustness), milder and tuned for 32 px. Keeping the numbers in one table (and out of the
functions) lets ``docs/corruptions.md`` and the tests read them from one place.

Each entry is a tuple of five severities; the meaning of a severity's value is documented by the
corruption function that consumes it (same order as in the reference code).
"""

from __future__ import annotations

import math
from typing import Any

PRESETS: tuple[str, ...] = ("imagenet-c", "cifar-10-c")


def _arange(start: float, stop: float, step: float) -> tuple[float, ...]:
    """``numpy.arange`` bit for bit (stop exclusive), without numpy.

    Bit-exactness matters: zoom blur rounds ``crop * factor`` to an output size, and 25 * 1.3 sits
    on the .5 boundary, so a factor one ulp off changes the zoomed image.
    """
    n = max(0, math.ceil((stop - start) / step))  # numpy's length rule
    delta = (start + step) - start  # numpy fills start + i * delta with this delta
    return tuple(start + i * delta for i in range(n))


IMAGENET_C: dict[str, tuple[Any, ...]] = {
    # noise: std / photons per unit / salt-and-pepper amount / multiplicative std
    "gaussian_noise": (0.08, 0.12, 0.18, 0.26, 0.38),
    "shot_noise": (60, 25, 12, 5, 3),
    "impulse_noise": (0.03, 0.06, 0.09, 0.17, 0.27),
    "speckle_noise": (0.15, 0.2, 0.35, 0.45, 0.6),
    # blur
    "gaussian_blur": (1, 2, 3, 4, 6),  # sigma
    "glass_blur": ((0.7, 1, 2), (0.9, 2, 1), (1, 2, 3), (1.1, 3, 2), (1.5, 4, 2)),  # sigma, delta, iters
    "defocus_blur": ((3, 0.1), (4, 0.5), (6, 0.5), (8, 0.5), (10, 0.5)),  # radius, alias blur
    "motion_blur": ((10, 3), (15, 5), (15, 8), (15, 12), (20, 15)),  # radius, sigma
    "zoom_blur": (
        _arange(1, 1.11, 0.01),
        _arange(1, 1.16, 0.01),
        _arange(1, 1.21, 0.02),
        _arange(1, 1.26, 0.02),
        _arange(1, 1.31, 0.03),
    ),
    # weather
    "snow": (  # loc, scale, zoom, threshold, blur radius, blur sigma, image blend
        (0.1, 0.3, 3, 0.5, 10, 4, 0.8),
        (0.2, 0.3, 2, 0.5, 12, 4, 0.7),
        (0.55, 0.3, 4, 0.9, 12, 8, 0.7),
        (0.55, 0.3, 4.5, 0.85, 12, 8, 0.65),
        (0.55, 0.3, 2.5, 0.85, 12, 12, 0.55),
    ),
    "frost": ((1, 0.4), (0.8, 0.6), (0.7, 0.7), (0.65, 0.7), (0.6, 0.75)),  # image, frost weight
    "fog": ((1.5, 2), (2.0, 2), (2.5, 1.7), (2.5, 1.5), (3.0, 1.4)),  # strength, wibble decay
    "spatter": (  # loc, scale, sigma, threshold, intensity/mud sigma, mode (0 water, 1 mud)
        (0.65, 0.3, 4, 0.69, 0.6, 0),
        (0.65, 0.3, 3, 0.68, 0.6, 0),
        (0.65, 0.3, 2, 0.68, 0.5, 0),
        (0.65, 0.3, 1, 0.65, 1.5, 1),
        (0.67, 0.4, 1, 0.65, 1.5, 1),
    ),
    # digital
    "brightness": (0.1, 0.2, 0.3, 0.4, 0.5),
    "contrast": (0.4, 0.3, 0.2, 0.1, 0.05),
    "saturate": ((0.3, 0), (0.1, 0), (2, 0), (5, 0.1), (20, 0.2)),  # saturation scale, shift
    "jpeg_compression": (25, 18, 15, 10, 7),  # quality
    "pixelate": (0.6, 0.5, 0.4, 0.3, 0.25),  # downscale factor
    # alpha (displacement gain); sigma = 1% of the side, uniform noise +-0.5% of the height
    "elastic_transform": (250 * 0.05, 250 * 0.065, 250 * 0.085, 250 * 0.1, 250 * 0.12),
}

CIFAR_10_C: dict[str, tuple[Any, ...]] = {
    "gaussian_noise": (0.04, 0.06, 0.08, 0.09, 0.10),
    "shot_noise": (500, 250, 100, 75, 50),
    "impulse_noise": (0.01, 0.02, 0.03, 0.05, 0.07),
    "speckle_noise": (0.06, 0.1, 0.12, 0.16, 0.2),
    "gaussian_blur": (0.4, 0.6, 0.7, 0.8, 1),
    "glass_blur": ((0.05, 1, 1), (0.25, 1, 1), (0.4, 1, 1), (0.25, 1, 2), (0.4, 1, 2)),
    "defocus_blur": ((0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1)),
    "motion_blur": ((6, 1), (6, 1.5), (6, 2), (8, 2), (9, 2.5)),
    "zoom_blur": (
        _arange(1, 1.06, 0.01),
        _arange(1, 1.11, 0.01),
        _arange(1, 1.16, 0.01),
        _arange(1, 1.21, 0.01),
        _arange(1, 1.26, 0.01),
    ),
    "snow": (
        (0.1, 0.2, 1, 0.6, 8, 3, 0.95),
        (0.1, 0.2, 1, 0.5, 10, 4, 0.9),
        (0.15, 0.3, 1.75, 0.55, 10, 4, 0.9),
        (0.25, 0.3, 2.25, 0.6, 12, 6, 0.85),
        (0.3, 0.3, 1.25, 0.65, 14, 12, 0.8),
    ),
    "frost": ((1, 0.2), (1, 0.3), (0.9, 0.4), (0.85, 0.4), (0.75, 0.45)),
    "fog": ((0.2, 3), (0.5, 3), (0.75, 2.5), (1, 2), (1.5, 1.75)),
    "spatter": (
        (0.62, 0.1, 0.7, 0.7, 0.5, 0),
        (0.65, 0.1, 0.8, 0.7, 0.5, 0),
        (0.65, 0.3, 1, 0.69, 0.5, 0),
        (0.65, 0.1, 0.7, 0.69, 0.6, 1),
        (0.65, 0.1, 0.5, 0.68, 0.6, 1),
    ),
    "brightness": (0.05, 0.1, 0.15, 0.2, 0.3),
    "contrast": (0.75, 0.5, 0.4, 0.3, 0.15),
    "saturate": ((0.3, 0), (0.1, 0), (1.5, 0), (2, 0.1), (2.5, 0.2)),
    "jpeg_compression": (80, 65, 58, 50, 40),
    "pixelate": (0.95, 0.9, 0.85, 0.75, 0.65),
    # (alpha, sigma, affine jitter) as fractions of the image side (32 px in the reference)
    "elastic_transform": (
        (0, 0, 0.08),
        (0.05, 0.2, 0.07),
        (0.08, 0.06, 0.06),
        (0.1, 0.04, 0.05),
        (0.1, 0.03, 0.03),
    ),
}

TABLES: dict[str, dict[str, tuple[Any, ...]]] = {"imagenet-c": IMAGENET_C, "cifar-10-c": CIFAR_10_C}


def params(preset: str, name: str, severity: int) -> Any:
    """The parameter(s) of ``name`` at ``severity`` (1..5) in ``preset``."""
    return TABLES[preset][name][severity - 1]
