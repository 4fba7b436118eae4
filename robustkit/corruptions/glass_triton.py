"""glass_blur's local shuffle (:func:`robustkit.corruptions.blur.glass_shuffle`) as a Triton kernel, for CUDA.

The makers' loop visits the interior pixels from the bottom-right corner and copies the current value of a
random neighbour ``s(p) = p + offset(p)`` into each pixel ``p``, in place. So ``p`` ends up with the input
value of the end of a chain: while ``s`` was visited before ``p`` (a larger row, or the same row and a larger
column, inside the scanned rectangle), its value is what ``s`` copied at its own visit, ``s(s)``, and so on.
The torch path resolves those chains for all pixels at once by pointer jumping, reading and writing every
pixel's link per jump (~15 MB per 224 px image at severity 3) with a host sync per convergence check.

Here each pixel walks its own chain (a few links: each goes back with probability < 1/2), reading the int8
offsets of the pixels on it, which lie within ``delta`` rows of each other. One kernel per pass composes the
pass with the previous passes' map (int32, the input pixel each output pixel holds); the last pass gathers the
channels of those pixels. No host sync, ~10 bytes per pixel and pass.

Equal to :func:`blur.glass_shuffle` for the same offsets, pixel for pixel (tests/test_glass_triton.py in
Triton's interpreter on the CPU; tests/test_gpu.py on CUDA). Used for CUDA tensors when Triton is installed;
a kernel that fails to compile gives one warning and the torch path from then on.
"""

from __future__ import annotations

import torch

from . import _ops, _triton
from ._triton import Kernels, tl, triton

Tensor = torch.Tensor

KERNELS = Kernels("glass_blur")
WARPS = 4      # per program (Triton's default; bench/bench_corruptions.py times others)
BLOCK = 512    # pixels per program


def usable(x: Tensor) -> bool:
    """Whether the kernel serves (N, C, H, W) ``x`` in the product: on CUDA, not empty."""
    return triton is not None and _triton.on_gpu(x) and x.dim() == 4 and x.numel() > 0


if triton is not None:

    @triton.jit(do_not_specialize=["H", "W", "DELTA", "R", "C", "off_image", "off_row", "off_col"])   # one build
    def _pass_kernel(off_ptr, prev_ptr, map_ptr, x_ptr, out_ptr, lut_ptr, H, W, DELTA, R, C,
                     off_image, off_row, off_col, CH: tl.constexpr, FIRST: tl.constexpr, LAST: tl.constexpr,
                     LEVELS: tl.constexpr, BLOCK: tl.constexpr):
        """One pass for BLOCK pixels of image ``n``: the pixel each one copies, composed with the previous
        passes' map (``prev``, unless FIRST); written to ``map``, or (LAST) the input's channels gathered
        from there into ``out``; with LEVELS the input is float and each gathered value becomes its 8-bit level
        as the makers' ``np.uint8`` cast of ``clamp(v, 0, 1) * 255`` truncates it, and then ``lut[level]``. Offsets: int8 (row, column) pairs, ``off_ptr`` at this pass of image 0,
        strides (in int8 elements) per image, scan row and scan column."""
        n = tl.program_id(0)
        p = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        plane = H * W
        keep = p < plane
        row = p // W
        col = p % W
        offsets = off_ptr + n.to(tl.int64) * off_image
        # the scanned rectangle: rows DELTA+1 .. H-DELTA, columns DELTA+1 .. W-DELTA (R x C pixels)
        active = keep & (row > DELTA) & (row <= H - DELTA) & (col > DELTA) & (col <= W - DELTA)
        cur_r = row
        cur_c = col
        end_r = row   # pixels outside the rectangle are never written: they keep their own value
        end_c = col
        while tl.max(active.to(tl.int32), axis=0) > 0:
            at = offsets + (H - DELTA - cur_r) * off_row + (W - DELTA - cur_c) * off_col
            dr = tl.load(at, mask=active, other=0).to(tl.int32)
            dc = tl.load(at + 1, mask=active, other=0).to(tl.int32)
            src_r = cur_r + dr
            src_c = cur_c + dc
            earlier = (dr > 0) | ((dr == 0) & (dc > 0))
            visited = (src_r > DELTA) & (src_r <= H - DELTA) & (src_c > DELTA) & (src_c <= W - DELTA)
            follow = active & earlier & visited
            stop = active & (follow == 0)
            end_r = tl.where(stop, src_r, end_r)
            end_c = tl.where(stop, src_c, end_c)
            cur_r = tl.where(follow, src_r, cur_r)
            cur_c = tl.where(follow, src_c, cur_c)
            active = follow
        src = end_r * W + end_c
        image = n.to(tl.int64) * plane
        if not FIRST:
            src = tl.load(prev_ptr + image + src, mask=keep, other=0)
        if LAST:
            for ch in tl.static_range(CH):
                v = tl.load(x_ptr + (image * CH + ch * plane) + src, mask=keep)
                if LEVELS:
                    level = (tl.minimum(tl.maximum(v, 0.0), 1.0) * 255.0).to(tl.int32)   # truncated, v >= 0
                    v = tl.load(lut_ptr + level)
                tl.store(out_ptr + (image * CH + ch * plane) + p, v, mask=keep)
        else:
            tl.store(map_ptr + image + p, src, mask=keep)


