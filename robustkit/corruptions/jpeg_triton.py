"""The JPEG round trip of :mod:`robustkit.corruptions.jpeg` as two Triton kernels, for CUDA.

The torch-ops round trip moves ~43 MB per 224 px image (float64 planes through six matrix products, each
followed by a floor pass): on an H100 that held jpeg_compression at ~33,000 images/s (bench/RESULTS.md). Here
the same integer arithmetic runs with every intermediate in registers:

1. :func:`_mcu_kernel`, one program per 16 x 16 MCU: the 8-bit levels of its pixels (rounded from the float
   image, or given), RGB -> YCbCr in libjpeg's 16-bit fixed point, the 4:2:0 chroma averages with their
   alternating bias, the islow FDCT, quantisation (half away from zero, as libjpeg divides), dequantisation,
   the islow IDCT, + 128 and the clamp, for its four luma blocks and two chroma blocks; it writes the decoded
   luma and chroma planes as uint8. Edge padding (libjpeg repeats the last column and row; the chroma rows past
   the image's even height repeat the last chroma row) is done by clamping the indices it loads.
2. :func:`_colour_kernel`, one program per tile of output pixels: libjpeg's "fancy" h2v2 chroma upsampling
   (``(3 * nearest + neighbour + 8 or 7) >> 4`` over column sums ``3 * nearest + next``, edges repeated),
   YCbCr -> RGB in fixed point, the clamp, and the level's value from a 256-entry table (``k / 255`` as
   :func:`robustkit.corruptions._ops.unit_float` gives it, or ``k`` itself).

Both are integer arithmetic (the constants are the torch path's own: :func:`jpeg._matrix_of`,
:func:`jpeg.quant_table`, :func:`jpeg._colour_constants`), so the result equals the torch path bit for bit
(tests/test_jpeg_triton.py runs the kernels in Triton's interpreter on the CPU against it; on a GPU,
tests/test_gpu.py compares them on CUDA). The traffic is the float image read once and the output written
once, plus the 1.5 bytes per pixel of the decoded planes written and read: ~1.4 MB per 224 px image.

Used by :func:`jpeg.jpeg_roundtrip` and :func:`jpeg.jpeg_roundtrip_u8` for CUDA tensors when Triton is
installed (it comes with torch's CUDA builds), for float32 images (other dtypes round to levels differently)
at least 5 px wide (narrower chroma is replicated, not fancy-upsampled). A kernel that fails to compile gives
one warning and the torch path from then on. NaN pixels are not defined here (the torch path gives NaN blocks).
The first call per process compiles the kernels (seconds; Triton keeps them on disk for the next process).
"""

from __future__ import annotations

import functools

import torch

from . import _ops, _triton, jpeg
from ._triton import Kernels, tl, triton

Tensor = torch.Tensor

KERNELS = Kernels("jpeg_compression")
# warps per program of each kernel: on an H100 (2026-11-27, bench/RESULTS.md) one warp per MCU program ran
# 1.74x faster than Triton's default 4 (248,700 vs 142,900 images/s at 224 px); bench/bench_corruptions.py
# --kernel-settings times the neighbours
MCU_WARPS = 1
COLOUR_WARPS = 4

# the descaling shifts _block uses (written there as numbers): FDCT rows and IDCT columns, FDCT columns, IDCT rows
assert (jpeg.CONST_BITS - jpeg.PASS1_BITS, jpeg.CONST_BITS + jpeg.PASS1_BITS) == (11, 15)


def usable(x: Tensor) -> bool:
    """Whether the kernels serve ``x`` (N, 3, H, W) in the product: Triton importable, ``x`` on CUDA, at least
    5 px wide, not empty (and, checked by :func:`try_roundtrip`, float32 unless it holds levels)."""
    return (triton is not None and _triton.on_gpu(x) and x.dim() == 4 and x.shape[1] == 3 and x.shape[-1] > 4
            and x.numel() > 0)


