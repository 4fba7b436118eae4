"""Blur corruptions: Gaussian, glass, defocus, motion, zoom.

Gaussian, defocus and zoom blur are deterministic and follow the reference's border rules exactly
(pixel-close to imagecorruptions). Motion blur draws one angle per image and applies that image's
directional kernel through one batched FFT (see ``_ops.motion_blur``). Glass blur replaces the reference's sequential pixel swaps
(a Python loop over every pixel, which is what makes imagecorruptions slow) with phased parallel
swaps; see :func:`glass_blur`.
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch

from . import _ops

Tensor = torch.Tensor


def gaussian_blur(x: Tensor, sigma: float, g: torch.Generator, preset: str) -> Tensor:
    """skimage ``gaussian(sigma, mode='nearest', truncate=4)`` per channel."""
    return _ops.gaussian_filter(x, float(sigma))


def _local_swaps(x: Tensor, delta: int, g: torch.Generator) -> Tensor:
    """One pass of glass blur's local shuffle, as parallel swaps in ``(2*delta)**2`` phases.

    The reference visits every interior pixel (h, w) with ``delta < h <= H - delta`` from the
    bottom-right corner and swaps it with (h + dy, w + dx), dy, dx uniform in ``[-delta, delta)``.
    Here the same pixels each start exactly one swap with the same offset distribution, but pixels
    whose rows and columns agree modulo ``2*delta`` swap simultaneously: two such pixels are at least
    ``2*delta`` apart on some axis and offsets span ``2*delta - 1``, so no two swaps of a phase touch
    the same pixel and each phase is an exact permutation done with one gather and two scatters.
    Phases run in reverse scan order like the reference. What differs is only the order of the swaps,
    so a pixel can be carried along by later swaps a little less often than in the sequential loop.
    """
    n, c, h, w = x.shape
    rows = torch.arange(h - delta, delta, -1, device=x.device)
    cols = torch.arange(w - delta, delta, -1, device=x.device)
    if rows.numel() == 0 or cols.numel() == 0:
        return x
    flat = x.reshape(n, c, h * w).clone()
    period = 2 * delta
    for a in reversed(range(period)):
        pr = rows[rows.remainder(period) == a]
        if pr.numel() == 0:
            continue
        for b in reversed(range(period)):
            pc = cols[cols.remainder(period) == b]
            if pc.numel() == 0:
                continue
            p = (pr[:, None] * w + pc[None, :]).reshape(-1)  # (P,)
            off = torch.randint(-delta, delta, (n, p.numel(), 2), generator=g, device=x.device)
            q = p[None, :] + off[..., 0] * w + off[..., 1]  # (N, P)
            q = q[:, None, :].expand(n, c, -1)
            vp = flat[:, :, p]
            vq = flat.gather(2, q)
            flat[:, :, p] = vq
            flat.scatter_(2, q, vp)
    return flat.reshape(n, c, h, w)


def glass_blur(x: Tensor, p: tuple[float, int, int], g: torch.Generator, preset: str) -> Tensor:
    """Blur, shuffle pixels locally ``iterations`` times, blur again (p = sigma, delta, iterations).

    Like the reference, the first blur is quantised to 8 bits (``np.uint8`` truncation) before the
    shuffle. The make_cifar_c.py loop hard-codes 32 px; here both presets use the image's own size.
    """
    sigma, delta, iterations = float(p[0]), int(p[1]), int(p[2])
    y = torch.floor(_ops.gaussian_filter(x, sigma).clamp(0, 1) * 255) / 255
    for _ in range(iterations):  # loops over passes, never over images
        y = _local_swaps(y, delta, g)
    return _ops.gaussian_filter(y, sigma)


@lru_cache(maxsize=32)
def _disk_kernel_cpu(radius: float, alias_blur: float) -> Tensor:
    """imagecorruptions' anti-aliased disk: a pixel disk on a grid of at least 17x17, normalised,
    then OpenCV ``GaussianBlur`` (3x3, or 5x5 above radius 8, reflect-101 borders)."""
    half = 8 if radius <= 8 else int(radius)
    ksize = 3 if radius <= 8 else 5
    t = torch.arange(-half, half + 1, dtype=torch.float64)
    disk = ((t[:, None] ** 2 + t[None, :] ** 2) <= radius**2).double()
    disk = (disk / disk.sum()).float()
    u = torch.arange(ksize, dtype=torch.float64) - (ksize - 1) / 2
    gk = torch.exp(-(u**2) / (2 * alias_blur**2))
    gk = (gk / gk.sum()).float()
    return _ops.conv_separable(disk[None, None], gk, gk, "reflect101")[0, 0]


def defocus_blur(x: Tensor, p: tuple[float, float], g: torch.Generator, preset: str) -> Tensor:
    """Convolution with an anti-aliased disk (p = radius, alias blur), OpenCV ``filter2D`` borders."""
    kernel = _ops.on_device(_disk_kernel_cpu, float(p[0]), float(p[1]), device=x.device, dtype=x.dtype)
    return _ops.conv2d_fft(x, kernel, "reflect101")


def motion_blur(x: Tensor, p: tuple[int, float], g: torch.Generator, preset: str) -> Tensor:
    """Directional blur along a random angle in [-45, 45) degrees per image (p = radius, sigma).

    imagecorruptions drops taps once a shift reaches the image size (visible on 32 px images at high
    severity); make_cifar_c.py calls ImageMagick, which clamps instead. Both rules are reproduced.
    """
    angle = torch.rand(x.shape[0], generator=g, device=x.device) * 90 - 45
    return _ops.motion_blur(x, int(p[0]), float(p[1]), angle, stop_at_border=preset == "imagenet-c")


def zoom_blur(x: Tensor, zooms: tuple[float, ...], g: torch.Generator, preset: str) -> Tensor:
    """Average of the image and its centre zooms by each factor (one resample per factor).

    Every image shares the sampling grid of a factor: it is built once, (1, H, W, 2), and broadcast over
    the batch (not materialised per image), and the zooms are summed in place."""
    import torch.nn.functional as F

    n, _, h, w = x.shape
    variant = "imagecorruptions" if preset == "imagenet-c" else "cifar"
    out = x.clone()
    for z in zooms:
        if math.isclose(z, 1.0):
            out.add_(x)
            continue
        r = _ops.zoom_coords(h, z, variant, x.device)
        q = _ops.zoom_coords(w, z, variant, x.device)  # make_cifar_c.py only knows square images
        # _ops.sample_bilinear's grid (align_corners, border), for one image
        gx = (q * (2.0 / max(w - 1, 1)) - 1.0)[None, :].expand(h, w)
        gy = (r * (2.0 / max(h - 1, 1)) - 1.0)[:, None].expand(h, w)
        grid = torch.stack((gx, gy), dim=-1).to(x.dtype)[None].expand(n, h, w, 2)
        out.add_(F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=True))
    return out / (len(zooms) + 1)
