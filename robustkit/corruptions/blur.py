"""Blur corruptions: Gaussian, glass, defocus, motion, zoom.

Gaussian, defocus and zoom blur are deterministic and follow the reference's border rules exactly
(pixel-close to imagecorruptions). Motion blur draws one angle per image and applies that image's
directional kernel through one batched FFT (see ``_ops.motion_blur``). Glass blur reproduces the
reference's sequential in-place pixel loop (a Python loop over every pixel, which is what makes
imagecorruptions slow) exactly, given the same offsets, by resolving its copy chains in parallel (on CUDA
in a Triton kernel, :mod:`robustkit.corruptions.glass_triton`); see
:func:`glass_blur`.
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch

from ..errors import RobustkitError
from . import _ops, glass_triton

Tensor = torch.Tensor


def gaussian_blur(x: Tensor, sigma: float, g: torch.Generator, preset: str) -> Tensor:
    """skimage ``gaussian(sigma, mode='nearest', truncate=4)`` per channel."""
    return _ops.gaussian_filter(x, float(sigma))


def _scan_shape(h: int, w: int, delta: int) -> tuple[int, int]:
    """How many rows and columns the reference's shuffle loop visits (R, C):
    ``for h in range(H - delta, delta, -1): for w in range(W - delta, delta, -1)``."""
    return len(range(h - delta, delta, -1)), len(range(w - delta, delta, -1))


def glass_offsets(
    n: int, h: int, w: int, delta: int, iterations: int, g: torch.Generator, device: torch.device
) -> Tensor:
    """The random offsets glass blur uses: int8 ``(n, iterations, R, C, 2)``, uniform in ``[-delta, delta)``.

    ``[i, k, r, c]`` is the (row, column) offset drawn for image i, pass k, at the r-th row and c-th
    column of the scan (row ``h - delta - r``, column ``w - delta - c``). Drawn from ``g`` one pass at
    a time, each pass for the whole batch at once (every image gets its own offsets); int8 keeps a
    224 px batch's offsets small.
    """
    shape = (n, *_scan_shape(h, w, delta), 2)
    return torch.stack(
        [torch.randint(-delta, delta, shape, generator=g, device=device, dtype=torch.int8) for _ in range(iterations)],
        1,
    )


def _index_dtype(count: int) -> torch.dtype:
    """int32 for indices into ``count`` elements when they fit (index_select takes int32 indices, gather
    only int64: half the bytes per jump), else int64."""
    return torch.int32 if count <= torch.iinfo(torch.int32).max else torch.int64


def _first_check(nodes: int, delta: int) -> int:
    """How many jumps to make before the first convergence check (a host sync) in :func:`_copy_sources`.

    A pixel follows a link when its source comes before it in the scan, with probability
    q = P(row offset > 0) + P(row offset = 0) P(column offset > 0) = (delta-1)/(2 delta) (1 + 1/(2 delta)),
    each link independent of the last, so about ``nodes * q**L`` chains have L links or more and the
    longest has about ln(nodes) / ln(1/q). j jumps follow 2**j - 1 links: checking before 2**j exceeds
    that length would almost surely fail, for one read of every node and one sync. Never before the
    3rd jump (chains of 8 links are common in any batch). Only when it checks depends on this, not the
    result: the loop checks after every later jump until every chain has ended.
    """
    q = (delta - 1) / (2 * delta) * (1 + 1 / (2 * delta))
    longest = math.log(max(nodes, 2)) / -math.log(q)
    return max(3, math.floor(math.log2(max(longest, 1.0))) + 1)


def _copy_sources(offsets: Tensor, h: int, w: int, delta: int) -> Tensor:
    """For independent passes of the reference's loop (``offsets`` ``(..., R, C, 2)`` in scan order, one
    pass per plane of the leading dims, P planes in all), the flat pixel (``j * h * w + row * w + col``
    for plane j) of the planes' input that each output pixel holds: ``(P * h * w,)``, int32 (int64 past
    2**31 - 1 nodes: index_select takes both).

    The reference's line ``x[h, w], x[h', w'] = x[h', w'], x[h, w]`` runs on numpy views, so it copies
    the current ``x[h', w']`` into ``x[h, w]`` and leaves ``x[h', w']`` alone. Scanning in place, the
    current value of the source s(p) is its input value unless s(p) was itself visited earlier in the
    scan, in which case it is what s(p) copied at its own visit (later writes never reach p's copy:
    each pixel is written once, at its visit). Those "copied from" links strictly go back in scan
    order, so the chains end; they are resolved in parallel by pointer jumping on a graph whose
    nodes ``0..T-1`` (T = P*h*w) stand for "value before the pass" (fixed points) and ``T..2T-1`` for
    "value after the pass".
    """
    rows, cols = offsets.shape[-3:-1]
    lead = offsets.shape[:-3]
    total, device = math.prod(lead) * h * w, offsets.device
    dtype = _index_dtype(2 * total)
    nodes = torch.empty(2 * total, dtype=dtype, device=device)
    torch.arange(total, out=nodes[:total])  # fixed points: node t is input pixel t
    torch.arange(total, out=nodes[total:])  # every pixel starts as "my own input": pixels never visited stay so
    # The scan visits rows h-delta..delta+1 and columns w-delta..delta+1, both descending: flipped (on
    # the int8 offsets, the smallest copy), they line up with one rectangle of the planes, updated through
    # a slice; the leading dims stay as they are (no copy to make them contiguous).
    offsets = offsets.flip(-3, -2)
    scanned = nodes[total:].view(*lead, h, w)[..., delta + 1 : delta + 1 + rows, delta + 1 : delta + 1 + cols]
    # += the step from a pixel to its source in the flat plane, added from the int8 offsets (no int32 copy)
    scanned.add_(offsets[..., 0], alpha=w).add_(offsets[..., 1])
    if delta == 1:  # offsets are -1 or 0: no source is visited before its pixel, so there are no chains
        return nodes[total:]
    # Follow the link when the source comes before the pixel in the scan (which runs downwards: a larger
    # row, or the same row and a larger column): to the source's "after" node, T above its "before" node.
    # The row offset times 2*delta plus the column offset (|column offset| <= delta) is positive exactly
    # then; in int8 up to delta 7. If the source lies outside the scanned rectangle, its node is a pixel
    # never visited, which resolves to its input value, as it should.
    narrow = offsets if 2 * delta * delta + delta <= torch.iinfo(torch.int8).max else offsets.to(torch.int32)
    scanned.add_(torch.add(narrow[..., 1], narrow[..., 0], alpha=2 * delta) > 0, alpha=total)
    # Jump only the "after" half: the fixed points never change, so the spare buffer gets them once and
    # each jump reads and writes T nodes, not 2T (written by arange, not copied: nothing is read).
    spare = torch.empty_like(nodes)
    torch.arange(total, out=spare[:total])
    # A chain has at most R*C links, and each jump doubles the links followed; but a link goes back
    # with probability < 1/2, so chains are short (about 15 links at most in a batch of 224 px
    # images) and the jumping stops once every pixel points at an input value.
    first_check = _first_check(total, delta)
    for k in range(1, math.ceil(math.log2(rows * cols + 1)) + 1):  # over doublings only
        torch.index_select(nodes, 0, nodes[total:], out=spare[total:])
        nodes, spare = spare, nodes
        # max, not (>= T).all(): one read of the nodes and no boolean copy of them; one host sync per check
        if k >= first_check and nodes[total:].max().item() < total:
            break
    return nodes[total:]


def _moves_pixels(x: Tensor, offsets: Tensor, delta: int) -> bool:
    """Whether glass blur's shuffle of ``x`` with ``offsets`` moves any pixel (images, passes and a scanned
    rectangle); a one-line error when the offsets do not fit the images."""
    n, ch, h, w = x.shape
    rows, cols = _scan_shape(h, w, delta)
    expected = (n, offsets.shape[1] if offsets.dim() == 5 else -1, rows, cols, 2)
    if tuple(offsets.shape) != expected:
        raise RobustkitError(
            f"glass blur offsets of shape {tuple(offsets.shape)} do not fit {n} images of {h}x{w} px with "
            f"delta {delta}; expected (N, passes, R, C, 2) = {expected}, as glass_offsets returns"
        )
    return min(rows, cols, offsets.shape[1], n) > 0


def glass_shuffle(x: Tensor, offsets: Tensor, delta: int) -> Tensor:
    """Glass blur's local shuffle with given offsets (see :func:`glass_offsets`), one pass per
    ``offsets[:, k]``, each on the result of the previous one, as the reference's in-place loop does."""
    if not _moves_pixels(x, offsets, delta):
        return x.clone()
    n, ch, h, w = x.shape
    passes = offsets.shape[1]
    fast = glass_triton.try_shuffle(x, offsets, delta)  # CUDA: each pixel walks its chain, no host sync
    if fast is not None:
        return fast
    # Which input pixel a pass copies where depends on its offsets only, not on the image: the passes of
    # all images are resolved at once (one set of jumps and convergence checks), pass-major (plane
    # k*n + i is image i's pass k), then chained.
    sources = _copy_sources(offsets.transpose(0, 1), h, w, delta)
    hw = h * w
    block = n * hw
    src = sources[:block]  # pass 0: i*hw + s, pixel s of image i
    for k in range(1, passes):  # loops over passes, never over pixels or images
        # pass k names pixel s of image i as k*block + i*hw + s: pass k-1's output pixel i*hw + s
        src = src.index_select(0, sources[k * block : (k + 1) * block] - k * block)
    # back to a pixel of each image's own plane, as int64 for gather (one subtract that widens)
    first = torch.arange(0, block, hw, device=x.device, dtype=src.dtype)
    index = torch.sub(src.view(n, hw), first[:, None], out=torch.empty((n, hw), dtype=torch.int64, device=x.device))
    flat = x.reshape(n, ch, hw)
    return flat.gather(2, index[:, None, :].expand(n, ch, -1)).reshape(n, ch, h, w)