if triton is not None:

    @triton.jit
    def _rows(a, m):
        """``a @ m.T`` for (8, 8) ``a``: each row of ``a`` through the 8-point pass ``m``."""
        return tl.sum(a[:, None, :] * m[None, :, :], axis=2)

    @triton.jit
    def _cols(a, m):
        """``m @ a`` for (8, 8) ``a``: each column of ``a`` through the 8-point pass ``m``."""
        return tl.sum(m[:, :, None] * a[None, :, :], axis=1)

    @triton.jit
    def _block(v, fdct, idct, q):
        """One 8 x 8 block of levels 0..255 (int32) through libjpeg's islow FDCT, quantisation by table ``q``
        (rounded half away from zero: ``(|c| + 4 q) // (8 q)``, the FDCT being scaled by 8), dequantisation,
        islow IDCT, + 128 and the clamp to 0..255. Each pass is ``(M @ v + 2**(s - 1)) >> s``; the IDCT runs in
        int64 (a worst-case bound of its partial sums passes 2**31)."""
        t = (_rows(v - 128, fdct) + (1 << (11 - 1))) >> 11
        c = (_cols(t, fdct) + (1 << (15 - 1))) >> 15
        a = tl.where(c < 0, -c, c)
        k = (a + 4 * q) // (8 * q)
        d = tl.where(c < 0, -k, k) * q
        t = (_cols(d.to(tl.int64), idct) + (1 << (11 - 1))) >> 11
        o = ((_rows(t, idct) + (1 << (18 - 1))) >> 18) + 128
        return tl.minimum(tl.maximum(o, 0), 255).to(tl.int32)

    @triton.jit
    def _levels(ptr, LEVELS: tl.constexpr):
        """The 8-bit levels (int32) of the pixels at ``ptr``: as given (``LEVELS``), or ``round(255 x)``
        clamped to 0..255 from float32 ``x``, rounded half to even (as ``_ops.levels8`` in float32)."""
        x = tl.load(ptr)
        if LEVELS:
            k = x.to(tl.int32)
        else:
            v = tl.minimum(tl.maximum(x * 255.0, 0.0), 255.0)
            f = tl.floor(v)
            d = v - f   # exact: v < 256 in float32
            fi = f.to(tl.int32)
            up = (d > 0.5) | ((d == 0.5) & ((fi & 1) == 1))
            k = fi + up.to(tl.int32)
        return k

    @triton.jit(do_not_specialize=["H", "W", "RH", "RW", "MCU_COLS", "MCUS"])   # one build for every size
    def _mcu_kernel(x_ptr, y_ptr, c_ptr, fdct_ptr, idct_ptr, q_ptr, H, W, RH, RW, MCU_COLS, MCUS,
                    YR: tl.constexpr, YG: tl.constexpr, YB: tl.constexpr,
                    BR: tl.constexpr, BG: tl.constexpr, BB: tl.constexpr,
                    RR: tl.constexpr, RG: tl.constexpr, RB: tl.constexpr,
                    Y_K: tl.constexpr, C_K: tl.constexpr, LEVELS: tl.constexpr):
        """One MCU of image ``n``: the decoded luma (N, H, W) and chroma (N, 2, RH, RW) planes, uint8."""
        pid = tl.program_id(0)
        n = pid // MCUS
        m = pid % MCUS
        mr = m // MCU_COLS
        mc = m % MCU_COLS
        i = tl.arange(0, 8)[:, None]
        j = tl.arange(0, 8)[None, :]
        fdct = tl.load(fdct_ptr + i * 8 + j)
        idct = tl.load(idct_ptr + i * 8 + j).to(tl.int64)
        plane = H * W
        src = x_ptr + n.to(tl.int64) * 3 * plane
        # luma: four blocks, the image's last row and column repeated past its edges
        qy = tl.load(q_ptr + i * 8 + j)
        for b in tl.static_range(4):
            r = mr * 16 + (b // 2) * 8 + i
            c = mc * 16 + (b % 2) * 8 + j
            off = tl.minimum(r, H - 1) * W + tl.minimum(c, W - 1)
            red = _levels(src + off, LEVELS)
            green = _levels(src + plane + off, LEVELS)
            blue = _levels(src + 2 * plane + off, LEVELS)
            y = (YR * red + YG * green + YB * blue + Y_K) >> 16
            out = _block(y, fdct, idct, qy)
            tl.store(y_ptr + n.to(tl.int64) * plane + r * W + c, out.to(tl.uint8), mask=(r < H) & (c < W))
        # chroma: 2x2 sums of the samples, each floored, plus the bias 1, 2, 1, 2, ... along the row, >> 2;
        # rows past the chroma's last real row repeat it, image columns past the edge repeat the last one
        qc = tl.load(q_ptr + 64 + i * 8 + j)
        cr = mr * 8 + i
        cc = mc * 8 + j
        rows = 2 * tl.minimum(cr, RH - 1)
        cols = 2 * cc
        cb_sum = tl.zeros((8, 8), dtype=tl.int32)
        cr_sum = tl.zeros((8, 8), dtype=tl.int32)
        for k in tl.static_range(4):
            off = tl.minimum(rows + k // 2, H - 1) * W + tl.minimum(cols + k % 2, W - 1)
            red = _levels(src + off, LEVELS)
            green = _levels(src + plane + off, LEVELS)
            blue = _levels(src + 2 * plane + off, LEVELS)
            cb_sum += (BR * red + BG * green + BB * blue + C_K) >> 16
            cr_sum += (RR * red + RG * green + RB * blue + C_K) >> 16
        bias = (cc & 1) + 1
        keep = (cr < RH) & (cc < RW)
        small = n.to(tl.int64) * 2 * RH * RW + cr * RW + cc
        out = _block((cb_sum + bias) >> 2, fdct, idct, qc)
        tl.store(c_ptr + small, out.to(tl.uint8), mask=keep)
        out = _block((cr_sum + bias) >> 2, fdct, idct, qc)
        tl.store(c_ptr + small + RH * RW, out.to(tl.uint8), mask=keep)

    @triton.jit
    def _fancy(c_ptr, r0, r1, c0, c1, odd):
        """libjpeg's h2v2 fancy upsampling of one output pixel from the chroma plane at ``c_ptr``: column sums
        ``3 * row r0 + row r1`` at columns c0 (nearest) and c1 (neighbour), ``(3 * s0 + s1 + 8 - odd) >> 4``."""
        s0 = 3 * tl.load(c_ptr + r0 + c0).to(tl.int32) + tl.load(c_ptr + r1 + c0).to(tl.int32)
        s1 = 3 * tl.load(c_ptr + r0 + c1).to(tl.int32) + tl.load(c_ptr + r1 + c1).to(tl.int32)
        return (3 * s0 + s1 + 8 - odd) >> 4

    @triton.jit(do_not_specialize=["H", "W", "RH", "RW", "TILES_H"])
    def _colour_kernel(y_ptr, c_ptr, lut_ptr, out_ptr, H, W, RH, RW, TILES_H,
                       R_CR: tl.constexpr, G_CB: tl.constexpr, G_CR: tl.constexpr, B_CB: tl.constexpr,
                       R_K: tl.constexpr, G_K: tl.constexpr, B_K: tl.constexpr,
                       BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr):
        """A BLOCK_H x BLOCK_W tile of image ``n``'s output: upsampled chroma + luma -> RGB levels -> ``lut``."""
        pid = tl.program_id(0)
        n = pid // TILES_H
        r = (pid % TILES_H) * BLOCK_H + tl.arange(0, BLOCK_H)[:, None]
        c = tl.program_id(1) * BLOCK_W + tl.arange(0, BLOCK_W)[None, :]
        keep = (r < H) & (c < W)
        plane = H * W
        y = tl.load(y_ptr + n.to(tl.int64) * plane + r * W + c, mask=keep, other=0).to(tl.int32)
        # the chroma rows and columns of this pixel and of its neighbour (the next one for odd, the previous
        # one for even output rows/columns), edges repeated
        odd_r = r & 1
        odd_c = c & 1
        r0 = tl.minimum(r >> 1, RH - 1)
        r1 = tl.minimum(tl.maximum(r0 + 2 * odd_r - 1, 0), RH - 1)
        c0 = tl.minimum(c >> 1, RW - 1)
        c1 = tl.minimum(tl.maximum(c0 + 2 * odd_c - 1, 0), RW - 1)
        small = c_ptr + n.to(tl.int64) * 2 * RH * RW
        cb = _fancy(small, r0 * RW, r1 * RW, c0, c1, odd_c)
        cr = _fancy(small + RH * RW, r0 * RW, r1 * RW, c0, c1, odd_c)
        y16 = y << 16
        red = (y16 + R_CR * cr + R_K) >> 16
        green = (y16 + G_CB * cb + G_CR * cr + G_K) >> 16
        blue = (y16 + B_CB * cb + B_K) >> 16
        dst = out_ptr + n.to(tl.int64) * 3 * plane + r * W + c
        tl.store(dst, tl.load(lut_ptr + tl.minimum(tl.maximum(red, 0), 255)), mask=keep)
        tl.store(dst + plane, tl.load(lut_ptr + tl.minimum(tl.maximum(green, 0), 255)), mask=keep)
        tl.store(dst + 2 * plane, tl.load(lut_ptr + tl.minimum(tl.maximum(blue, 0), 255)), mask=keep)


@functools.lru_cache(maxsize=None)
def _colour_ints() -> tuple[dict, dict]:
    """The RGB -> YCbCr and YCbCr -> RGB fixed-point constants (jpeg._colour_constants, times 2**16) as
    keyword arguments of the two kernels."""
    c = (jpeg._colour_constants() * 2**jpeg.SCALEBITS).round().long().tolist()
    enc, enc_k, dec, dec_k = c[0], [row[0] for row in c[1]], c[2], [row[0] for row in c[3]]
    mcu = dict(YR=enc[0][0], YG=enc[0][1], YB=enc[0][2], BR=enc[1][0], BG=enc[1][1], BB=enc[1][2],
               RR=enc[2][0], RG=enc[2][1], RB=enc[2][2], Y_K=enc_k[0], C_K=enc_k[1])
    assert enc_k[1] == enc_k[2] and dec[0][1] == 0 and dec[2][2] == 0 and dec[0][0] == 1 << jpeg.SCALEBITS
    colour = dict(R_CR=dec[0][2], G_CB=dec[1][1], G_CR=dec[1][2], B_CB=dec[2][1],
                  R_K=dec_k[0], G_K=dec_k[1], B_K=dec_k[2])
    return mcu, colour


def _dct_cpu() -> Tensor:
    """(2, 64) int32: the islow FDCT and IDCT 8-point matrices (row-major), as the torch path builds them."""
    return torch.stack([jpeg._matrix_of(jpeg._fdct_1d), jpeg._matrix_of(jpeg._idct_1d)]).round().int().view(2, 64)


def _quant_cpu(quality: int) -> Tensor:
    """(128,) int32: the luma then the chroma quantisation table at ``quality``, natural order."""
    q = [jpeg.quant_table(jpeg.LUMA_TABLE, quality), jpeg.quant_table(jpeg.CHROMA_TABLE, quality)]
    return torch.tensor(q, dtype=torch.int32).view(128)


def _lut_cpu(dtype: torch.dtype, unit: bool) -> Tensor:
    """(256,) the value of each level: ``k / 255`` as float32 (``_ops.unit_float``), or ``k`` in ``dtype``."""
    return _ops.unit_levels_cpu() if unit else torch.arange(256, dtype=dtype)


def roundtrip(x: Tensor, quality: int, levels: bool = False) -> Tensor:
    """The JPEG round trip of (N, 3, H, W) ``x`` at ``quality``: with ``levels=False`` ``x`` is float32 in
    [0, 1] (rounded to 8-bit levels first) and the result float32 ``k / 255``, as :func:`jpeg.jpeg_roundtrip`;
    with ``levels=True`` ``x`` holds levels 0..255 and the result is levels in float64, as
    :func:`jpeg.jpeg_roundtrip_u8`. Runs on any device Triton serves (CUDA; the CPU in its interpreter)."""
    n, _, h, w = x.shape
    x = x.contiguous()
    device = x.device
    rh, rw = (h + 1) // 2, (w + 1) // 2
    ys = torch.empty(n, h, w, device=device, dtype=torch.uint8)
    cs = torch.empty(n, 2, rh, rw, device=device, dtype=torch.uint8)
    dct = _ops.on_device(_dct_cpu, device=device, dtype=torch.int32)
    quant = _ops.on_device(_quant_cpu, int(quality), device=device, dtype=torch.int32)
    out_dtype = torch.float64 if levels else torch.float32
    lut = _ops.on_device(_lut_cpu, out_dtype, not levels, device=device, dtype=out_dtype)
    mcu_consts, colour_consts = _colour_ints()
    mcu_rows, mcu_cols = -(-h // 16), -(-w // 16)
    _mcu_kernel[(n * mcu_rows * mcu_cols,)](x, ys, cs, dct[0], dct[1], quant, h, w, rh, rw, mcu_cols,
                                            mcu_rows * mcu_cols, LEVELS=levels, num_warps=MCU_WARPS, **mcu_consts)
    out = torch.empty(n, 3, h, w, device=device, dtype=out_dtype)
    bh, bw = 8, 64
    tiles_h = -(-h // bh)
    _colour_kernel[(n * tiles_h, -(-w // bw))](ys, cs, lut, out, h, w, rh, rw, tiles_h, BLOCK_H=bh, BLOCK_W=bw,
                                               num_warps=COLOUR_WARPS, **colour_consts)
    KERNELS.bytes += traffic_bytes(tuple(x.shape), x.element_size(), out.element_size())
    return out


def traffic_bytes(shape: tuple, levels_itemsize: int = 4, out_itemsize: int = 4) -> int:
    """The memory traffic of :func:`roundtrip` on an (N, 3, H, W) batch, each byte counted once: the image read,
    the uint8 luma and chroma planes written and read back, the output written (the constant tables aside). The
    MCU kernel loads every pixel twice (luma, then chroma); the second load is cached (a 16 px square)."""
    n, _, h, w = shape
    planes = h * w + 2 * ((h + 1) // 2) * ((w + 1) // 2)
    return n * (3 * h * w * levels_itemsize + 2 * planes + 3 * h * w * out_itemsize)


def try_roundtrip(x: Tensor, quality: int, levels: bool = False) -> Tensor | None:
    """:func:`roundtrip` where :func:`usable` says so and the kernels have not failed; None where not, or when
    they fail to build (one warning, then the torch path from then on: see :class:`_triton.Kernels`)."""
    if not KERNELS.ready() or not usable(x) or (not levels and x.dtype != torch.float32):
        return None
    return KERNELS.run(roundtrip, x, quality, levels)
