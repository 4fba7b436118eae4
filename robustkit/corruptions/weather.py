"""Weather corruptions: snow, frost, fog, spatter.

Every random layer (snow flakes, frost crop, fog fractal, liquid) is drawn for the whole batch at once;
loops run over fractal levels, kernel taps or propagation steps, never over images.
"""

from __future__ import annotations

import math
import warnings
from functools import lru_cache

import torch
import torch.nn.functional as F

from ..errors import RobustkitError
from . import _ops, spatter_triton

Tensor = torch.Tensor

# ------------------------------------------------------------------------------------------ snow


def snow(x: Tensor, p: tuple, g: torch.Generator, preset: str) -> Tensor:
    """Zoomed, thresholded Gaussian flakes smeared by a motion blur at a random angle in
    [-135, -45) degrees, added twice (once rotated by 180 degrees) to a brightened image.

    p = (loc, scale, zoom, threshold, blur radius, blur sigma, blend of the original image).
    """
    loc, scale, zoom, thresh, radius, sigma, keep = p
    n, _, h, w = x.shape
    layer = loc + scale * torch.randn((n, 1, h, w), generator=g, device=x.device, dtype=x.dtype)
    variant = "full" if preset == "imagenet-c" else "cifar"
    r = _ops.zoom_coords(h, zoom, variant, x.device)
    q = _ops.zoom_coords(w, zoom, variant, x.device)
    rows, cols = torch.meshgrid(r, q, indexing="ij")
    layer = _ops.sample_bilinear(layer, rows.expand(n, -1, -1), cols.expand(n, -1, -1))
    layer = torch.where(layer < thresh, 0.0, layer).clamp(0, 1)
    if preset != "imagenet-c":
        layer = torch.floor(layer * 255) / 255  # make_cifar_c.py hands ImageMagick an 8-bit PNG
    angle = torch.rand(n, generator=g, device=x.device) * 90 - 135
    layer = _ops.motion_blur(layer, int(radius), float(sigma), angle, stop_at_border=preset == "imagenet-c")
    layer = (torch.round(layer * 255) / 255)[:, :, :h, :w]  # imagecorruptions crops after blurring
    gray = _ops.rgb_to_gray_cv(x)
    x = keep * x + (1 - keep) * torch.maximum(x, gray * 1.5 + 0.5)
    return x + layer + layer.flip(-1, -2)


# ----------------------------------------------------------------------------------------- frost

# The photographs of Hendrycks' ImageNet-C/CIFAR-10-C makers, as imagecorruptions 1.1.2 ships them, bit for bit
# (source and licence: NOTICE). Both references draw np.random.randint(5), so their sixth photograph
# (frost6.jpg) is never used and not shipped.
FROST_FILES = ("frost1.png", "frost2.png", "frost3.png", "frost4.jpg", "frost5.jpg")


@lru_cache(maxsize=None)
def _frost_textures_cpu() -> tuple[Tensor, ...]:
    """The frost photographs shipped inside robustkit (robustkit/corruptions/frost/), decoded once as RGB
    uint8 (3, H, W)."""
    from importlib.resources import files

    from torchvision.io import ImageReadMode, decode_image

    folder = files("robustkit.corruptions") / "frost"
    raw = []
    for name in FROST_FILES:
        try:
            raw.append((folder / name).read_bytes())
        except OSError:
            raise RobustkitError(f"frost: the texture image {folder / name} is missing from this robustkit "
                                 "installation; reinstall robustkit (pip install --force-reinstall robustkit)") from None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchvision 0.29 flags its image codecs as deprecated
        return tuple(decode_image(torch.frombuffer(bytearray(b), dtype=torch.uint8), mode=ImageReadMode.RGB) for b in raw)


