"""spatter's capped chamfer distance (:func:`robustkit.corruptions.weather.chamfer_distance`) as Triton kernels, for
CUDA.

The torch path composes min-plus shifts by doubling level (axial moves, then diagonal, then knight), each level a
few full passes over the map: ~29 MB per 224 px image, the largest share of spatter's traffic. The cheapest path
to a source takes at most one direction of each kind (see ``chamfer_distance``), so the same distances are three
window minimums, one kernel each, every map read once and written once (~17 bytes per pixel in all):

* axial: ``min(own, min over the 4 axial directions u and k = 1..K of source(p + k u) + k)``, with source 0 on a
  source and ``cap + 10`` elsewhere (whole numbers: exact);
* diagonal, then knight: the same over the previous map with the 4 diagonal / 8 knight directions, where the
  cost of k moves is added level by level, ``+ c(1)`` if k has bit 0, then ``+ c(2)`` for bit 1, ... with
  ``c(l) = float32(l * cost)``: the float32 sums the torch path forms for that path, in its order;
* the last kernel also caps at ``cap``.

K per kind is ``cap // cost``: more moves cost more than the cap (the torch path's extra doubling levels only
give distances that end as ``cap``). Taps past the border are skipped, as the torch path's shifts skip them. So
the result equals the torch path bit for bit (tests/test_chamfer_triton.py in Triton's interpreter; tests/test_gpu.py
on CUDA). Used for CUDA tensors when Triton is installed; a failure to compile gives one warning and the torch
path from then on.
"""

from __future__ import annotations

import torch

from ._triton import Kernels, tl, triton

Tensor = torch.Tensor

KERNELS = Kernels("spatter")
WARPS = 4                  # per program (Triton's default; bench/bench_corruptions.py times others)
BLOCK_H, BLOCK_W = 16, 32  # output pixels per program
COSTS = (1.0, 1.4, 2.1969)  # axial, diagonal, knight: OpenCV's DIST_L2 5x5 mask (as weather.chamfer_distance)
MAX_K = 31                 # the kernels unroll up to 5 doubling levels (k < 32): caps up to 31


def usable(sources: Tensor, cap: float) -> bool:
    """Whether the kernels serve ``sources`` (N, 1, H, W) bool at ``cap`` in the product: on CUDA, not empty, a cap
    in (0, 31]."""
    return (triton is not None and sources.is_cuda and sources.dim() == 4 and sources.numel() > 0
            and sources.dtype == torch.bool and 0 < cap <= MAX_K)


if triton is not None:

    @triton.jit
    def _tap(d, ptr, r, c, sr: tl.constexpr, sc: tl.constexpr, k: tl.constexpr, H, W, far, c1, c2, c4, c8, c16,
             SOURCES: tl.constexpr):
        """``min(d, value at (r + sr, c + sc) + the cost of k moves added level by level)``; nothing past the
        border. ``SOURCES``: the map holds 0/1 sources (value 0 on a source, ``far`` elsewhere)."""
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
    def _stage_kernel(src_ptr, out_ptr, cost_ptr, H, W, cap, far, K: tl.constexpr, STAGE: tl.constexpr,
                      BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr):
        """One kind of move (STAGE 0: axial, from the 0/1 sources; 1: diagonal; 2: knight, then the cap) for a
        BLOCK_H x BLOCK_W tile of image ``n``. ``cost_ptr``: float32 ``c(1), c(2), c(4), c(8), c(16)`` of the kind."""
        n = tl.program_id(0)
        r = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)[:, None]
        c = tl.program_id(2) * BLOCK_W + tl.arange(0, BLOCK_W)[None, :]
        inside = (r < H) & (c < W)
        image = n.to(tl.int64) * H * W
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
        for k in tl.static_range(1, K + 1):
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
        if STAGE == 2:
            d = tl.minimum(d, cap)
        tl.store(out_ptr + image + r * W + c, d, mask=inside)


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
        _stage_kernel[grid](src, out, costs[stage], h, w, float(cap), float(cap) + 10.0, K=int(cap // cost),
                            STAGE=stage, BLOCK_H=BLOCK_H, BLOCK_W=BLOCK_W, num_warps=WARPS)
        src = out
    return src


def traffic_bytes(shape: tuple) -> int:
    """The memory traffic of :func:`distance` on (N, 1, H, W) sources, each byte counted once: the 0/1 map read
    and three float32 maps written, two of them read back (the taps' re-reads of nearby pixels are cached)."""
    n, _, h, w = shape
    return n * h * w * (1 + 3 * 4 + 2 * 4)


def try_distance(sources: Tensor, cap: float) -> Tensor | None:
    """:func:`distance` where :func:`usable` says so and the kernels have not failed; None where not (then the torch
    path runs), or when they fail to build (one warning: see :class:`_triton.Kernels`)."""
    if not KERNELS.ready() or not usable(sources, cap):
        return None
    return KERNELS.run(distance, sources, cap)
