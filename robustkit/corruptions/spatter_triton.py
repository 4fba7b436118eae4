"""spatter's water-drop edges and distances as Triton kernels, for CUDA: the Canny edges
(:func:`robustkit.corruptions.weather.canny`) and the capped chamfer distance to them
(:func:`robustkit.corruptions.weather.chamfer_distance`), together ~45 of the ~69 MB that spatter's torch ops move
per 224 px image.

**Canny.** One kernel per tile computes the 3x3 Sobel gradients (edge pixels repeated), the L1 magnitude at each
pixel and its 8 neighbours (zero outside the image), OpenCV's integer tan(22.5) sector test and non-maximum
suppression, and the thresholds, in int32 as the torch path does in int16 (every value is a small whole number:
exact either way), writing one byte per pixel: 0, 1 (candidate) or 2 (edge). Hysteresis then grows the edges
through 8-connected candidates, one kernel per pass, in place: a pass may already see what other tiles grew in
it, which only speeds the growth, and the growth ends in the same set (the candidates connected to a strong
pixel) in any order. As in the torch path the host asks whether it has ended every 8th pass (one sync): each pass
records whether it changed anything.

**Chamfer distance.** The torch path composes min-plus shifts by doubling level (axial moves, then diagonal, then
knight), each level a few full passes over the map: ~29 MB per 224 px image, the largest share of spatter's
traffic. The cheapest path to a source takes at most one direction of each kind (see ``chamfer_distance``), so
the same distances are three window minimums, one kernel each, every map read once and written once (~17 bytes per
pixel in all):

* axial: ``min(own, min over the 4 axial directions u and k = 1..K of source(p + k u) + k)``, with source 0 on a
  source and ``cap + 10`` elsewhere (whole numbers: exact);
* diagonal, then knight: the same over the previous map with the 4 diagonal / 8 knight directions, where the
  cost of k moves is added level by level, ``+ c(1)`` if k has bit 0, then ``+ c(2)`` for bit 1, ... with
  ``c(l) = float32(l * cost)``: the float32 sums the torch path forms for that path, in its order;
* the last kernel also caps at ``cap``.

K per kind is ``cap // cost``: more moves cost more than the cap (the torch path's extra doubling levels only
give distances that end as ``cap``). Taps past the border are skipped, as the torch path's shifts skip them.

Both equal the torch path bit for bit (tests/test_spatter_triton.py in Triton's interpreter; tests/test_gpu.py on
CUDA). Used for CUDA tensors when Triton is installed; a failure to compile gives one warning and the torch path
from then on.
"""

from __future__ import annotations

import torch

from . import _triton
from ._triton import Kernels, tl, triton

Tensor = torch.Tensor

KERNELS = Kernels("spatter")
WARPS = 4                  # per program (Triton's default; bench/bench_corruptions.py times others)
BLOCK_H, BLOCK_W = 8, 32   # output pixels per program (H100: 8x32 51,000 images/s, 16x32 42,000; RESULTS.md)
COSTS = (1.0, 1.4, 2.1969)  # axial, diagonal, knight: OpenCV's DIST_L2 5x5 mask (as weather.chamfer_distance)
MAX_K = 31                 # the kernels unroll up to 5 doubling levels (k < 32): caps up to 31
# The distance kernels' taps: unrolled (K of them per direction, K = 20, 14 and 9 at spatter's cap of 20), or in a
# loop over k at run time (the same values: each level's cost added where k has its bit). Unrolled, the three
# kernels took 5.4 s to compile for an H100 on a 2-core CPU, 0.5 s as loops (bench/kernel_compile_times.py): a
# machine's first spatter call compiles them (12.5 s for all of spatter's kernels on the H100 machine, 2026-11-27).
# Which one runs faster is measured on the GPU (bench_corruptions' "taps in a loop" row); until then the unrolled
# taps ship.
UNROLL_TAPS = True


def _serves(first: Tensor, *others: Tensor, dtype: torch.dtype = torch.float32) -> bool:
    """Whether the kernels serve a call on (N, C, H, W) ``first`` in the product: Triton there and not failed,
    ``first`` on CUDA and not empty, it and ``others`` of ``dtype`` (each try_* function adds its own limits)."""
    return (KERNELS.ready() and _triton.on_gpu(first) and first.dim() == 4 and first.numel() > 0
            and all(t.dtype == dtype for t in (first, *others)))