@lru_cache(maxsize=16)
def _frost_bank(device: torch.device, h: int, w: int, preset: str) -> tuple[Tensor, Tensor]:
    """Textures resized for (h, w) images as in the preset's reference, zero-padded into one stack.

    Returns (stack (5, 3, Hmax, Wmax) float in [0, 1] on ``device``, sizes (5, 2) long). Cached per
    device and image size, so a whole evaluation resizes each texture once.
    """
    resized = []
    for tex in _frost_textures_cpu():
        t = _ops.to_device(tex, device, torch.float32)[None] / 255
        fh, fw = tex.shape[-2:]
        if preset == "imagenet-c":
            # imagecorruptions: grow the texture until it covers the image, then 10 % more (bicubic)
            s = 1.0
            if fh < h or fw < w:
                s = max(h / fh if fh < h else 0.0, w / fw if fw < w else 0.0)
            s *= 1.1
            size = (int(math.ceil(fh * s)), int(math.ceil(fw * s)))
            t = F.interpolate(t, size=size, mode="bicubic", align_corners=False).clamp(0, 1)
        else:
            # make_cifar_c.py: cv2.resize(fx=fy=0.2) bilinear for 32 px images; scaled with the image
            f = 0.2 * max(h, w) / 32
            size = (max(int(round(fh * f)), h + 1), max(int(round(fw * f)), w + 1))
            r = ((torch.arange(size[0], device=device) + 0.5) / f - 0.5).clamp(0, fh - 1)
            q = ((torch.arange(size[1], device=device) + 0.5) / f - 0.5).clamp(0, fw - 1)
            rows, cols = torch.meshgrid(r, q, indexing="ij")
            t = _ops.sample_bilinear(t, rows[None], cols[None])
        resized.append(t[0])
    hmax = max(t.shape[-2] for t in resized)
    wmax = max(t.shape[-1] for t in resized)
    stack = torch.stack([F.pad(t, (0, wmax - t.shape[-1], 0, hmax - t.shape[-2])) for t in resized])
    sizes = _ops.to_device(torch.tensor([t.shape[-2:] for t in resized]), device)
    return stack, sizes


def frost(x: Tensor, p: tuple[float, float], g: torch.Generator, preset: str) -> Tensor:
    """``keep * x + weight * crop`` of a random frost texture at a random offset (p = keep, weight)."""
    n, _, h, w = x.shape
    stack, sizes = _frost_bank(x.device, h, w, preset)
    idx = torch.randint(0, len(FROST_FILES), (n,), generator=g, device=x.device)
    span = sizes[idx]
    span[:, 0] -= h  # in place with Python numbers: no host-to-device copy; randint(0, span) -> [0, span)
    span[:, 1] -= w
    start = (torch.rand((n, 2), generator=g, device=x.device) * span).long()
    rows = start[:, 0:1] + torch.arange(h, device=x.device)[None]
    cols = start[:, 1:2] + torch.arange(w, device=x.device)[None]
    crop = stack[idx[:, None, None], :, rows[:, :, None], cols[:, None, :]]  # (N, H, W, 3)
    return p[0] * x + p[1] * crop.permute(0, 3, 1, 2).to(x.dtype)


# ------------------------------------------------------------------------------------------- fog


def plasma_fractal(n: int, size: int, decay: float, g: torch.Generator, device: torch.device) -> Tensor:
    """Diamond-square height maps (n, size, size) in [0, 1], one per image, ``size`` a power of two.

    Same recursion as the reference (from FLHerne/mapgen): each level sets square centres and
    diamond centres to the mean of their neighbours plus uniform noise of amplitude wibble**2.
    """
    a = torch.zeros((n, size, size), device=device, dtype=torch.float32)
    step, wibble = size, 100.0

    def noisy_mean(total: Tensor, out: Tensor) -> None:
        """``out`` (a strided view of the map) = total / 4 + uniform noise in [-wibble**2, wibble**2): two
        kernels (draw, then one fused multiply-add written in place), where a draw, four arithmetic passes and a
        copy into the view were six; same draws from ``g``, equal to float rounding."""
        amp = wibble * wibble
        noise = torch.empty(total.shape, device=device).uniform_(-amp, amp, generator=g)
        torch.add(noise, total, alpha=0.25, out=out)

    while step >= 2:
        half = step // 2
        corners = a[:, 0::step, 0::step]
        sq = corners + corners.roll(-1, dims=1)
        sq = sq + sq.roll(-1, dims=2)
        noisy_mean(sq, a[:, half::step, half::step])
        centres = a[:, half::step, half::step]
        corners = a[:, 0::step, 0::step]
        left = centres + centres.roll(1, dims=1) + corners + corners.roll(-1, dims=2)
        noisy_mean(left, a[:, 0::step, half::step])
        top = centres + centres.roll(1, dims=2) + corners + corners.roll(-1, dims=1)
        noisy_mean(top, a[:, half::step, 0::step])
        step //= 2
        wibble /= decay
    a = a - a.amin(dim=(1, 2), keepdim=True)
    return a / a.amax(dim=(1, 2), keepdim=True)