def glass_blur(
    x: Tensor, p: tuple[float, int, int], g: torch.Generator, preset: str, offsets: Tensor | None = None
) -> Tensor:
    """Blur, shuffle pixels locally ``iterations`` times, blur again (p = sigma, delta, iterations).

    As in Hendrycks' makers (and so in the released CIFAR-10-C / ImageNet-C): the first blur is
    quantised to 8 bits (``np.uint8`` truncation), and each pass visits the interior pixels from the
    bottom-right corner and *copies* a neighbour at offset U{-delta..delta-1}^2 into the pixel, in
    place (the reference's tuple "swap" on numpy views is a copy; see :func:`_copy_sources`). The
    make_cifar_c.py loop hard-codes 32 px; here both presets use the image's own size. ``offsets``
    (from :func:`glass_offsets`) replaces the random draws, for tests; by default they come from ``g``.
    """
    sigma, delta, iterations = float(p[0]), int(p[1]), int(p[2])
    if offsets is None:
        n, _, h, w = x.shape
        offsets = glass_offsets(n, h, w, delta, iterations, g, x.device)
    # The first blur as the makers' np.uint8 holds it, truncated (a floor: the values are in 0..255): one byte
    # per value to shuffle, then k / 255 for the second blur, the same values as floor(...) / 255 in float32
    first = _ops.gaussian_filter(x, sigma)
    shuffled = None
    if _moves_pixels(first, offsets, delta):   # CUDA: the levels are taken in the shuffle kernel
        shuffled = glass_triton.try_shuffle(first, offsets, delta, levels=True)
    if shuffled is None:
        levels = first.clamp(0, 1).mul_(255).to(torch.uint8)
        shuffled = _ops.unit_float(glass_shuffle(levels, offsets, delta))
    return _ops.gaussian_filter(shuffled, sigma)


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

    Every image shares the sampling grid of a factor: it is built once per (size, factor) and kept on the
    device (no host-to-device copy per batch), broadcast over the batch (not materialised per image), and
    the zooms are summed in place, in the reference's order (x, then each factor in turn): the first sum
    is the output's first write (no copy of x to start from) and the mean is taken in place."""
    import torch.nn.functional as F

    n, _, h, w = x.shape
    variant = "imagecorruptions" if preset == "imagenet-c" else "cifar"
    out = None
    for z in zooms:
        if math.isclose(z, 1.0):
            term = x
        else:
            grid = _ops.on_device(_zoom_grid_cpu, h, w, float(z), variant, device=x.device, dtype=x.dtype)
            term = F.grid_sample(x, grid.expand(n, h, w, 2), mode="bilinear", padding_mode="border", align_corners=True)
        if out is None:
            out = torch.add(x, term)
        else:
            out.add_(term)
        del term  # this zoom is freed before the next one is sampled (one temporary at a time)
    if out is None:
        out = x.clone()
    return out.div_(len(zooms) + 1)


def _zoom_grid_cpu(h: int, w: int, zoom: float, variant: str) -> Tensor:
    """``grid_sample``'s (1, H, W, 2) grid (align_corners, x then y in [-1, 1]) of one centre zoom."""
    r = _ops.zoom_coords(h, zoom, variant, torch.device("cpu"))
    q = _ops.zoom_coords(w, zoom, variant, torch.device("cpu"))  # make_cifar_c.py only knows square images
    gx = (q * (2.0 / max(w - 1, 1)) - 1.0)[None, :].expand(h, w)
    gy = (r * (2.0 / max(h - 1, 1)) - 1.0)[:, None].expand(h, w)
    return torch.stack((gx, gy), dim=-1)[None]
