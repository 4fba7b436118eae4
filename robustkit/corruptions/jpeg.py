"""Baseline JPEG encode + decode in batched torch ops, reproducing libjpeg(-turbo)'s defaults.

What Pillow's ``img.save(buf, "JPEG", quality=q)`` followed by ``Image.open(buf)`` computes (and so
what imagecorruptions and Hendrycks' ``make_*_c.py`` compute), step by step, without a codec:

1. RGB -> YCbCr, JFIF full range (BT.601), in libjpeg's 16-bit fixed point (``jccolor.c``).
2. 4:2:0 chroma subsampling (Pillow's default at every quality): 2x2 sums plus a bias that
   alternates 1, 2 along each row, shifted right by 2 (``jcsample.c``, ``h2v2_downsample``).
3. Edge padding as libjpeg does it: luma to whole 8x8 blocks by repeating the last column/row;
   chroma by repeating the last image column to a whole 16 px MCU *before* averaging and the last
   image row to an even height, then the last chroma row to whole blocks.
4. Level shift by 128 and the "islow" integer forward DCT (``jfdctint.c``, the default method).
5. Quantisation with the IJG tables scaled as ``jpeg_quality_scaling`` + ``jpeg_add_quant_table``
   (baseline: clamped to 1..255): rounding half away from zero.
6. Dequantisation and the "islow" integer inverse DCT (``jidctint.c``), + 128, clamped to 0..255.
7. "Fancy" h2v2 chroma upsampling, the decoder's default: each output sample is
   (9 * nearest + 3 * two side neighbours + 1 * diagonal) / 16 with libjpeg's rounding (+8 / +7),
   edges repeated (``jdsample.c``, ``h2v2_fancy_upsample``); images at most 4 px wide get plain 2x2
   replication instead, as libjpeg-turbo's ``jinit_upsampler`` chooses.
8. YCbCr -> RGB in 16-bit fixed point (``jdcolor.c``), clamped to 0..255, then cropped.

Every step is integer arithmetic, as in libjpeg, and every step but the quantisation rounding is
an integer linear map followed by one floor (a right shift): the colour conversions (libjpeg adds
Y outside the decoder's shift, but Y is an integer, so it can go inside), each of the four 8-point
passes of the two DCTs (the C butterfly applied to unit vectors gives its integer matrix), the
2x2 averaging and the upsampling. So each is one batched matrix product (or a few adds) on whole
planes, taken in float64 with the shift folded into the constants: dividing integers by a power of
two is exact in binary floating point and every partial sum stays far below 2**53, so the floor
sees the exact integer on any device, in any summation order, with TF32 on or off. The result is
libjpeg-turbo's, bit for bit (tests/test_jpeg.py), with no per-image step. On CUDA the same integer
arithmetic runs in two Triton kernels instead (:mod:`robustkit.corruptions.jpeg_triton`: ~1.4 MB of traffic
per 224 px image instead of ~43), equal to this module's result bit for bit. (MPS has no float64;
there float32 is used and a rare DCT sum can round.)

Three roundings are taken in a cheaper but equal form, each exact for the same reason (every value is
a multiple of a power of two far inside the mantissa) and checked against libjpeg's integer formula in
tests/test_corruption_speedups.py: the quantisation is ``round(c * (1 + 2**-16) / (8 q))``, half to
even (:func:`_quant_constants`); the downsampling bias rides in the RGB -> YCbCr constants
(:func:`_encode_bias`); the odd upsampled chroma columns are stored one high and the YCbCr -> RGB
constants take it back (:func:`_upsample_h2v2_fancy`). The planes are laid out so that no step copies
data it does not compute (:func:`_roundtrip_padded`).
"""

from __future__ import annotations

import torch

from . import _ops

Tensor = torch.Tensor