if triton is not None:

    @triton.jit
    def _tile(H, W, BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr):
        """This program's tile of a (N, 1, H, W) map (grid: images, row tiles, column tiles): the image n, the
        rows r (BLOCK_H, 1) and columns c (1, BLOCK_W), which of them lie inside the image, and the image's first
        element (int64)."""
        n = tl.program_id(0)
        r = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)[:, None]
        c = tl.program_id(2) * BLOCK_W + tl.arange(0, BLOCK_W)[None, :]
        return n, r, c, (r < H) & (c < W), n.to(tl.int64) * H * W

    @triton.jit
    def _tap(d, ptr, r, c, sr, sc, k, H, W, far, c1, c2, c4, c8, c16, SOURCES: tl.constexpr):
        """``min(d, value at (r + sr, c + sc) + the cost of k moves added level by level)``; nothing past the
        border. ``SOURCES``: the map holds 0/1 sources (value 0 on a source, ``far`` elsewhere). ``sr``, ``sc`` and
        ``k`` are constants where the taps are unrolled (Triton builds this tap for those values: the levels' ``if``
        are decided then) and values at run time in the loop (each level's cost added where its bit is set)."""
        rr = r + sr
        cc = c + sc
        ok = (rr >= 0) & (rr < H) & (cc >= 0) & (cc < W)
        v = tl.load(ptr + rr * W + cc, mask=ok, other=0)
        if SOURCES:
            v = tl.where(v != 0, 0.0, far)
        v = tl.where(ok, v, float("inf"))
        if k & 1:
            v = v + c1
        if k & 2:
            v = v + c2
        if k & 4:
            v = v + c4
        if k & 8:
            v = v + c8
        if k & 16:
            v = v + c16
        return tl.minimum(d, v)

    @triton.jit
    def _taps(d, src, r, c, k, H, W, far, c1, c2, c4, c8, c16, STAGE: tl.constexpr):
        """``d`` after the taps of k moves of one kind (STAGE 0: the 4 axial, from the 0/1 sources; 1: the 4
        diagonal; 2: the 8 knight's)."""
        if STAGE == 0:
            d = _tap(d, src, r, c, -k, 0, k, H, W, far, c1, c2, c4, c8, c16, True)
            d = _tap(d, src, r, c, k, 0, k, H, W, far, c1, c2, c4, c8, c16, True)
            d = _tap(d, src, r, c, 0, -k, k, H, W, far, c1, c2, c4, c8, c16, True)
            d = _tap(d, src, r, c, 0, k, k, H, W, far, c1, c2, c4, c8, c16, True)
        elif STAGE == 1:
            d = _tap(d, src, r, c, -k, -k, k, H, W, far, c1, c2, c4, c8, c16, False)
            d = _tap(d, src, r, c, -k, k, k, H, W, far, c1, c2, c4, c8, c16, False)
            d = _tap(d, src, r, c, k, -k, k, H, W, far, c1, c2, c4, c8, c16, False)
            d = _tap(d, src, r, c, k, k, k, H, W, far, c1, c2, c4, c8, c16, False)
        else:
            d = _tap(d, src, r, c, -k, -2 * k, k, H, W, far, c1, c2, c4, c8, c16, False)
            d = _tap(d, src, r, c, -k, 2 * k, k, H, W, far, c1, c2, c4, c8, c16, False)
            d = _tap(d, src, r, c, k, -2 * k, k, H, W, far, c1, c2, c4, c8, c16, False)
            d = _tap(d, src, r, c, k, 2 * k, k, H, W, far, c1, c2, c4, c8, c16, False)
            d = _tap(d, src, r, c, -2 * k, -k, k, H, W, far, c1, c2, c4, c8, c16, False)
            d = _tap(d, src, r, c, -2 * k, k, k, H, W, far, c1, c2, c4, c8, c16, False)
            d = _tap(d, src, r, c, 2 * k, -k, k, H, W, far, c1, c2, c4, c8, c16, False)
            d = _tap(d, src, r, c, 2 * k, k, k, H, W, far, c1, c2, c4, c8, c16, False)
        return d

    @triton.jit(do_not_specialize=["H", "W", "cap", "far", "k_last"])
    def _stage_kernel(src_ptr, out_ptr, cost_ptr, H, W, cap, far, k_last, K: tl.constexpr, STAGE: tl.constexpr,
                      LOOP: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr):
        """One kind of move (STAGE 0: axial, from the 0/1 sources; 1: diagonal; 2: knight, then the cap) for a
        BLOCK_H x BLOCK_W tile of image ``n``. ``cost_ptr``: float32 ``c(1), c(2), c(4), c(8), c(16)`` of the kind.
        The taps of k = 1..K moves unrolled (a build per K), or with LOOP in a loop over k = 1..``k_last`` at run
        time (one build per kind of move, K unused: :data:`UNROLL_TAPS` off)."""
        n, r, c, inside, image = _tile(H, W, BLOCK_H, BLOCK_W)
        src = src_ptr + image
        c1 = tl.load(cost_ptr)
        c2 = tl.load(cost_ptr + 1)
        c4 = tl.load(cost_ptr + 2)
        c8 = tl.load(cost_ptr + 3)
        c16 = tl.load(cost_ptr + 4)
        own = tl.load(src + r * W + c, mask=inside, other=0)
        if STAGE == 0:
            d = tl.where(own != 0, 0.0, far)
        else:
            d = own
        if LOOP:
            for k in range(1, k_last + 1):
                d = _taps(d, src, r, c, k, H, W, far, c1, c2, c4, c8, c16, STAGE)
        else:
            for k in tl.static_range(1, K + 1):
                d = _taps(d, src, r, c, k, H, W, far, c1, c2, c4, c8, c16, STAGE)
        if STAGE == 2:
            d = tl.minimum(d, cap)
        tl.store(out_ptr + image + r * W + c, d, mask=inside)

    @triton.jit
    def _sobel(src, r, c, H, W):
        """The 3x3 Sobel gradients (gx, gy) at (r, c), int32, the image's edge pixels repeated past its border."""
        r0 = tl.minimum(tl.maximum(r - 1, 0), H - 1) * W
        r1 = tl.minimum(tl.maximum(r, 0), H - 1) * W
        r2 = tl.minimum(tl.maximum(r + 1, 0), H - 1) * W
        c0 = tl.minimum(tl.maximum(c - 1, 0), W - 1)
        c1 = tl.minimum(tl.maximum(c, 0), W - 1)
        c2 = tl.minimum(tl.maximum(c + 1, 0), W - 1)
        a = tl.load(src + r0 + c0).to(tl.int32)
        b = tl.load(src + r0 + c1).to(tl.int32)
        e = tl.load(src + r0 + c2).to(tl.int32)
        f = tl.load(src + r1 + c0).to(tl.int32)
        g = tl.load(src + r1 + c2).to(tl.int32)
        h = tl.load(src + r2 + c0).to(tl.int32)
        i = tl.load(src + r2 + c1).to(tl.int32)
        j = tl.load(src + r2 + c2).to(tl.int32)
        gx = (e + 2 * g + j) - (a + 2 * f + h)
        gy = (h + 2 * i + j) - (a + 2 * b + e)
        return gx, gy

    @triton.jit
    def _magnitude(src, r, c, H, W):
        """|gx| + |gy| at (r, c); 0 outside the image (the torch path's zero-padded magnitude map)."""
        gx, gy = _sobel(src, r, c, H, W)
        m = tl.abs(gx) + tl.abs(gy)
        return tl.where((r >= 0) & (r < H) & (c >= 0) & (c < W), m, 0)

    @triton.jit(do_not_specialize=["H", "W", "LOW", "HIGH"])
    def _canny_kernel(img_ptr, state_ptr, H, W, LOW, HIGH, TG22: tl.constexpr,
                      BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr):
        """Non-maximum suppression and thresholds for a tile of image ``n``: 0, 1 (candidate), 2 (strong edge)."""
        n, r, c, inside, image = _tile(H, W, BLOCK_H, BLOCK_W)
        src = img_ptr + image
        gx, gy = _sobel(src, r, c, H, W)
        ax = tl.abs(gx)
        ay = tl.abs(gy)
        mag = ax + ay
        # OpenCV's sector test ay * 2**15 < ax * TG22 (horizontal) / ay * 2**15 > ax * (TG22 + 2**16) (vertical)
        horizontal = ay * 32768 < ax * TG22
        vertical = ay * 32768 > ax * (TG22 + 65536)
        opposite = (gx ^ gy) < 0
        left = _magnitude(src, r, c - 1, H, W)
        right = _magnitude(src, r, c + 1, H, W)
        up = _magnitude(src, r - 1, c, H, W)
        down = _magnitude(src, r + 1, c, H, W)
        up_l = _magnitude(src, r - 1, c - 1, H, W)
        up_r = _magnitude(src, r - 1, c + 1, H, W)
        dn_l = _magnitude(src, r + 1, c - 1, H, W)
        dn_r = _magnitude(src, r + 1, c + 1, H, W)
        diag = tl.where(opposite, (mag > up_r) & (mag > dn_l), (mag > up_l) & (mag > dn_r))
        keep = tl.where(horizontal, (mag > left) & (mag >= right),
                        tl.where(vertical, (mag > up) & (mag >= down), diag))
        cand = keep & (mag > LOW)
        state = cand.to(tl.int32) + (cand & (mag > HIGH)).to(tl.int32)
        tl.store(state_ptr + image + r * W + c, state.to(tl.uint8), mask=inside)

    @triton.jit
    def _neighbour_is_edge(state, r, c, H, W):
        ok = (r >= 0) & (r < H) & (c >= 0) & (c < W)
        return tl.load(state + r * W + c, mask=ok, other=0) == 2

    @triton.jit(do_not_specialize=["H", "W"])
    def _grow_kernel(state_ptr, changed_ptr, H, W, BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr):
        """One hysteresis pass, in place: a candidate (1) with an edge (2) among its 8 neighbours becomes an edge;
        ``changed_ptr`` gets 1 if any did (it is 0 before the pass)."""
        n, r, c, inside, image = _tile(H, W, BLOCK_H, BLOCK_W)
        state = state_ptr + image
        own = tl.load(state + r * W + c, mask=inside, other=0)
        near = _neighbour_is_edge(state, r - 1, c - 1, H, W) | _neighbour_is_edge(state, r - 1, c, H, W)
        near = near | _neighbour_is_edge(state, r - 1, c + 1, H, W) | _neighbour_is_edge(state, r, c - 1, H, W)
        near = near | _neighbour_is_edge(state, r, c + 1, H, W) | _neighbour_is_edge(state, r + 1, c - 1, H, W)
        near = near | _neighbour_is_edge(state, r + 1, c, H, W) | _neighbour_is_edge(state, r + 1, c + 1, H, W)
        grow = inside & (own == 1) & near
        tl.store(state + r * W + c, tl.full(own.shape, 2, tl.uint8), mask=grow)
        if tl.max(grow.to(tl.int32)) > 0:
            tl.atomic_max(changed_ptr, 1)


    @triton.jit
    def _reflect(i, n):
        """OpenCV's BORDER_REFLECT_101 index for one step past an edge: -1 -> 1, n -> n - 2."""
        i = tl.where(i < 0, -i, i)
        return tl.where(i >= n, 2 * n - 2 - i, i)

    @triton.jit
    def _box_floor_kernel(dist_ptr, b_ptr, hist_ptr, H, W, BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr):
        """``floor(box3(dist))`` for a tile of image ``n``: the nine taps (reflect-101) summed in row order in
        float32, divided by 9 (IEEE), floored; stored as uint8 (0..20) and counted into image n's 256-bin
        histogram. A tile's pixels past the image count in bin 255: the values stop at 20, and the table's entries
        up to 20 depend only on the bins up to them and on the image's pixel count."""
        n, r, c, inside, image = _tile(H, W, BLOCK_H, BLOCK_W)
        src = dist_ptr + image
        rows0 = _reflect(r - 1, H) * W
        rows1 = r * W
        rows2 = _reflect(r + 1, H) * W
        cols0 = _reflect(c - 1, W)
        cols2 = _reflect(c + 1, W)
        s = tl.load(src + rows0 + cols0, mask=inside, other=0.0) + tl.load(src + rows0 + c, mask=inside, other=0.0)
        s = s + tl.load(src + rows0 + cols2, mask=inside, other=0.0)
        s = s + tl.load(src + rows1 + cols0, mask=inside, other=0.0)
        s = s + tl.load(src + rows1 + c, mask=inside, other=0.0)
        s = s + tl.load(src + rows1 + cols2, mask=inside, other=0.0)
        s = s + tl.load(src + rows2 + cols0, mask=inside, other=0.0)
        s = s + tl.load(src + rows2 + c, mask=inside, other=0.0)
        s = s + tl.load(src + rows2 + cols2, mask=inside, other=0.0)
        b = tl.floor(tl.math.div_rn(s, 9.0)).to(tl.int32)
        tl.store(b_ptr + image + r * W + c, b.to(tl.uint8), mask=inside)
        counted = tl.reshape(tl.where(inside, b, 255), [BLOCK_H * BLOCK_W], can_reorder=True)
        tl.atomic_add(hist_ptr + n * 256 + tl.arange(0, 256), tl.histogram(counted, 256))

    @triton.jit
    def _equalized(b, lut, r, c, W):
        """The equalised value (int32) of the pixel at (r, c): ``lut[b]``."""
        return tl.load(lut + tl.load(b + r * W + c).to(tl.int32)).to(tl.int32)

    @triton.jit
    def _emboss_at(b, lut, r, c, H, W):
        """``clamp(emboss(equalised), 0, 255)`` at (r, c) (inside the image): the taps [[-2, -1, 0], [-1, 1, 1],
        [0, 1, 2]] with reflect-101 borders, whole numbers (exact in any order)."""
        ru = _reflect(r - 1, H)
        rd = _reflect(r + 1, H)
        cl = _reflect(c - 1, W)
        cr = _reflect(c + 1, W)
        e = _equalized(b, lut, r, c, W) + _equalized(b, lut, r, cr, W) + _equalized(b, lut, rd, c, W)
        e = e + 2 * _equalized(b, lut, rd, cr, W) - _equalized(b, lut, ru, c, W) - _equalized(b, lut, r, cl, W)
        e = e - 2 * _equalized(b, lut, ru, cl, W)
        return tl.minimum(tl.maximum(e, 0), 255)

    @triton.jit
    def _mask_kernel(b_ptr, lut_ptr, liquid_ptr, m_ptr, H, W, BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr):
        """The water mask for a tile of image ``n``: ``liquid8 * round(box3(clamp(emboss(lut[b]), 0, 255)))``,
        reflect-101 borders, in int32 (the 3x3 sum of whole numbers 0..255 / 9 is never a tie: the nearest
        integer is ``(2 s + 9) // 18``), times the uint8-valued float32 liquid layer (exact)."""
        n, r, c, inside, image = _tile(H, W, BLOCK_H, BLOCK_W)
        r = tl.where(inside, r, 0)   # (outside: compute on pixel 0, store nothing)
        c = tl.where(inside, c, 0)
        image = n.to(tl.int64) * H * W
        b = b_ptr + image
        lut = lut_ptr + n * 256
        s = tl.zeros((BLOCK_H, BLOCK_W), dtype=tl.int32)
        for dr in tl.static_range(3):
            rr = _reflect(r + dr - 1, H)
            for dc in tl.static_range(3):
                s += _emboss_at(b, lut, rr, _reflect(c + dc - 1, W), H, W)
        level = (2 * s + 9) // 18
        liquid = tl.load(liquid_ptr + image + r * W + c, mask=inside, other=0.0)
        tl.store(m_ptr + image + r * W + c, liquid * level.to(tl.float32), mask=inside)

    @triton.jit
    def _blend_kernel(x_ptr, m_ptr, peak_ptr, out_ptr, strength, c0, c1, c2, HW, BLOCK: tl.constexpr):
        """``x + (where(peak > 0, m / peak, 0) * strength) * colour`` for BLOCK pixels of image ``n``, the
        torch path's float32 operations in its order (launched without FMA contraction)."""
        n = tl.program_id(0)
        p = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        keep = p < HW
        peak = tl.load(peak_ptr + n)
        m = tl.load(m_ptr + n.to(tl.int64) * HW + p, mask=keep, other=0.0)
        t = tl.math.div_rn(m, tl.maximum(peak, 1e-12))
        t = tl.where(peak > 0, t, 0.0) * strength
        base = n.to(tl.int64) * 3 * HW + p
        tl.store(out_ptr + base, tl.load(x_ptr + base, mask=keep) + t * c0, mask=keep)
        tl.store(out_ptr + base + HW, tl.load(x_ptr + base + HW, mask=keep) + t * c1, mask=keep)
        tl.store(out_ptr + base + 2 * HW, tl.load(x_ptr + base + 2 * HW, mask=keep) + t * c2, mask=keep)