def fog(x: Tensor, p: tuple[float, float], g: torch.Generator, preset: str) -> Tensor:
    """Add ``strength`` times a plasma fractal, then rescale by ``max / (max + strength)`` per image.

    make_cifar_c.py uses a fixed 32 x 32 map; the next power of two of the image side is the same
    number at 32 px and keeps the rule meaningful at other sizes.
    """
    strength, decay = float(p[0]), float(p[1])
    n, _, h, w = x.shape
    size = 1 << max(0, (max(h, w) - 1).bit_length())
    fractal = plasma_fractal(n, size, decay, g, x.device)[:, None, :h, :w].to(x.dtype)
    peak = x.amax(dim=(1, 2, 3), keepdim=True)
    return (x + strength * fractal) * peak / (peak + strength)


# --------------------------------------------------------------------------------------- spatter

def _rgb(r: float, g: float, b: float) -> Tensor:
    """A (1, 3, 1, 1) colour in [0, 1] from 0..255 values (built on the CPU; see _ops.on_device)."""
    return torch.tensor([r, g, b]).view(1, 3, 1, 1) / 255


_TG22 = int(0.4142135623730950488016887242097 * (1 << 15) + 0.5)


def canny(img: Tensor, low: float, high: float) -> Tensor:
    """OpenCV ``Canny(img, low, high)`` (3x3 Sobel, L1 magnitude) on uint8-valued (N, 1, H, W) floats
    (whole numbers 0..255, as the reference's uint8 image).

    Non-maximum suppression uses OpenCV's integer tan(22.5) sector test and tie rules; hysteresis
    grows strong edges through 8-connected candidates by repeated 3x3 dilation until stable.
    Everything up to the hysteresis is integer arithmetic on int16 (|gradient| <= 4 * 255,
    magnitude <= 2040): exact in any order, in half the bytes of float32.
    """
    fast = spatter_triton.try_canny(img, low, high)  # CUDA: one NMS kernel and in-place hysteresis passes
    if fast is not None:
        return fast
    h, w = img.shape[-2:]
    p = _ops.pad2d(img.to(torch.int16), 1, 1, 1, 1, "edge")
    # The Sobel kernels are separable: [1, 2, 1] across the derivative's axis, then [-1, 0, 1] along it
    across = p[..., 0:h, :] + p[..., 2 : h + 2, :]
    across.add_(p[..., 1 : h + 1, :], alpha=2)
    gx = across[..., 2 : w + 2] - across[..., 0:w]
    across = p[..., 0:w] + p[..., 2 : w + 2]
    across.add_(p[..., 1 : w + 1], alpha=2)
    gy = across[..., 2 : h + 2, :] - across[..., 0:h, :]
    ax, ay = gx.abs(), gy.abs()
    mag = ax + ay
    # The sector test ay * 2**15 < ax * _TG22 (horizontal) / ay * 2**15 > ax * (_TG22 + 2**16) (vertical),
    # divided by 2**15: ax * _TG22 < 2**24, so ax * (_TG22 / 2**15) is exact in float32, and so are the
    # comparisons with the whole numbers ay and ay - 2 * ax.
    tg22 = ax * (_TG22 / (1 << 15))
    horizontal = ay < tg22
    vertical = torch.sub(ay, ax, alpha=2) > tg22
    opposite = (gx ^ gy) < 0  # the gradient's components have opposite signs (sign bits differ)
    m = F.pad(mag, (1, 1, 1, 1))  # zero outside: one padded copy, the 8 neighbours are views of it
    left, right, up, down = m[..., 1 : h + 1, 0:w], m[..., 1 : h + 1, 2:], m[..., 0:h, 1 : w + 1], m[..., 2:, 1 : w + 1]
    up_l, up_r, dn_l, dn_r = m[..., 0:h, 0:w], m[..., 0:h, 2:], m[..., 2:, 0:w], m[..., 2:, 2:]
    diag = torch.where(opposite, (mag > up_r) & (mag > dn_l), (mag > up_l) & (mag > dn_r))
    keep = torch.where(horizontal, (mag > left) & (mag >= right), torch.where(vertical, (mag > up) & (mag >= down), diag))
    cand = keep & (mag > math.floor(low))
    strong = cand & (mag > math.floor(high))
    # Hysteresis on uint8 0/1 maps kept inside zero-bordered buffers (two, swapped each pass): a pass is
    # two row maxima, two column maxima and a minimum with the candidates, with no padding copy.
    cand = cand.to(torch.uint8)
    edges = F.pad(strong.to(torch.uint8), (1, 1, 1, 1))
    grown = torch.zeros_like(edges)
    inner = grown[..., 1 : h + 1, 1 : w + 1]
    for i in range(h * w):
        rows = torch.maximum(edges[..., 0:h, :], edges[..., 1 : h + 1, :])
        torch.maximum(rows, edges[..., 2 : h + 2, :], out=rows)
        torch.maximum(rows[..., 0:w], rows[..., 1 : w + 1], out=inner)
        torch.maximum(inner, rows[..., 2 : w + 2], out=inner)
        torch.minimum(inner, cand, out=inner)
        # The one data-dependent loop of the corruptions (hysteresis grows until nothing changes): its
        # convergence test reads back from the device, so it is asked only every 8th pass.
        if i % 8 == 7 and torch.equal(grown, edges):
            break
        edges, grown = grown, edges
        inner = grown[..., 1 : h + 1, 1 : w + 1]
    return edges[..., 1 : h + 1, 1 : w + 1] > 0


