"""Batched image primitives the corruptions are built from (torch only, any device).

Each helper reproduces the border rule and the sampling convention of the library call it stands in
for (scipy.ndimage, OpenCV, Pillow), because those conventions decide whether a torch corruption is
pixel-close to ``imagecorruptions`` or visibly shifted by half a pixel. Names of padding modes:

* ``"edge"``       repeat the border pixel (scipy ``nearest``, OpenCV ``BORDER_REPLICATE``)
* ``"reflect101"`` mirror without repeating the border (OpenCV's default, torch ``reflect``)
* ``"symmetric"``  mirror repeating the border (scipy/skimage ``reflect``)

Padding is done by index lookup rather than ``F.pad`` so that pads wider than the image (a 21 px
kernel on an 8 px image) still follow the rule instead of raising.
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch
import torch.nn.functional as F

Tensor = torch.Tensor


def pad_index(n: int, before: int, after: int, mode: str, device: torch.device) -> Tensor:
    """Source indices (length ``before + n + after``) that pad an axis of length ``n`` by ``mode``."""
    idx = torch.arange(-before, n + after, device=device)
    if n == 1:
        return torch.zeros_like(idx)
    if mode == "edge":
        return idx.clamp(0, n - 1)
    if mode == "reflect101":
        period = 2 * n - 2
        idx = idx.remainder(period)
        return torch.where(idx >= n, period - idx, idx)
    if mode == "symmetric":
        period = 2 * n
        idx = idx.remainder(period)
        return torch.where(idx >= n, period - 1 - idx, idx)
    raise ValueError(f"unknown padding mode {mode!r}")


def pad2d(x: Tensor, top: int, bottom: int, left: int, right: int, mode: str) -> Tensor:
    """Pad the last two dims of ``x`` by index lookup (works for pads larger than the image)."""
    h, w = x.shape[-2:]
    if top or bottom:
        x = x.index_select(-2, pad_index(h, top, bottom, mode, x.device))
    if left or right:
        x = x.index_select(-1, pad_index(w, left, right, mode, x.device))
    return x


def gaussian_kernel1d(sigma: float, truncate: float, device: torch.device) -> Tensor:
    """scipy.ndimage's Gaussian taps: radius ``int(truncate * sigma + 0.5)``, normalised to sum 1."""
    radius = int(truncate * float(sigma) + 0.5)
    t = torch.arange(-radius, radius + 1, dtype=torch.float64)
    k = torch.exp(-0.5 * (t / float(sigma)) ** 2)
    return (k / k.sum()).to(device=device, dtype=torch.float32)


def conv_separable(x: Tensor, ky: Tensor | None, kx: Tensor | None, mode: str) -> Tensor:
    """Correlate every channel of ``x`` (..., H, W) with ``ky`` along H and ``kx`` along W."""
    shape = x.shape
    y = x.reshape(-1, 1, shape[-2], shape[-1])
    if ky is not None and ky.numel() > 1:
        r = ky.numel() // 2
        y = F.conv2d(pad2d(y, r, ky.numel() - 1 - r, 0, 0, mode), ky.view(1, 1, -1, 1))
    if kx is not None and kx.numel() > 1:
        r = kx.numel() // 2
        y = F.conv2d(pad2d(y, 0, 0, r, kx.numel() - 1 - r, mode), kx.view(1, 1, 1, -1))
    return y.reshape(shape)


def conv2d_same(x: Tensor, kernel: Tensor, mode: str) -> Tensor:
    """Correlate every channel of ``x`` (..., H, W) with a 2-D ``kernel`` (odd size), same output size."""
    shape = x.shape
    kh, kw = kernel.shape
    y = pad2d(x.reshape(-1, 1, shape[-2], shape[-1]), kh // 2, kh // 2, kw // 2, kw // 2, mode)
    return F.conv2d(y, kernel.view(1, 1, kh, kw)).reshape(shape)


def gaussian_filter(x: Tensor, sigma: float | tuple[float, float], truncate: float = 4.0, mode: str = "edge") -> Tensor:
    """``scipy.ndimage.gaussian_filter`` over the last two dims (skimage ``gaussian`` defaults)."""
    sy, sx = (sigma, sigma) if not isinstance(sigma, tuple) else sigma
    ky = gaussian_kernel1d(sy, truncate, x.device) if sy > 1e-15 else None  # scipy skips sigma 0
    kx = gaussian_kernel1d(sx, truncate, x.device) if sx > 1e-15 else None
    return conv_separable(x, ky, kx, mode)


def sample_bilinear(x: Tensor, rows: Tensor, cols: Tensor) -> Tensor:
    """Bilinear samples of ``x`` (N, C, H, W) at pixel coordinates ``rows``/``cols`` (N, Ho, Wo).

    Coordinates outside ``[0, size-1]`` take the border value; callers that need a mirror rule fold
    their coordinates first (see :func:`fold_symmetric`).
    """
    h, w = x.shape[-2:]
    gx = cols * (2.0 / max(w - 1, 1)) - 1.0
    gy = rows * (2.0 / max(h - 1, 1)) - 1.0
    grid = torch.stack((gx, gy), dim=-1).to(x.dtype)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=True)


def fold_symmetric(coord: Tensor, n: int) -> Tensor:
    """Fold coordinates into ``[0, n-1]`` the way scipy's ``mode='reflect'`` interpolation does."""
    c = (coord + 0.5).remainder(2 * n) - 0.5
    c = torch.where(c > n - 0.5, 2 * n - 1 - c, c)
    return c.clamp(0, n - 1)