# IJG standard tables (JPEG spec Annex K), natural (row-major) order, row = vertical frequency.
LUMA_TABLE = (
    (16, 11, 10, 16, 24, 40, 51, 61),
    (12, 12, 14, 19, 26, 58, 60, 55),
    (14, 13, 16, 24, 40, 57, 69, 56),
    (14, 17, 22, 29, 51, 87, 80, 62),
    (18, 22, 37, 56, 68, 109, 103, 77),
    (24, 35, 55, 64, 81, 104, 113, 92),
    (49, 64, 78, 87, 103, 121, 120, 101),
    (72, 92, 95, 98, 112, 100, 103, 99),
)
CHROMA_TABLE = (
    (17, 18, 24, 47, 99, 99, 99, 99),
    (18, 21, 26, 66, 99, 99, 99, 99),
    (24, 26, 56, 99, 99, 99, 99, 99),
    (47, 66, 99, 99, 99, 99, 99, 99),
) + ((99,) * 8,) * 4

SCALEBITS = 16  # colour conversion fixed point (jccolor.c / jdcolor.c)
CONST_BITS = 13  # islow DCT constants
PASS1_BITS = 2


def _fix(x: float, bits: int) -> int:
    """libjpeg's ``FIX(x)``: x in fixed point with ``bits`` fraction bits, rounded."""
    return int(x * (1 << bits) + 0.5)


def quality_scaling(quality: int) -> int:
    """``jpeg_quality_scaling``: percentage scale of the base tables for a 1..100 quality."""
    q = min(max(int(quality), 1), 100)
    return 5000 // q if q < 50 else 200 - 2 * q