def _min_plus_level(d: Tensor, directions: list[tuple[int, int]], k: int, cost: float) -> None:
    """``d = min(d, d shifted by k*u + k*cost)`` for every direction u at once, in place.

    The shifted maps all come from one copy ``d + k*cost`` made before any update (one add per level,
    not one per direction); so a path cannot take two of these moves at this level, which only ever
    drops paths that are never the cheapest (see :func:`chamfer_distance`). Outside the image the
    shifted map is "far", so only the overlap changes."""
    h, w = d.shape[-2:]
    moved = d + k * cost
    for ur, uc in directions:
        sr, sc = k * ur, k * uc
        if abs(sr) < h and abs(sc) < w:
            dst = d[..., max(-sr, 0) : h + min(-sr, 0), max(-sc, 0) : w + min(-sc, 0)]
            torch.minimum(dst, moved[..., max(sr, 0) : h + min(sr, 0), max(sc, 0) : w + min(sc, 0)], out=dst)


def _min_plus_grid(d: Tensor, groups: list[tuple[int, int]], k: int, cost: float, padded: Tensor) -> None:
    """:func:`_min_plus_level` for directions that form grids, rows +-a*k times columns +-b*k for each (a, b)
    in ``groups`` (the diagonals: (1, 1); the knight moves: (1, 2) and (2, 1)), in place on a float map.

    ``padded``: scratch of d's shape but P columns wider on each side, those columns +inf, P >= every
    column shift b*k. The minimum over a grid's four shifted maps is separable: the minimum of the two
    column shifts (one op: past the edge is the +inf border), then that map shifted by each row shift.
    The same candidates as one minimum per direction (those inside the image), so the same result bit
    for bit (a minimum is exact), in 9 map passes per grid instead of 12."""
    h, w = d.shape[-2:]
    pad = (padded.shape[-1] - w) // 2
    torch.add(d, k * cost, out=padded[..., pad : pad + w])  # the moved map, inside its +inf border
    for a, b in groups:
        s = b * k
        cols = torch.minimum(padded[..., pad - s : pad - s + w], padded[..., pad + s : pad + s + w])
        for sr in (a * k, -a * k):
            if abs(sr) < h:
                dst = d[..., max(-sr, 0) : h + min(-sr, 0), :]
                torch.minimum(dst, cols[..., max(sr, 0) : h + min(sr, 0), :], out=dst)