def zoom_coords(n: int, zoom: float, variant: str, device: torch.device) -> Tensor:
    """Source coordinates of the centre-crop-then-``scipy.ndimage.zoom(order=1)`` ("clipped zoom").

    ``variant="imagecorruptions"`` keeps the top-left ``n`` output pixels as imagecorruptions does;
    ``"cifar"`` trims the overflow symmetrically as make_cifar_c.py does; ``"full"`` returns every
    output pixel (snow zooms a noise layer and crops only after blurring it).
    """
    crop = int(math.ceil(n / float(zoom)))
    top = (n - crop) // 2
    out = int(round(crop * float(zoom)))
    step = (crop - 1) / (out - 1) if out > 1 else 0.0
    i = torch.arange(out, device=device, dtype=torch.float64)
    if variant == "imagecorruptions":
        i = i[:n]
    elif variant == "cifar":
        trim = (out - n) // 2
        i = i[trim : trim + n]
    elif variant != "full":
        raise ValueError(variant)
    return (top + i * step).to(torch.float32)


def motion_offsets(radius: int, angle_deg: Tensor) -> tuple[Tensor, Tensor]:
    """ImageMagick MotionBlurImage tap offsets (rows, cols), each (N, width), for per-image angles."""
    width = 2 * int(radius) + 1
    i = torch.arange(width, device=angle_deg.device, dtype=torch.float64)[None, :]
    a = torch.deg2rad(angle_deg.to(torch.float64))[:, None]
    # point = (width*sin, width*cos); i*point/hypot(point) == i*(sin, cos)
    drow = torch.ceil(i * torch.sin(a) - 0.5).long()
    dcol = torch.ceil(i * torch.cos(a) - 0.5).long()
    return drow, dcol


def motion_blur(x: Tensor, radius: int, sigma: float, angle_deg: Tensor, stop_at_border: bool) -> Tensor:
    """Per-image directional blur: sum of edge-clamped shifted copies with one-sided Gaussian weights.

    This is what ImageMagick's MotionBlurImage computes and what imagecorruptions re-implements with
    shifts. ``stop_at_border`` reproduces imagecorruptions' early ``break`` once a shift reaches the
    image size (the remaining weights are dropped, not renormalised). The loop runs over kernel taps,
    never over images: each tap is one batched gather.
    """
    n, c, h, w = x.shape
    width = 2 * int(radius) + 1
    t = torch.arange(width, dtype=torch.float64)
    k = torch.exp(-(t**2) / (2 * float(sigma) ** 2))
    k = (k / k.sum()).to(device=x.device, dtype=x.dtype)
    drow, dcol = motion_offsets(radius, angle_deg)
    weights = k[None, :].expand(n, width)
    if stop_at_border:
        reached = (drow.abs() >= h) | (dcol.abs() >= w)
        weights = weights * (reached.cumsum(1) == 0)
    rows0 = torch.arange(h, device=x.device)
    cols0 = torch.arange(w, device=x.device)
    batch = torch.arange(n, device=x.device)[:, None, None]
    out = torch.zeros_like(x)
    for tap in range(width):
        r = (rows0[None, :] + drow[:, tap : tap + 1]).clamp(0, h - 1)  # (N, H)
        q = (cols0[None, :] + dcol[:, tap : tap + 1]).clamp(0, w - 1)  # (N, W)
        shifted = x.permute(0, 2, 3, 1)[batch, r[:, :, None], q[:, None, :]]  # (N, H, W, C)
        out = out + weights[:, tap].view(n, 1, 1, 1) * shifted.permute(0, 3, 1, 2)
    return out


@lru_cache(maxsize=64)
def _pil_weights_cpu(n_in: int, n_out: int, kind: str) -> Tensor:
    """Pillow's resampling matrix (n_out, n_in) for BOX (area-like) or NEAREST on a whole axis."""
    scale = n_in / n_out
    m = torch.zeros(n_out, n_in, dtype=torch.float64)
    if kind == "nearest":
        src = [min(int((o + 0.5) * scale), n_in - 1) for o in range(n_out)]
        m[torch.arange(n_out), torch.tensor(src)] = 1.0
        return m.float()
    filterscale = max(scale, 1.0)
    support = 0.5 * filterscale
    for o in range(n_out):  # tiny (size of one axis), cached
        center = (o + 0.5) * scale
        lo = max(int(center - support + 0.5), 0)
        hi = min(int(center + support + 0.5), n_in)
        for j in range(lo, hi):
            u = (j - center + 0.5) / filterscale
            m[o, j] = 1.0 if -0.5 < u <= 0.5 else 0.0
        m[o] /= m[o].sum()
    return m.float()


def pil_resize(x: Tensor, size: tuple[int, int], kind: str) -> Tensor:
    """Pillow ``Image.resize`` (BOX or NEAREST) of (N, C, H, W) as two small matrix products."""
    h, w = x.shape[-2:]
    my = _pil_weights_cpu(h, size[0], kind).to(x.device, x.dtype)
    mx = _pil_weights_cpu(w, size[1], kind).to(x.device, x.dtype)
    return torch.matmul(torch.matmul(my, x), mx.T)


def rgb_to_gray_cv(x: Tensor) -> Tensor:
    """OpenCV ``COLOR_RGB2GRAY`` weights on (N, 3, H, W) -> (N, 1, H, W)."""
    return (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])
