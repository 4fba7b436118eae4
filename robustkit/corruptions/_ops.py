"""Batched image primitives the corruptions are built from (torch only, any device).

Each helper reproduces the border rule and the sampling convention of the library call it stands in
for (scipy.ndimage, OpenCV, Pillow), because those conventions decide whether a torch corruption is
pixel-close to ``imagecorruptions`` or visibly shifted by half a pixel. Names of padding modes:

* ``"edge"``       repeat the border pixel (scipy ``nearest``, OpenCV ``BORDER_REPLICATE``)
* ``"reflect101"`` mirror without repeating the border (OpenCV's default, torch ``reflect``)
* ``"symmetric"``  mirror repeating the border (scipy/skimage ``reflect``)

Padding is done by index lookup rather than ``F.pad`` so that pads wider than the image (a 21 px
kernel on an 8 px image) still follow the rule instead of raising; reflect101 pads narrower than a float
image take ``F.pad``'s ``reflect`` (the same values, one copy instead of two).
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
    """Pad the last two dims of ``x`` by index lookup (works for pads larger than the image). reflect101 pads
    smaller than the image on float maps are torch's ``reflect`` (the same values, in one copy, not two)."""
    h, w = x.shape[-2:]
    if (mode == "reflect101" and x.is_floating_point() and x.dim() in (3, 4) and max(top, bottom) < h
            and max(left, right) < w):
        return F.pad(x, (left, right, top, bottom), mode="reflect")
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
    return to_device(k / k.sum(), device, torch.float32)


def to_device(t: Tensor, device: torch.device | str, dtype: torch.dtype | None = None) -> Tensor:
    """``t`` (made on the CPU) on ``device``, as ``dtype`` (converted on the CPU first). On CUDA the copy goes
    through page-locked memory, queued on the current stream: a copy from pageable memory makes the host wait
    until the stream's queued work is done (the corruptions' warm-up thread waited up to ~95 ms at each of its
    small tables in a cold CIFAR-10-C grid on an H100, 2026-11-27, while the grid's cells filled the queue). The
    copy is ordered before the work queued after it on the same stream, which is where the corruptions run (the
    warm-up thread runs on the grid's stream)."""
    device = torch.device(device)
    if dtype is not None:
        t = t.to(dtype)
    pinned = _pinned(t) if device.type == "cuda" and t.device.type == "cpu" else None
    if pinned is None:
        return t.to(device)
    return pinned.to(device, non_blocking=True)   # (torch keeps the pinned block until the copy is done)


_NO_PINNED_MEMORY: list[str] = []   # why page-locked memory could not be had, once it could not (not asked again)


def _pinned(t: Tensor) -> Tensor | None:
    """A page-locked copy of ``t``, or None where page-locked memory cannot be had (a container's locked-memory
    limit, a driver without it): the copy is then made from pageable memory, as before, slower but the same."""
    if _NO_PINNED_MEMORY:
        return None
    try:
        return t.pin_memory()
    except RuntimeError as exc:
        _NO_PINNED_MEMORY.append(str(exc))
        return None


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


def on_device(builder, *args, device: torch.device, dtype: torch.dtype) -> Tensor:
    """``builder(*args)`` (a small table computed on the CPU, e.g. a filter matrix) on ``device``.

    Cached per (builder, args, device, dtype): each table crosses once per process, not once per batch, and
    without making the host wait for the device (:func:`to_device`). Its copy is queued on the CUDA stream that
    first asked for it; another stream that asks for it waits for that copy on the device (an event), and the
    table's memory is marked as in use there.
    """
    table, stream, ready = _on_device_cached(builder, args, torch.device(device), dtype)
    if ready is not None:
        current = torch.cuda.current_stream(table.device)
        if current != stream:
            current.wait_event(ready)
            table.record_stream(current)
    return table


@lru_cache(maxsize=512)
def _on_device_cached(builder, args: tuple, device: torch.device, dtype: torch.dtype):
    """(the table, the CUDA stream its copy was queued on and an event after it; None, None off CUDA)."""
    table = to_device(builder(*args), device, dtype)
    if table.device.type != "cuda":
        return table, None, None
    stream = torch.cuda.current_stream(table.device)
    ready = torch.cuda.Event()
    ready.record(stream)
    return table, stream, ready