def chamfer_distance(sources: Tensor, cap: float) -> Tensor:
    """OpenCV ``distanceTransform(DIST_L2, 5)`` (5x5 chamfer: 1, 1.4, 2.1969) to ``sources``, capped.

    The chamfer distance is the cheapest path of mask moves, and min-plus convolutions commute, so
    it is a composition of "k moves along a direction" (k >= 0), each done by doubling (shifts of 1,
    2, 4, ... moves). Only distances up to ``cap`` are needed (spatter truncates at 20), which bounds
    k; below the cap the result is the exact chamfer distance, summed in float32 in a fixed order:
    axial moves, then diagonal ones by doubling level, then knight moves by doubling level.

    A cheapest path takes at most one direction of each kind of move (axial, diagonal, knight): two
    axial moves along different directions are beaten by a diagonal one by at least 0.6, two diagonal
    ones by axial ones by at least 0.8, two knight ones by at least 0.19. So each doubling level moves
    along all directions of its kind at once, from one copy d + k * cost (:func:`_min_plus_level` for
    the axial ones, one minimum per direction; the diagonal and knight directions form grids, whose
    minimum is separable: :func:`_min_plus_grid`, 9 map passes per grid of four where one minimum per
    direction takes 12); the float32
    sums of the cheapest paths, and so the results, are those of moving along one direction after
    another, as tests/test_corruption_speedups.py checks bit for bit on every displacement below the
    cap. Axial moves cost whole numbers, summed exactly: in uint8 when the sums fit (a quarter of the
    bytes).
    """
    fast = spatter_triton.try_distance(sources, cap)  # CUDA: three window-minimum kernels, the same bits
    if fast is not None:
        return fast
    big = cap + 10.0
    axial = [(-1, 0), (0, -1), (0, 1), (1, 0)]
    small = int(big) + 2 ** max(0, int(cap).bit_length() - 1) <= torch.iinfo(torch.uint8).max
    # int(big): a far value only has to stay >= cap, where every distance ends as cap
    d = torch.full(sources.shape, int(big) if small else big, dtype=torch.uint8 if small else torch.float32,
                   device=sources.device).masked_fill_(sources, 0)
    padded = None
    for kind, cost in ((None, 1), ([(1, 1)], 1.4), ([(1, 2), (2, 1)], 2.1969)):
        levels = [2**i for i in range(int(cap // cost).bit_length())]  # more moves than cap // cost exceed the cap
        if kind is None:  # axial
            for k in levels:
                _min_plus_level(d, axial, k, cost)
            d = d.to(torch.float32)
            continue
        if padded is None:  # the diagonal and knight moves' scratch: +inf past the widest column shift
            pad = 2 * levels[-1] if levels else 0  # the knight moves' levels are among the diagonal ones
            padded = torch.empty(*d.shape[:-1], d.shape[-1] + 2 * pad, dtype=d.dtype, device=d.device)
            padded[..., :pad].fill_(math.inf)
            padded[..., padded.shape[-1] - pad :].fill_(math.inf)
        for k in levels:
            _min_plus_grid(d, kind, k, cost, padded)
    return d.clamp(max=cap)


def _box3(t: Tensor) -> Tensor:
    """OpenCV ``blur(t, (3, 3))`` with reflect-101 borders, on any float map: the nine taps summed one
    after another in row order (as ``_ops.conv2d_same`` sums them, so rounding and all), divided once."""
    h, w = t.shape[-2:]
    p = _ops.pad2d(t, 1, 1, 1, 1, "reflect101")   # one copy
    taps = [p[..., i : i + h, j : j + w] for i in range(3) for j in range(3)]
    # 0 + a == a for any a but -0.0, which a distance map never holds: start from the first two taps
    out = taps[0] + taps[1]
    for tap in taps[2:]:
        out.add_(tap)
    return out / 9


def _box3_whole(t: Tensor) -> Tensor:
    """:func:`_box3` of a map of whole numbers (sums below 2**24, no -0.0): exact in any order, so
    separable, a row sum then a column sum (4 adds, not 9)."""
    h, w = t.shape[-2:]
    p = _ops.pad2d(t, 1, 1, 1, 1, "reflect101")   # one copy
    rows = p[..., 0:w] + p[..., 1 : w + 1]
    rows.add_(p[..., 2 : w + 2])
    out = rows[..., 0:h, :] + rows[..., 1 : h + 1, :]
    return out.add_(rows[..., 2 : h + 2, :]) / 9


def _emboss(t: Tensor) -> Tensor:
    """The reference's emboss filter [[-2, -1, 0], [-1, 1, 1], [0, 1, 2]] (reflect-101 borders) on a map
    of whole numbers without -0.0: every partial sum is a whole number below 2**24, so exact in any order
    (and the reference's round is the identity); the zero taps are skipped."""
    h, w = t.shape[-2:]
    p = _ops.pad2d(t, 1, 1, 1, 1, "reflect101")   # one copy

    def tap(i: int, j: int) -> Tensor:
        return p[..., i : i + h, j : j + w]

    out = tap(1, 1) + tap(1, 2)
    out.add_(tap(2, 1)).add_(tap(2, 2), alpha=2).sub_(tap(0, 1)).sub_(tap(1, 0)).add_(tap(0, 0), alpha=-2)
    return out


def equalize_hist(img: Tensor) -> Tensor:
    """OpenCV ``equalizeHist`` per image on uint8-valued (N, 1, H, W) floats."""
    n = img.shape[0]
    # one flat bin per (image, value), image i's 256 bins from 256 * i: int32 indices, which index_add_ and
    # index_select take (scatter_add_ and gather want int64: twice the bytes)
    v = img.reshape(n, -1).to(torch.int32)
    v += torch.arange(0, 256 * n, 256, device=img.device, dtype=torch.int32)[:, None]
    total = v.shape[1]
    one = torch.ones(1, device=img.device, dtype=torch.long).expand(v.numel())  # not materialised
    hist = torch.zeros(n * 256, device=img.device, dtype=torch.long).index_add_(0, v.view(-1), one).view(n, 256)
    return equalize_lut(hist, total).view(-1).index_select(0, v.view(-1)).view(img.shape)


def equalize_lut(hist: Tensor, total: int) -> Tensor:
    """OpenCV ``equalizeHist``'s table: (N, 256) float32 new value of each 8-bit value, from the (N, 256) histogram
    of images of ``total`` pixels each."""
    hist = hist.long()
    first = (hist > 0).long().argmax(dim=1, keepdim=True)
    first_count = hist.gather(1, first)
    scale = 255.0 / (total - first_count).clamp(min=1).float()
    lut = torch.round((hist.cumsum(1) - first_count).float() * scale).clamp(0, 255)
    bins = torch.arange(256, device=hist.device)[None]
    lut = torch.where(bins <= first, 0.0, lut)
    return torch.where(first_count == total, bins.float(), lut)  # constant image stays as it is


def water_mask(liquid: Tensor) -> Tensor:
    """The reference's OpenCV pipeline from a thresholded liquid layer to the water-drop mask
    (un-normalised): Canny edges, distance to them capped at 20, blur, histogram equalisation,
    an emboss kernel, blur, times the 8-bit liquid layer. Inputs/outputs are (N, 1, H, W)."""
    liquid8 = torch.floor(liquid.clamp(0, 1) * 255)  # the reference's uint8 cast would wrap above 1
    dist = chamfer_distance(canny(liquid8, 50, 150), 20.0)
    fast = spatter_triton.try_water_mask(dist, liquid8)  # CUDA: the rest in two kernels (+ the table in torch)
    if fast is not None:
        return fast
    dist = torch.floor(_box3(dist))
    dist = equalize_hist(dist)  # whole numbers 0..255 from here on
    dist = _emboss(dist).clamp(0, 255)
    dist = torch.round(_box3_whole(dist))
    return liquid8 * dist


def spatter(x: Tensor, p: tuple, g: torch.Generator, preset: str) -> Tensor:
    """Water drops (pale turquoise, mode 0) or mud (brown, mode 1) from a blurred liquid layer.

    p = (loc, scale, sigma, threshold, intensity (water) or mask sigma (mud), mode).
    """
    loc, scale, sigma, thresh, strength, mode = p
    n, _, h, w = x.shape
    liquid = loc + scale * torch.randn((n, 1, h, w), generator=g, device=x.device, dtype=x.dtype)
    return spatter_from_liquid(x, liquid, p)


def spatter_from_liquid(x: Tensor, liquid: Tensor, p: tuple) -> Tensor:
    """The deterministic rest of :func:`spatter` for a given raw liquid layer (tests inject one)."""
    loc, scale, sigma, thresh, strength, mode = p
    liquid = _ops.gaussian_filter(liquid, float(sigma))
    liquid = torch.where(liquid < thresh, 0.0, liquid)
    if mode == 0:
        m = water_mask(liquid)
        # no drop left: the reference divides 0 by 0 and returns a black image; we leave it clean
        peak = m.amax(dim=(2, 3), keepdim=True)
        fast = spatter_triton.try_blend(x, m, peak, float(strength), _rgb(175.0, 238.0, 238.0))  # CUDA: one kernel
        if fast is not None:
            return fast
        color = _ops.on_device(_rgb, 175.0, 238.0, 238.0, device=x.device, dtype=x.dtype)
        m = torch.where(peak > 0, m / peak.clamp(min=1e-12), 0.0) * strength
        return x + m * color
    m = _ops.gaussian_filter((liquid > thresh).to(x.dtype), float(strength))
    m = torch.where(m < 0.8, 0.0, m)
    color = _ops.on_device(_rgb, 63.0, 42.0, 20.0, device=x.device, dtype=x.dtype)
    return x * (1 - m) + color * m