def quant_table(base, quality: int) -> list[list[int]]:
    """``jpeg_add_quant_table(..., force_baseline=TRUE)``: ``(t * scale + 50) // 100`` in 1..255."""
    scale = quality_scaling(quality)
    return [[min(max((t * scale + 50) // 100, 1), 255) for t in row] for row in base]


# ------------------------------------------------------------------------- islow DCT as matrices


def _fdct_1d(d: list[int]) -> list[int]:
    """One pass of jfdctint.c before its final DESCALE (outputs 0 and 4, which the C code shifts
    exactly, are scaled up by 2**CONST_BITS so that every output takes the same DESCALE)."""
    c = lambda x: _fix(x, CONST_BITS)  # noqa: E731
    tmp0, tmp7 = d[0] + d[7], d[0] - d[7]
    tmp1, tmp6 = d[1] + d[6], d[1] - d[6]
    tmp2, tmp5 = d[2] + d[5], d[2] - d[5]
    tmp3, tmp4 = d[3] + d[4], d[3] - d[4]
    tmp10, tmp13, tmp11, tmp12 = tmp0 + tmp3, tmp0 - tmp3, tmp1 + tmp2, tmp1 - tmp2
    out = [0] * 8
    out[0] = (tmp10 + tmp11) << CONST_BITS
    out[4] = (tmp10 - tmp11) << CONST_BITS
    z1 = (tmp12 + tmp13) * c(0.541196100)
    out[2] = z1 + tmp13 * c(0.765366865)
    out[6] = z1 - tmp12 * c(1.847759065)
    out[7], out[5], out[3], out[1] = _odd_part(tmp4, tmp5, tmp6, tmp7)
    return out


def _odd_part(a, b, g, d) -> tuple:
    """The odd-part rotation that jfdctint.c and jidctint.c share (inputs tmp4..7 forward, tmp0..3 inverse)."""
    c = lambda x: _fix(x, CONST_BITS)  # noqa: E731
    z1, z2, z3, z4 = a + d, b + g, a + g, b + d
    z5 = (z3 + z4) * c(1.175875602)
    a, b = a * c(0.298631336), b * c(2.053119869)
    g, d = g * c(3.072711026), d * c(1.501321110)
    z1, z2 = -z1 * c(0.899976223), -z2 * c(2.562915447)
    z3, z4 = -z3 * c(1.961570560) + z5, -z4 * c(0.390180644) + z5
    return a + z1 + z3, b + z2 + z4, g + z2 + z3, d + z1 + z4


def _idct_1d(d: list[int]) -> list[int]:
    """One pass of jidctint.c (on dequantised coefficients) before its final DESCALE."""
    c = lambda x: _fix(x, CONST_BITS)  # noqa: E731
    z2, z3 = d[2], d[6]
    z1 = (z2 + z3) * c(0.541196100)
    tmp2 = z1 - z3 * c(1.847759065)
    tmp3 = z1 + z2 * c(0.765366865)
    tmp0 = (d[0] + d[4]) << CONST_BITS
    tmp1 = (d[0] - d[4]) << CONST_BITS
    tmp10, tmp13, tmp11, tmp12 = tmp0 + tmp3, tmp0 - tmp3, tmp1 + tmp2, tmp1 - tmp2
    tmp0, tmp1, tmp2, tmp3 = _odd_part(d[7], d[5], d[3], d[1])
    return [tmp10 + tmp3, tmp11 + tmp2, tmp12 + tmp1, tmp13 + tmp0,
            tmp13 - tmp0, tmp12 - tmp1, tmp11 - tmp2, tmp10 - tmp3]  # fmt: skip


def _matrix_of(pass_1d) -> Tensor:
    """The integer matrix M of a linear 8-point pass: ``pass_1d(v) == M @ v`` (columns = unit vectors)."""
    cols = [pass_1d([int(i == j) for i in range(8)]) for j in range(8)]
    return torch.tensor(cols, dtype=torch.float64).T.contiguous()


def _dct_constants() -> Tensor:
    """(4, 9, 8): for the four passes (FDCT rows, FDCT columns, IDCT columns, IDCT rows) the 8x8
    matrix and, as a ninth row, its additive constants, both divided by the pass's DESCALE 2**s.

    Each pass is ``floor(x @ M.T / 2**s + k)``: ``k`` holds DESCALE's rounding half and, for the first
    FDCT pass, the level shift (``M @ (x - 128) = M @ x - 128 * M @ 1``), for the last IDCT pass the
    + 128 back. Dividing integers by a power of two is exact in binary floating point, and so is every
    partial sum (magnitudes < 2**32, far inside float64's 53 bits): the floor sees the exact value.
    """
    f, i = _matrix_of(_fdct_1d), _matrix_of(_idct_1d)
    s1, s2, s3 = CONST_BITS - PASS1_BITS, CONST_BITS + PASS1_BITS, CONST_BITS + PASS1_BITS + 3
    out = []
    for m, s, k in (
        (f, s1, 2.0 ** (s1 - 1) - 128 * f.sum(1)),
        (f, s2, torch.full((8,), 2.0 ** (s2 - 1))),
        (i, s1, torch.full((8,), 2.0 ** (s1 - 1))),
        (i, s3, torch.full((8,), 2.0 ** (s3 - 1) + 128 * 2.0**s3)),
    ):
        out.append(torch.cat([m, k[None]]) / 2**s)
    return torch.stack(out)


def _quant_constants(quality: int) -> Tensor:
    """(2, 2, 8, 1, 8): for luma and chroma, the quantisation scale ``(1 + 2**-16) / (8 q)`` and the
    table ``q`` itself, natural order [v][u], shaped to broadcast over a (..., 8, width / 8, 8) view.

    libjpeg divides the coefficient c (the FDCT output, scaled by 8) by 8 q rounding half away from zero.
    ``round(c * s)`` (round half to even) gives the same: c / (8 q) is a tie k + 1/2 exactly when it is
    one, and otherwise at least 1 / (8 q) from any half-integer; the (1 + 2**-16) scale moves every
    nonzero quotient away from zero by a relative 2**-16 (give or take the two roundings, each under a
    relative 2**-24 in float32), so a tie rounds away from zero and nothing else crosses a half-integer
    while |c| * 2**-15 < 1, i.e. |c| < 2**15 (the coefficients of 8-bit samples stay below 2**13).
    Checked exhaustively in float64 and float32 (tests/test_corruption_speedups.py).
    """
    q = torch.tensor([quant_table(LUMA_TABLE, quality), quant_table(CHROMA_TABLE, quality)], dtype=torch.float64)
    return torch.stack([_quant_scale(q), q], 1).view(2, 2, 8, 1, 8)


def _quant_scale(q: Tensor) -> Tensor:
    """The float64 scale that ``round(c * scale)`` quantises with (see :func:`_quant_constants`)."""
    return (1 + 2.0**-16) / (8 * q.double())


def _colour_constants() -> Tensor:
    """(4, 3, 3): RGB -> YCbCr matrix, its constants (column 0), YCbCr -> RGB matrix, its constants.

    jccolor.c: ``Y = (R_Y[r] + G_Y[g] + B_Y[b]) >> 16`` with the rounding half and the 128 offset of
    Cb/Cr (minus 1 there) in the tables. jdcolor.c adds Y outside its shift, ``y + ((k * (c - 128) +
    half) >> 16)``; Y is an integer, so that equals ``(65536 * y + k * (c - 128) + half) >> 16``, again
    one linear map and one shift.
    """
    fx = lambda x: _fix(x, SCALEBITS)  # noqa: E731
    half, one = 1 << (SCALEBITS - 1), 1 << SCALEBITS
    enc = [[fx(0.29900), fx(0.58700), fx(0.11400)],
           [-fx(0.16874), -fx(0.33126), fx(0.5)],
           [fx(0.5), -fx(0.41869), -fx(0.08131)]]  # fmt: skip
    enc_k = [half, (128 << SCALEBITS) + half - 1, (128 << SCALEBITS) + half - 1]
    dec = [[one, 0, fx(1.40200)], [one, -fx(0.34414), -fx(0.71414)], [one, fx(1.77200), 0]]
    dec_k = [half + sum(-128 * row[j] for j in (1, 2)) for row in dec]
    out = torch.zeros(4, 3, 3, dtype=torch.float64)  # divided by 2**16 below
    out[0], out[2] = torch.tensor(enc, dtype=torch.float64), torch.tensor(dec, dtype=torch.float64)
    out[1, :, 0], out[3, :, 0] = torch.tensor(enc_k, dtype=torch.float64), torch.tensor(dec_k, dtype=torch.float64)
    return out / one


# The full-resolution planes are kept channel-major in the order Cb, Cr, Y (see _roundtrip_padded): these
# put the RGB -> YCbCr rows and the YCbCr -> RGB columns in that order.
_PLANES = [1, 2, 0]


def _colour_matrices() -> Tensor:
    """(2, 3, 3): the RGB -> (Cb, Cr, Y) matrix and the (Cb, Cr, Y) -> RGB matrix (divided by 2**16)."""
    c = _colour_constants()
    return torch.stack([c[0][_PLANES], c[2][:, _PLANES]])


def _encode_bias(hp: int, wp: int) -> Tensor:
    """(3, hp * wp): the RGB -> (Cb, Cr, Y) constants of every pixel of an hp x wp image, with the
    h2v2 downsampling bias of each 2x2 block added to its top-left chroma sample.

    jcsample.c averages 2x2 chroma samples as ``(s00 + s01 + s10 + s11 + bias) >> 2``, bias 1, 2, 1, 2, ...
    along the output row. Each sample is a floor of (linear map + constant), and floor(v) + b equals
    floor(v + b) for an integer b, so the bias rides in the colour conversion's constant and the average
    is one pooling and one floor.
    """
    k = _colour_constants()[1, _PLANES, 0]
    out = k[:, None, None].repeat(1, hp, wp)
    out[:2, 0::2, 0::2] += torch.arange(wp // 2, dtype=torch.float64).remainder(2).add(1)
    return out.view(3, hp * wp)


def _decode_bias(hp: int, wp: int, fancy: bool) -> Tensor:
    """(3, hp * wp) (fancy) or (3, 1): the (Cb, Cr, Y) -> RGB constants per pixel.

    The fancy upsampling leaves its odd output columns one above libjpeg's value (see
    :func:`_upsample_h2v2_fancy`): there the constants take the Cb and Cr columns of the matrix back.
    """
    k = _colour_constants()[3, :, :1]
    if not fancy:
        return k
    m = _colour_matrices()[1]
    out = k.repeat(1, hp * wp).view(3, hp, wp)
    out[:, :, 1::2] -= (m[:, 0] + m[:, 1])[:, None, None]
    return out.view(3, hp * wp)


def _exact_dtype(device: torch.device) -> torch.dtype:
    return torch.float32 if device.type == "mps" else torch.float64  # MPS has no float64


# ------------------------------------------------------------------------------------ the pipeline


def _rows(src: Tensor, dst: Tensor, m: Tensor, k: Tensor) -> None:
    """``dst = floor(v @ m.T + k)`` for every run ``v`` of 8 samples along the rows of ``src`` (contiguous,
    widths multiples of 8); ``dst`` (same size, not overlapping ``src``) is written in place."""
    torch.addmm(k, src.view(-1, 8), m.T, out=dst.view(-1, 8)).floor_()


def _cols(src: Tensor, dst: Tensor, m: Tensor, k: Tensor, planes: tuple) -> None:
    """``dst = floor(m @ v + k)`` for every 8-row strip ``v`` of each plane: ``planes`` lists (start, end,
    width) of the flat planes packed in ``src`` / ``dst`` (heights multiples of 8): one product per width,
    one floor for all."""
    for start, end, width in planes:
        b = (end - start) // (8 * width)
        torch.baddbmm(k[:, None], m.expand(b, 8, 8), src[start:end].view(b, 8, width),
                      out=dst[start:end].view(b, 8, width))  # fmt: skip
    dst.floor_()


def _dct_roundtrip(region: Tensor, spare: Tensor, planes: tuple, quant: Tensor) -> None:
    """Level shift, islow FDCT, quantise, dequantise, islow IDCT, + 128, clamp, in place on the flat
    ``region`` (``spare``: scratch of the same size): integer-valued samples 0..255 -> the same, as libjpeg
    computes them. ``planes``: (start, end, width) of the luma planes, then of the chroma planes;
    ``quant``: :func:`_quant_constants`.

    The planes keep their layout: the row passes act on runs of 8 along a row (all planes in one product,
    as the runs are alike), the column passes on 8-row strips, so block (a, b) of a plane holds block
    (a, b)'s coefficients in natural order.
    """
    c = _ops.on_device(_dct_constants, device=region.device, dtype=region.dtype)
    _rows(region, spare, c[0, :8], c[0, 8])  # islow FDCT, scaled by 8 as in libjpeg
    _cols(spare, region, c[1, :8], c[1, 8], planes)
    coef = [region[start:end].view(-1, 8, width // 8, 8) for start, end, width in planes]
    for v, t in zip(coef, quant):  # quantise: c * (1 + 2**-16) / (8 q), rounded (see _quant_constants)
        v.mul_(t[0])
    region.round_()
    for v, t in zip(coef, quant):  # dequantise
        v.mul_(t[1])
    _cols(region, spare, c[2, :8], c[2, 8], planes)  # islow IDCT, + 128
    _rows(spare, region, c[3, :8], c[3, 8])
    region.clamp_(0, 255)


def _upsample_h2v2_fancy(c: Tensor, out: Tensor) -> None:
    """jdsample.c ``h2v2_fancy_upsample`` of (..., h, w) ``c`` into (..., 2h, 2w) ``out``, edges repeated:
    column sums ``3 * nearest + next nearest`` row-wise, then ``(3 * this + neighbour + 8 or 7) >> 4``.

    Done in sixteenths: with ``c' = c / 16 + 1/32`` (in place on ``c``) the column sums are ``s / 16 + 1/8``
    and the even columns ``floor(3 s' + s'_left)``, libjpeg's value. The odd columns need the rounding
    constant 7 instead of 8, i.e. ``floor(x - 1/16)`` for ``x = 3 s' + s'_right``, a multiple of 1/16: that
    is ``ceil(x) - 1``; ``out`` gets ``ceil(x)``, one pass less, and the YCbCr -> RGB constants of odd
    columns take the 1 back (:func:`_decode_bias`). All values are multiples of 1/32 below 2**9: exact.
    """
    h, w = c.shape[-2:]
    offset = _ops.on_device(torch.tensor, 1 / 32, device=c.device, dtype=c.dtype)
    torch.add(offset, c, alpha=1 / 16, out=c)  # c / 16 + 1/32 in one pass
    s = torch.empty(*c.shape[:-2], 2 * h, w, device=c.device, dtype=c.dtype)
    torch.add(c[..., :-1, :], c[..., 1:, :], alpha=3, out=s[..., 2::2, :])  # row 2i: c[i - 1] + 3 c[i]
    torch.add(c[..., 1:, :], c[..., :-1, :], alpha=3, out=s[..., 1:-1:2, :])  # row 2i + 1: c[i + 1] + 3 c[i]
    torch.mul(c[..., :1, :], 4, out=s[..., :1, :])  # first and last rows: the edge repeated, 4 c
    torch.mul(c[..., -1:, :], 4, out=s[..., -1:, :])
    even, odd = out[..., 0::2], out[..., 1::2]
    torch.add(s[..., :-1], s[..., 1:], alpha=3, out=even[..., 1:])
    torch.mul(s[..., :1], 4, out=even[..., :1])
    even.floor_()
    torch.add(s[..., 1:], s[..., :-1], alpha=3, out=odd[..., :-1])
    torch.mul(s[..., -1:], 4, out=odd[..., -1:])
    odd.ceil_()


def _ceil_to(n: int, m: int) -> int:
    return -(-n // m) * m


def _roundtrip_padded(levels: Tensor, quality: int) -> Tensor:
    """The JPEG round trip of (N, 3, H, W) ``levels`` (integer values 0..255, any dtype): (N, 3, Hp, Wp),
    the image padded to whole 16 px MCUs (rows and columns past H, W are to be cropped), exact dtype, not yet
    clamped to 0..255 (the callers clamp what they keep, after cropping and converting: fewer bytes).

    Memory layout, chosen so that no step copies a plane it does not compute:

    * the image is padded once, where it is converted to the exact dtype, by repeating its last column
      and row up to whole MCUs (libjpeg's rule for luma blocks and for chroma before averaging; rows past
      the luma blocks or the chroma's even height are computed and cropped, or replaced below);
    * RGB -> YCbCr writes the planes channel-major, Cb, Cr, Y, into one buffer, followed by the
      downsampled Cb and Cr: Y and the downsampled chroma are then one flat region whose DCT row passes,
      floors, rounding and clamp are one op each;
    * the chroma is upsampled into the (dead) full-resolution Cb and Cr planes, and YCbCr -> RGB reads
      the three planes where they lie, into the (dead) converted input.
    """
    n, _, h, w = levels.shape
    device, dtype = levels.device, _exact_dtype(levels.device)
    hp, wp = _ceil_to(h, 16), _ceil_to(w, 16)
    hc, wc, p = hp // 2, wp // 2, n * hp * wp
    x = torch.empty(n, 3, hp, wp, device=device, dtype=dtype)
    x[..., :h, :w].copy_(levels)
    if w < wp:  # whole MCUs: repeat the last column, then (below) the last row; nothing to do at 224 px
        x[..., :h, w:].copy_(x[..., :h, w - 1 : w])
    if h < hp:
        x[..., h:, :].copy_(x[..., h - 1 : h, :])
    del levels  # jpeg_roundtrip's rounded copy is freed here, before the buffers below are allocated
    mats = _ops.on_device(_colour_matrices, device=device, dtype=dtype)
    buf = torch.empty(3 * p + p // 2, device=device, dtype=dtype)
    full = buf[: 3 * p].view(3, n, hp, wp)  # Cb, Cr, Y
    bias = _ops.on_device(_encode_bias, hp, wp, device=device, dtype=dtype)
    torch.baddbmm(bias, mats[0].expand(n, 3, 3), x.view(n, 3, hp * wp), out=full.view(3, n, hp * wp).transpose(0, 1))
    buf[: 3 * p].floor_()
    # 4:2:0: 2x2 averages (biases already added: see _encode_bias), floored; then the last real chroma row
    # repeated to whole blocks (rows from image rows past the even height are replaced)
    small = buf[3 * p :].view(2 * n, 1, hc, wc)
    # (the public avg_pool2d has no out=: one small temporary, a quarter of a chroma plane, copied in)
    small.copy_(torch.nn.functional.avg_pool2d(full[:2].view(2 * n, 1, hp, wp), 2))
    small.floor_()
    rh, rw = (h + 1) // 2, (w + 1) // 2  # the chroma samples the image has
    if rh < hc:
        small[..., rh:, :].copy_(small[..., rh - 1 : rh, :])
    planes = ((0, p, wp), (p, p + p // 2, wc))  # within the region: Y, then Cb and Cr downsampled
    quant = _ops.on_device(_quant_constants, int(quality), device=device, dtype=dtype)
    _dct_roundtrip(buf[2 * p :], x.view(-1)[: p + p // 2], planes, quant)  # x is dead: scratch
    chroma = small.view(2, n, hc, wc)[..., :rh, :rw]
    up = full[:2, :, : 2 * rh, : 2 * rw]
    fancy = rw > 2
    if fancy:
        _upsample_h2v2_fancy(chroma, up)
    else:  # libjpeg-turbo's jinit_upsampler: plain 2x2 replication when the chroma is <= 2 samples wide
        up.unflatten(-1, (rw, 2)).unflatten(-3, (rh, 2)).copy_(chroma[:, :, :, None, :, None])
    bias = _ops.on_device(_decode_bias, hp, wp, fancy, device=device, dtype=dtype)
    out = x.view(n, 3, hp * wp)
    torch.baddbmm(bias, mats[1].expand(n, 3, 3), full.view(3, n, hp * wp).transpose(0, 1), out=out)
    return out.floor_().view(n, 3, hp, wp)


def jpeg_roundtrip_u8(images: Tensor, quality: int) -> Tensor:
    """Encode and decode (N, 3, H, W) ``images`` with values 0..255 (any dtype) as a baseline 4:2:0
    JPEG at ``quality``: libjpeg-turbo's pixels, as float64 (float32 on MPS) integers 0..255.

    Equal to Pillow's ``save(buf, "JPEG", quality=quality)`` + decode: see the module docstring for
    the steps and tests/test_jpeg.py for the measured agreement.
    """
    from . import jpeg_triton  # (imports this module)

    fast = jpeg_triton.try_roundtrip(images, quality, levels=True)  # CUDA: the same levels in two kernels
    if fast is not None:
        return fast
    h, w = images.shape[-2:]
    out = _roundtrip_padded(images, quality)
    return out.clamp_(0, 255) if out.shape[-2:] == (h, w) else out[..., :h, :w].clamp(0, 255)


def jpeg_roundtrip(x: Tensor, quality: int) -> Tensor:
    """Float (N, 3, H, W) in [0, 1] -> its JPEG round trip at ``quality`` as float32 levels k/255.

    The input is first rounded to 8-bit levels, as saving an image as JPEG does.
    """
    from . import jpeg_triton  # (imports this module)

    fast = jpeg_triton.try_roundtrip(x, quality)  # CUDA, float32: the same pixels in two Triton kernels
    if fast is not None:
        return fast
    h, w = x.shape[-2:]
    # round(clamp(x, 0, 1) * 255) in x's dtype with one new tensor: clamping the product to 0..255 gives the
    # same (the product is monotone in x and 1 * 255 is exact; NaN stays NaN). Passed without a name here,
    # so that _roundtrip_padded can free it once converted.
    padded = _roundtrip_padded(_ops.levels8(x), quality)
    return _ops.unit_float(padded[..., :h, :w]).clamp_(0, 1)  # clamped in float32: half the bytes
