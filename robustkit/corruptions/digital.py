"""Digital corruptions: brightness, contrast, saturate, JPEG, pixelate, elastic transform.

Brightness and saturate change one HSV coordinate. Because ``hsv2rgb(rgb2hsv(x))`` writes every
channel as ``V * (1 - S * k(H))``, changing V or S alone is a per-pixel rescaling of the RGB values,
computed here without the HSV round trip (and identical to it, up to float rounding).
"""

from __future__ import annotations

import torch

from . import _ops, jpeg

Tensor = torch.Tensor


def brightness(x: Tensor, shift: float, g: torch.Generator, preset: str) -> Tensor:
    """Add ``shift`` to HSV value (clipped to 1), keeping hue and saturation."""
    v = x.amax(dim=1, keepdim=True)
    v_new = (v + shift).clamp(0, 1)
    return torch.where(v > 0, x * (v_new / v.clamp(min=1e-12)), v_new)


def contrast(x: Tensor, factor: float, g: torch.Generator, preset: str) -> Tensor:
    """Pull every channel towards its per-image mean: ``(x - mean) * factor + mean``."""
    mean = x.mean(dim=(2, 3), keepdim=True)
    return (x - mean) * factor + mean


def saturate(x: Tensor, p: tuple[float, float], g: torch.Generator, preset: str) -> Tensor:
    """HSV saturation ``S -> clip(S * scale + shift, 0, 1)`` keeping hue and value (p = scale, shift).

    Grey pixels (S = 0) have hue 0 in skimage, so a positive shift tints them red, as in the reference.
    """
    scale, shift = float(p[0]), float(p[1])
    v = x.amax(dim=1, keepdim=True)
    delta = v - x.amin(dim=1, keepdim=True)
    s = torch.where(v > 0, delta / v.clamp(min=1e-12), 0.0)
    s_new = (s * scale + shift).clamp(0, 1)
    coloured = v - (v - x) * (s_new / s.clamp(min=1e-12))
    red = torch.ones_like(x)
    red[:, 1:] = 1 - s_new
    grey = v * red  # hsv2rgb of (h=0, s_new, v)
    return torch.where(delta > 0, coloured, grey)


def jpeg_compression(x: Tensor, quality: int, g: torch.Generator, preset: str) -> Tensor:
    """Encode and decode as a baseline 4:2:0 JPEG at ``quality``, computed in torch (no codec call):
    libjpeg-turbo's integer arithmetic step by step, so the result equals Pillow's ``save(..., "JPEG",
    quality=quality)`` + decode (see :mod:`robustkit.corruptions.jpeg`)."""
    return jpeg.jpeg_roundtrip(x, int(quality))


def pixelate(x: Tensor, factor: float, g: torch.Generator, preset: str) -> Tensor:
    """Pillow BOX downscale by ``factor``, then back up with NEAREST (imagenet-c) or BOX (cifar-10-c), on 8-bit
    levels as the makers resized their PIL images: Pillow's fixed-point arithmetic and its rounding after each
    pass, bit for bit (``_ops.pil_resize``). The input is first rounded to 8-bit levels, as a PIL image holds it."""
    h, w = x.shape[-2:]
    levels = _ops.levels8(x).to(torch.int32)
    small = _ops.pil_resize(levels, (int(h * factor), int(w * factor)), "box")
    out = _ops.pil_resize(small, (h, w), "nearest" if preset == "imagenet-c" else "box")
    return _ops.unit_float(out)


def _fold_reflect101(coord: Tensor, n: int) -> Tensor:
    """Fold coordinates into ``[0, n-1]`` by OpenCV's BORDER_REFLECT_101 (mirror about the edge pixel)."""
    if n == 1:
        return torch.zeros_like(coord)
    period = 2 * (n - 1)
    c = coord.remainder(period)
    return torch.where(c > n - 1, period - c, c)


def _triangle(cx: float, cy: float, sq: float) -> Tensor:
    return torch.tensor([[cx + sq, cy + sq], [cx + sq, cy - sq], [cx - sq, cy - sq]])


def _random_affine(x: Tensor, jitter: float, g: torch.Generator) -> Tensor:
    """make_cifar_c.py's random affine: three points around the centre moved by U(-jitter, jitter),
    warped with bilinear sampling and reflect-101 borders (OpenCV ``warpAffine``)."""
    n, _, h, w = x.shape
    cy, cx, sq = float(h // 2), float(w // 2), float(min(h, w) // 3)
    pts1 = _ops.on_device(_triangle, cx, cy, sq, device=x.device, dtype=torch.float32)
    pts2 = pts1 + (torch.rand((n, 3, 2), generator=g, device=x.device) * 2 - 1) * jitter
    # inverse map (destination -> source): solve [pts2 | 1] @ A = pts1 for A (3 x 2), per image
    lhs = torch.cat([pts2, torch.ones((n, 3, 1), device=x.device)], dim=2)
    a = torch.linalg.solve_ex(lhs, pts1.expand(n, 3, 2))[0]  # _ex: no error check, so no device sync
    rows, cols = torch.meshgrid(
        torch.arange(h, device=x.device, dtype=torch.float32),
        torch.arange(w, device=x.device, dtype=torch.float32),
        indexing="ij",
    )
    dst = torch.stack([cols, rows, torch.ones_like(rows)], dim=-1).reshape(1, -1, 3)  # (1, HW, 3)
    src = (dst @ a).reshape(n, h, w, 2)
    return _ops.sample_bilinear(x, _fold_reflect101(src[..., 1], h), _fold_reflect101(src[..., 0], w))


def elastic_transform(x: Tensor, p, g: torch.Generator, preset: str) -> Tensor:
    """Smoothed random displacement field applied with bilinear sampling and mirrored borders.

    imagenet-c (imagecorruptions): p = alpha; noise U(+-0.5 % of the height) per pixel, smoothed by a
    Gaussian of 1 % of the side (truncate 3), scaled by alpha. cifar-10-c (make_cifar_c.py): a
    random affine first, then U(-1, 1) noise smoothed by ``sigma`` and scaled by ``alpha``, with
    p = (alpha, sigma, affine jitter) as fractions of the image side.
    """
    n, _, h, w = x.shape
    if preset != "imagenet-c":
        x = _random_affine(x, p[2] * float(h), g)  # the reference hard-codes IMSIZE = 32
    noise = torch.rand((n, 2, h, w), generator=g, device=x.device) * 2 - 1
    return elastic_from_noise(x, noise, p, preset)


def elastic_from_noise(x: Tensor, noise: Tensor, p, preset: str) -> Tensor:
    """The deterministic rest of :func:`elastic_transform` for given U(-1, 1) noise (N, 2, H, W)
    (channel 0 displaces columns, channel 1 rows); tests inject the reference's own draws."""
    h, w = x.shape[-2:]
    if preset == "imagenet-c":
        alpha, sigma, amp = float(p), (h * 0.01, w * 0.01), h * 0.005
    else:
        alpha, sigma, amp = p[0] * float(h), (p[1] * float(h), p[1] * float(h)), 1.0
    disp = _ops.gaussian_filter(noise * amp, sigma, truncate=3.0, mode="symmetric") * alpha
    rows, cols = torch.meshgrid(
        torch.arange(h, device=x.device, dtype=torch.float32),
        torch.arange(w, device=x.device, dtype=torch.float32),
        indexing="ij",
    )
    src_r = _ops.fold_symmetric(rows + disp[:, 1], h)
    src_c = _ops.fold_symmetric(cols + disp[:, 0], w)
    return _ops.sample_bilinear(x, src_r, src_c)