def conv2d_same(x: Tensor, kernel: Tensor | list, mode: str) -> Tensor:
    """Correlate every channel of ``x`` (..., H, W) with a small 2-D ``kernel`` (odd size, e.g. 3x3),
    same output size, as a weighted sum of shifted views (single-channel ``conv2d`` is slow on CPU).
    Give the kernel as a CPU tensor or nested list: its taps are Python numbers (no device sync)."""
    taps = kernel.detach().cpu().tolist() if isinstance(kernel, Tensor) else [list(r) for r in kernel]
    h, w = x.shape[-2:]
    kh, kw = len(taps), len(taps[0])
    y = pad2d(x, kh // 2, kh // 2, kw // 2, kw // 2, mode)
    out = torch.zeros_like(x)
    for i in range(kh):
        for j in range(kw):
            if taps[i][j] != 0:
                out.add_(y[..., i : i + h, j : j + w], alpha=taps[i][j])
    return out


@lru_cache(maxsize=128)
def _filter_matrix_cpu(n: int, sigma: float, truncate: float, mode: str) -> Tensor:
    """The (n, n) matrix of a 1-D Gaussian filter on an axis of length n, padding rule folded in.

    Row i holds the taps of output pixel i, each added onto the source pixel its padded position
    maps to, so ``M @ column`` is exactly the padded correlation.
    """
    k = gaussian_kernel1d(sigma, truncate, torch.device("cpu")).double()
    r = k.numel() // 2
    src = pad_index(n, r, r, mode, torch.device("cpu"))  # padded position -> source pixel
    m = torch.zeros(n, n, dtype=torch.float64)
    for t in range(k.numel()):  # taps (at most ~50), not pixels
        m.index_put_((torch.arange(n), src[t : t + n]), k[t].expand(n), accumulate=True)
    return m.float()


def gaussian_filter(x: Tensor, sigma: float | tuple[float, float], truncate: float = 4.0, mode: str = "edge") -> Tensor:
    """``scipy.ndimage.gaussian_filter`` over the last two dims (skimage ``gaussian`` defaults).

    Done as two matrix products per image (``My @ x @ Mx^T``): exact for any kernel length and
    border rule, and BLAS/cuBLAS-fast where a 49-tap depthwise convolution is not.
    """
    sy, sx = (sigma, sigma) if not isinstance(sigma, tuple) else sigma
    h, w = x.shape[-2:]
    if sy > 1e-15:  # scipy skips axes with sigma 0
        x = torch.matmul(on_device(_filter_matrix_cpu, h, float(sy), truncate, mode, device=x.device, dtype=x.dtype), x)
    if sx > 1e-15:
        x = torch.matmul(x, on_device(_filter_matrix_cpu, w, float(sx), truncate, mode, device=x.device, dtype=x.dtype).T)
    return x


def conv2d_fft(x: Tensor, kernel: Tensor, mode: str) -> Tensor:
    """:func:`conv2d_same` through the FFT, for large non-separable kernels (defocus disks).

    The image is padded by the border rule first, so the circular FFT convolution never wraps into
    real pixels; results equal the direct correlation up to float rounding (~1e-6).
    """
    h, w = x.shape[-2:]
    kh, kw = kernel.shape
    padded = pad2d(x, kh // 2, kh // 2, kw // 2, kw // 2, mode)
    ph, pw = padded.shape[-2:]
    spec = torch.fft.rfft2(padded, s=(ph, pw))
    # correlation = convolution with the flipped kernel; place it so output (0, 0) is aligned
    kf = torch.zeros(ph, pw, device=x.device, dtype=x.dtype)
    kf[:kh, :kw] = kernel.flip(0, 1)
    out = torch.fft.irfft2(spec * torch.fft.rfft2(kf), s=(ph, pw))
    return out[..., kh - 1 : kh - 1 + h, kw - 1 : kw - 1 + w]


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
    """Source coordinates of the centre-crop-then-``scipy.ndimage.zoom(order=1)`` ("clipped zoom"), float32
    on ``device`` (cached there: do not modify).

    ``variant="imagecorruptions"`` keeps the top-left ``n`` output pixels as imagecorruptions does;
    ``"cifar"`` trims the overflow symmetrically as make_cifar_c.py does; ``"full"`` returns every
    output pixel (snow zooms a noise layer and crops only after blurring it).
    """
    if variant not in ("imagecorruptions", "cifar", "full"):
        raise ValueError(variant)
    return on_device(_zoom_coords_cpu, int(n), float(zoom), variant, device=device, dtype=torch.float32)


def _zoom_coords_cpu(n: int, zoom: float, variant: str) -> Tensor:
    crop = int(math.ceil(n / zoom))
    top = (n - crop) // 2
    out = int(round(crop * zoom))
    step = (crop - 1) / (out - 1) if out > 1 else 0.0
    i = torch.arange(out, dtype=torch.float64)  # tiny: computed on the CPU once, then kept on the device
    if variant == "imagecorruptions":
        i = i[:n]
    elif variant == "cifar":
        trim = (out - n) // 2
        i = i[trim : trim + n]
    return top + i * step


def _motion_weights_cpu(width: int, sigma: float) -> Tensor:
    """The one-sided Gaussian weights of a motion blur's ``width`` taps, normalised to sum 1."""
    t = torch.arange(width, dtype=torch.float64)
    k = torch.exp(-(t**2) / (2 * sigma**2))
    return k / k.sum()


def motion_offsets(radius: int, angle_deg: Tensor) -> tuple[Tensor, Tensor]:
    """ImageMagick MotionBlurImage tap offsets (rows, cols), each (N, width), for per-image angles."""
    width = 2 * int(radius) + 1
    dtype = torch.float32 if angle_deg.device.type == "mps" else torch.float64  # MPS has no float64
    i = torch.arange(width, device=angle_deg.device, dtype=dtype)[None, :]
    a = torch.deg2rad(angle_deg.to(dtype))[:, None]
    # point = (width*sin, width*cos); i*point/hypot(point) == i*(sin, cos)
    drow = torch.ceil(i * torch.sin(a) - 0.5).long()
    dcol = torch.ceil(i * torch.cos(a) - 0.5).long()
    return drow, dcol


def motion_blur(x: Tensor, radius: int, sigma: float, angle_deg: Tensor, stop_at_border: bool) -> Tensor:
    """Per-image directional blur: sum of edge-clamped shifted copies with one-sided Gaussian weights.

    This is what ImageMagick's MotionBlurImage computes and what imagecorruptions re-implements with
    shifts. ``stop_at_border`` reproduces imagecorruptions' early ``break`` once a shift reaches the
    image size (the remaining weights are dropped, not renormalised).

    The taps of each image form a sparse (2*width-1)^2 kernel (one weight per tap offset); the image,
    edge-padded by the largest shift, is correlated with its own kernel through the FFT: one batched
    transform for the whole batch instead of a full-image gather per tap (31 at ImageNet-C's radius 15,
    which made this memory-bound). Equal to the sum of shifted copies up to float rounding (~1e-6).
    """
    n, c, h, w = x.shape
    width = 2 * int(radius) + 1
    if n == 0:
        return x.clone()
    k = on_device(_motion_weights_cpu, width, float(sigma), device=x.device, dtype=x.dtype)
    drow, dcol = motion_offsets(radius, angle_deg)
    weights = k[None, :].expand(n, width)
    if stop_at_border:
        reached = (drow.abs() >= h) | (dcol.abs() >= w)
        weights = weights * (reached.cumsum(1) == 0)
    # a shift reaching past the image clamps to its edge, like edge padding by at least that much
    reach = width - 1
    drow, dcol = drow.clamp(-reach, reach), dcol.clamp(-reach, reach)
    size = 2 * reach + 1
    kernel = torch.zeros((n, size * size), device=x.device, dtype=x.dtype)
    kernel.scatter_add_(1, (drow + reach) * size + (dcol + reach), weights)   # taps at one offset add up
    padded = pad2d(x, reach, reach, reach, reach, "edge")
    ph, pw = padded.shape[-2:]
    fh, fw = _fast_fft_size(ph), _fast_fft_size(pw)
    # correlation = convolution with the flipped kernel, placed so that output (0, 0) lines up
    spec_k = torch.fft.rfft2(kernel.view(n, 1, size, size).flip(-2, -1), s=(fh, fw))
    out = torch.fft.irfft2(torch.fft.rfft2(padded, s=(fh, fw)) * spec_k, s=(fh, fw))
    return out[..., size - 1 : size - 1 + h, size - 1 : size - 1 + w].contiguous()


def _fast_fft_size(n: int) -> int:
    """The smallest m >= n whose prime factors are 2, 3 and 5 (fast FFT lengths on CPU and CUDA)."""
    m = n
    while True:
        r = m
        for p in (2, 3, 5):
            while r % p == 0:
                r //= p
        if r == 1:
            return m
        m += 1


@lru_cache(maxsize=64)
def _pil_nearest_cpu(n_in: int, n_out: int) -> Tensor:
    """Pillow's NEAREST source index per output pixel of one axis (``ImagingScaleAffine``): the coordinate
    starts at scale / 2 and grows by scale per output pixel, summed in double precision (the running sum, not
    (o + 0.5) * scale, decides the rare ties)."""
    scale = n_in / n_out
    src, pos = [], 0.5 * scale
    for _ in range(n_out):
        src.append(min(int(pos), n_in - 1))
        pos += scale
    return torch.tensor(src)


@lru_cache(maxsize=64)
def _pil_box_taps_cpu(n_in: int, n_out: int) -> Tensor:
    """Pillow's BOX coefficients of one axis as it applies them to 8-bit images: (2, K, n_out) int32, row 0 the
    source index of tap k of each output pixel, row 1 its fixed-point weight ``int(0.5 + k * 2**22)``
    (``precompute_coeffs`` + ``normalize_coeffs_8bpc``; 0 for the padding taps of pixels with fewer)."""
    scale = n_in / n_out
    filterscale = max(scale, 1.0)
    support = 0.5 * filterscale
    taps = []
    for o in range(n_out):  # tiny (size of one axis), cached
        center = (o + 0.5) * scale
        lo = max(int(center - support + 0.5), 0)
        hi = min(int(center + support + 0.5), n_in)
        cover = [j for j in range(lo, hi) if -0.5 < (j - center + 0.5) / filterscale <= 0.5]
        taps.append([(j, math.floor(1.0 / len(cover) * 2.0 ** PIL_PRECISION_BITS + 0.5)) for j in cover])
    out = torch.zeros(2, max(len(t) for t in taps), n_out, dtype=torch.int32)
    for o, t in enumerate(taps):
        for i, (j, weight) in enumerate(t):
            out[0, i, o], out[1, i, o] = j, weight
    return out


PIL_PRECISION_BITS = 22   # Pillow's Resample.c for 8-bit images: 32 - 8 - 2 fraction bits per coefficient


def levels8(x: Tensor) -> Tensor:
    """Float [0, 1] images as the 8-bit levels an image file or a PIL image holds, ``round(255 x)`` clamped to
    0..255 (still float, x's dtype), in one new tensor."""
    return torch.mul(x, 255).clamp_(0, 255).round_()


def unit_float(levels: Tensor) -> Tensor:
    """Integer levels 0..255 (any real dtype, any strides) -> float32 ``k / 255``, contiguous, in one op: the
    same bits as ``levels.to(torch.float32).div_(255)`` (which takes two). From float64 the quotient is rounded
    twice, to float64 and then to float32, and for these 256 quotients that equals rounding once (checked
    for every level in tests/test_corruption_speedups.py)."""
    out = torch.empty(levels.shape, device=levels.device, dtype=torch.float32)
    return torch.div(levels, 255, out=out)


def unit_levels_cpu() -> Tensor:
    """(256,) float32: :func:`unit_float` of every level 0..255 (the table kernels look levels up in)."""
    return unit_float(torch.arange(256, dtype=torch.float64))


def _pil_box_pass(x: Tensor, n_out: int, dim: int) -> Tensor:
    """One BOX pass of Pillow's 8-bit resize of int32 levels along ``dim`` (-1: horizontal, -2: vertical):
    ``clip8((2**21 + sum(pixel * kk)) >> 22)`` in int32, as Pillow computes it (the weights of a pixel add up to
    about 2**22, so every sum stays below 255 * 2**22 + 2**21 < 2**31), gathered tap by tap."""
    taps = on_device(_pil_box_taps_cpu, x.shape[dim], n_out, device=x.device, dtype=torch.int32)
    index, weight = taps[0].long(), taps[1]
    shape = (-1, 1) if dim == -2 else (-1,)
    out = torch.full((*x.shape[:dim], n_out, *x.shape[dim:][1:]), 2 ** (PIL_PRECISION_BITS - 1),
                     device=x.device, dtype=torch.int32)
    for k in range(index.shape[0]):
        out += _take(x, index[k], dim) * weight[k].view(shape)
    return out.bitwise_right_shift_(PIL_PRECISION_BITS).clamp_(0, 255)


def _take(x: Tensor, index: Tensor, dim: int) -> Tensor:
    """``x.index_select(dim, index)`` for dim -2 or -1; along the last dim as ``gather`` with the index expanded
    (the same values; index_select along a contiguous last dim is several times slower on the CPU)."""
    if dim == -2:
        return x.index_select(-2, index)
    return torch.gather(x, -1, index.expand(*x.shape[:-1], index.numel()))


def pil_resize(levels: Tensor, size: tuple[int, int], kind: str) -> Tensor:
    """Pillow ``Image.resize`` (BOX or NEAREST) of an 8-bit image, bit for bit: (N, C, H, W) int32 ``levels``
    (0..255) -> the resized levels, int32, on any device.

    BOX: ``ImagingResample``'s two passes, horizontal first (as the Pillow that made the released datasets ran
    them), each rounded to 8 bits in Pillow's fixed point (:func:`_pil_box_pass`). NEAREST copies pixels."""
    h, w = levels.shape[-2:]
    if kind == "nearest":
        rows = on_device(_pil_nearest_cpu, h, size[0], device=levels.device, dtype=torch.long)
        cols = on_device(_pil_nearest_cpu, w, size[1], device=levels.device, dtype=torch.long)
        return _take(_take(levels, rows, -2), cols, -1)
    out = levels
    if w != size[1]:
        out = _pil_box_pass(out, size[1], -1)
    if h != size[0]:
        out = _pil_box_pass(out, size[0], -2)
    return out


def rgb_to_gray_cv(x: Tensor) -> Tensor:
    """OpenCV ``COLOR_RGB2GRAY`` weights on (N, 3, H, W) -> (N, 1, H, W)."""
    return (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])