def shuffle(x: Tensor, offsets: Tensor, delta: int, levels: bool = False) -> Tensor:
    """:func:`blur.glass_shuffle` of (N, C, H, W) ``x`` with ``offsets`` (N, passes, R, C, 2) int8, checked by
    the caller: R, C >= 1, passes >= 1, H * W < 2**31. ``levels``: ``x`` is the float first blur, and the result
    is ``unit_float(glass_shuffle(clamp(x, 0, 1) * 255 as uint8))`` (float32 ``k / 255``) in the same kernels,
    without the uint8 copy. Runs on any device Triton serves (CUDA; the CPU in its interpreter)."""
    n, ch, h, w = x.shape
    passes, rows, cols = offsets.shape[1:4]
    x = x.contiguous()
    offsets = offsets.contiguous()
    out = torch.empty_like(x, dtype=torch.float32 if levels else x.dtype)
    lut = _ops.on_device(_ops.unit_levels_cpu, device=x.device, dtype=torch.float32) if levels else out
    maps = [torch.empty(n, h * w, device=x.device, dtype=torch.int32) for _ in range(min(passes - 1, 2))]
    grid = (n, -(-h * w // BLOCK))
    stride = offsets.stride()
    for k in range(passes):
        prev = maps[(k - 1) % 2] if k else x   # (unused when FIRST)
        dst = maps[k % 2] if k < passes - 1 else x   # (unused when LAST)
        _pass_kernel[grid](offsets[:, k], prev, dst, x, out, lut, h, w, delta, rows, cols, stride[0], stride[2],
                           stride[3], CH=ch, FIRST=k == 0, LAST=k == passes - 1, LEVELS=levels, BLOCK=BLOCK,
                           num_warps=WARPS)
    KERNELS.bytes += traffic_bytes(tuple(x.shape), x.element_size(), delta, passes, out.element_size())
    return out


def traffic_bytes(shape: tuple, itemsize: int, delta: int, passes: int, out_itemsize: int | None = None) -> int:
    """The memory traffic of :func:`shuffle` on an (N, C, H, W) batch of ``itemsize``-byte values, each byte counted
    once: per pass the int8 offsets of the scanned pixels and the int32 map written (but the last) and read (but
    the first); the last pass gathers the channels and writes them (``out_itemsize`` bytes each: 4 with
    ``levels``); the chains' re-reads of nearby offsets are cached."""
    n, ch, h, w = shape
    scanned = max(h - 2 * delta, 0) * max(w - 2 * delta, 0)
    maps = 2 * (passes - 1) * 4 * h * w
    return n * (passes * 2 * scanned + maps + ch * h * w * (itemsize + (out_itemsize or itemsize)))


def try_shuffle(x: Tensor, offsets: Tensor, delta: int, levels: bool = False) -> Tensor | None:
    """:func:`shuffle` where :func:`usable` says so (with ``levels``: float32 ``x``) and the kernel has not
    failed; None where not (then the torch path runs), or when it fails to build (one warning: see
    :class:`_triton.Kernels`)."""
    if (not KERNELS.ready() or not usable(x) or x.shape[-2] * x.shape[-1] >= 2**31
            or (levels and x.dtype != torch.float32)):
        return None
    return KERNELS.run(shuffle, x, offsets, delta, levels)