CHECK_EVERY = 8   # hysteresis passes between checks for the end of the growth (each check: one host sync)
BLEND_BLOCK = 1024   # pixels per program of the final blend

# Memory traffic per pixel of each launch function, each byte counted once (the taps' re-reads of nearby pixels are
# cached): Canny reads the float32 image and writes a byte, and each hysteresis pass reads that byte; the distance
# reads the 0/1 map and writes three float32 maps, reading two of them back; the water mask reads the distance
# map, writes and reads a byte, reads the liquid layer and writes the mask; the blend reads the three channels and
# the mask and writes three channels. (Counted into KERNELS.bytes as the kernels launch.)
PIXEL_BYTES = {"canny": lambda passes: 4 + 1 + passes, "distance": 1 + 3 * 4 + 2 * 4, "water_mask": 4 + 1 + 1 + 4 + 4,
               "blend": 3 * 4 + 4 + 3 * 4}


def canny(img: Tensor, low: float, high: float) -> Tensor:
    """:func:`weather.canny` of (N, 1, H, W) uint8-valued float32 ``img``: the edge map, bool. Runs on any device
    Triton serves (CUDA; the CPU in its interpreter)."""
    import math

    from .weather import _TG22

    n, _, h, w = img.shape
    img = img.contiguous()
    state = torch.empty(n, 1, h, w, device=img.device, dtype=torch.uint8)
    grid = (n, -(-h // BLOCK_H), -(-w // BLOCK_W))
    _canny_kernel[grid](img, state, h, w, math.floor(low), math.floor(high), TG22=_TG22, BLOCK_H=BLOCK_H,
                        BLOCK_W=BLOCK_W, num_warps=WARPS)
    changed = torch.zeros(CHECK_EVERY, device=img.device, dtype=torch.int32)
    passes = 0
    for _ in range(-(-(h * w) // CHECK_EVERY)):   # a pass grows every chain by at least one pixel
        for k in range(CHECK_EVERY):
            _grow_kernel[grid](state, changed[k:], h, w, BLOCK_H=BLOCK_H, BLOCK_W=BLOCK_W, num_warps=WARPS)
        passes += CHECK_EVERY
        if int(changed.min()) == 0:   # a pass that grew nothing: the growth has ended
            break
        changed.zero_()
    KERNELS.bytes += n * h * w * PIXEL_BYTES["canny"](passes)
    return state == 2


def water_mask(dist: Tensor, liquid8: Tensor) -> Tensor:
    """The rest of :func:`weather.water_mask` after the distance map: box blur + floor (and the histogram) in one
    kernel, OpenCV's equalisation table from it in torch (:func:`weather.equalize_lut`), then emboss, clamp, box
    blur, round and the product with ``liquid8`` in a second kernel. (N, 1, H, W) float32 in and out, H, W >= 2."""
    from .weather import equalize_lut

    n, _, h, w = dist.shape
    b = torch.empty(n, 1, h, w, device=dist.device, dtype=torch.uint8)
    hist = torch.zeros(n, 256, device=dist.device, dtype=torch.int32)
    grid = (n, -(-h // BLOCK_H), -(-w // BLOCK_W))
    _box_floor_kernel[grid](dist.contiguous(), b, hist, h, w, BLOCK_H=BLOCK_H, BLOCK_W=BLOCK_W, num_warps=WARPS)
    lut = equalize_lut(hist, h * w).contiguous()
    m = torch.empty(n, 1, h, w, device=dist.device, dtype=torch.float32)
    _mask_kernel[grid](b, lut, liquid8.contiguous(), m, h, w, BLOCK_H=BLOCK_H, BLOCK_W=BLOCK_W, num_warps=WARPS)
    KERNELS.bytes += n * h * w * PIXEL_BYTES["water_mask"]
    return m


def blend(x: Tensor, m: Tensor, peak: Tensor, strength: float, colour: Tensor) -> Tensor:
    """The end of :func:`weather.spatter_from_liquid` for water: ``x + (where(peak > 0, m / peak, 0) * strength) *
    colour`` on (N, 3, H, W) float32 ``x``, (N, 1, H, W) ``m``, (N, 1, 1, 1) ``peak``; ``colour``: (1, 3, 1, 1) float32
    on the CPU."""
    n, _, h, w = x.shape
    x = x.contiguous()
    out = torch.empty_like(x)
    c = colour.view(3).tolist()   # on the CPU (weather._rgb): no sync
    grid = (n, -(-(h * w) // BLEND_BLOCK))
    _blend_kernel[grid](x, m.contiguous(), peak.contiguous(), out, strength, c[0], c[1], c[2], h * w,
                        BLOCK=BLEND_BLOCK, num_warps=WARPS, enable_fp_fusion=False)
    KERNELS.bytes += n * h * w * PIXEL_BYTES["blend"]
    return out


def try_water_mask(dist: Tensor, liquid8: Tensor) -> Tensor | None:
    """:func:`water_mask` on CUDA (float32, at least 2 x 2 px) where the kernels have not failed; None where not."""
    if not _serves(dist, liquid8) or min(dist.shape[-2:]) < 2:
        return None
    return KERNELS.run(water_mask, dist, liquid8)


def try_blend(x: Tensor, m: Tensor, peak: Tensor, strength: float, colour: Tensor) -> Tensor | None:
    """:func:`blend` on CUDA (float32) where the kernels have not failed; None where not."""
    if not _serves(x, m) or x.shape[1] != 3:
        return None
    return KERNELS.run(blend, x, m, peak, strength, colour)


def try_canny(img: Tensor, low: float, high: float) -> Tensor | None:
    """:func:`canny` on CUDA (float32 ``img``) where the kernels have not failed; None where not (then the torch
    path runs), or when they fail to build (one warning: see :class:`_triton.Kernels`)."""
    if not _serves(img):
        return None
    return KERNELS.run(canny, img, low, high)


def _level_costs_cpu() -> Tensor:
    """(3, 5) float32: per kind of move, the cost of 1, 2, 4, 8 and 16 moves as the torch path adds them:
    ``k * cost`` in double, rounded to float32 where it meets the float32 map."""
    return torch.tensor([[k * cost for k in (1, 2, 4, 8, 16)] for cost in COSTS], dtype=torch.float64).float()


def distance(sources: Tensor, cap: float) -> Tensor:
    """:func:`weather.chamfer_distance` of (N, 1, H, W) bool ``sources`` at ``cap`` (0 < cap <= 31), float32. Runs
    on any device Triton serves (CUDA; the CPU in its interpreter)."""
    from ._ops import on_device

    n, _, h, w = sources.shape
    costs = on_device(_level_costs_cpu, device=sources.device, dtype=torch.float32)
    maps = [torch.empty(n, 1, h, w, device=sources.device, dtype=torch.float32) for _ in range(2)]
    src = sources.contiguous().view(torch.uint8)
    grid = (n, -(-h // BLOCK_H), -(-w // BLOCK_W))
    for stage, cost in enumerate(COSTS):
        out = maps[stage % 2]
        k_last = int(cap // cost)
        _stage_kernel[grid](src, out, costs[stage], h, w, float(cap), float(cap) + 10.0, k_last,
                            K=k_last if UNROLL_TAPS else 0, STAGE=stage, LOOP=not UNROLL_TAPS, BLOCK_H=BLOCK_H,
                            BLOCK_W=BLOCK_W, num_warps=WARPS)
        src = out
    KERNELS.bytes += n * h * w * PIXEL_BYTES["distance"]
    return src


def traffic_bytes(shape: tuple, passes: int = CHECK_EVERY) -> int:
    """The memory traffic of all of water spatter's kernels on (N, 1, H, W) maps with ``passes`` hysteresis passes
    (at least 8: the first check), by :data:`PIXEL_BYTES`."""
    n, _, h, w = shape
    per_pixel = PIXEL_BYTES["canny"](passes) + sum(PIXEL_BYTES[k] for k in ("distance", "water_mask", "blend"))
    return n * h * w * per_pixel


def try_distance(sources: Tensor, cap: float) -> Tensor | None:
    """:func:`distance` on CUDA (bool ``sources``, a cap in (0, 31]) where the kernels have not failed; None where not
    (then the torch path runs), or when they fail to build (one warning: see :class:`_triton.Kernels`)."""
    if not _serves(sources, dtype=torch.bool) or not 0 < cap <= MAX_K:
        return None
    return KERNELS.run(distance, sources, cap)
