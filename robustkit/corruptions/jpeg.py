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

Every step is integer arithmetic, as in libjpeg. The colour steps run on int32 tensors. Each pass
of the two DCTs is an integer linear map followed by one rounding shift (``DESCALE``), so it is a
batched matrix product with an integer matrix (the butterfly of the C code applied to unit vectors);
the products are taken in float64, which holds every partial sum exactly (< 2**31), so the result is
the same integer on any device, in any summation order, TF32 or not. The only per-image work is
nothing: the batch is one stack of 8x8 blocks.
"""

from __future__ import annotations

from functools import lru_cache

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
    z1, z2, z3, z4 = tmp4 + tmp7, tmp5 + tmp6, tmp4 + tmp6, tmp5 + tmp7
    z5 = (z3 + z4) * c(1.175875602)
    tmp4, tmp5 = tmp4 * c(0.298631336), tmp5 * c(2.053119869)
    tmp6, tmp7 = tmp6 * c(3.072711026), tmp7 * c(1.501321110)
    z1, z2 = -z1 * c(0.899976223), -z2 * c(2.562915447)
    z3, z4 = -z3 * c(1.961570560) + z5, -z4 * c(0.390180644) + z5
    out[7] = tmp4 + z1 + z3
    out[5] = tmp5 + z2 + z4
    out[3] = tmp6 + z2 + z3
    out[1] = tmp7 + z1 + z4
    return out


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
    tmp0, tmp1, tmp2, tmp3 = d[7], d[5], d[3], d[1]
    z1, z2, z3, z4 = tmp0 + tmp3, tmp1 + tmp2, tmp0 + tmp2, tmp1 + tmp3
    z5 = (z3 + z4) * c(1.175875602)
    tmp0, tmp1 = tmp0 * c(0.298631336), tmp1 * c(2.053119869)
    tmp2, tmp3 = tmp2 * c(3.072711026), tmp3 * c(1.501321110)
    z1, z2 = -z1 * c(0.899976223), -z2 * c(2.562915447)
    z3, z4 = -z3 * c(1.961570560) + z5, -z4 * c(0.390180644) + z5
    tmp0, tmp1, tmp2, tmp3 = tmp0 + z1 + z3, tmp1 + z2 + z4, tmp2 + z2 + z3, tmp3 + z1 + z4
    return [tmp10 + tmp3, tmp11 + tmp2, tmp12 + tmp1, tmp13 + tmp0,
            tmp13 - tmp0, tmp12 - tmp1, tmp11 - tmp2, tmp10 - tmp3]  # fmt: skip


def _matrix_of(pass_1d) -> Tensor:
    """The integer matrix M of a linear 8-point pass: ``pass_1d(v) == M @ v`` (columns = unit vectors)."""
    cols = [pass_1d([int(i == j) for i in range(8)]) for j in range(8)]
    return torch.tensor(cols, dtype=torch.float64).T.contiguous()


def _tables(quality: int) -> Tensor:
    """(2, 8, 8) quantisation tables (luma, chroma) for ``quality``."""
    return torch.tensor([quant_table(LUMA_TABLE, quality), quant_table(CHROMA_TABLE, quality)], dtype=torch.int32)


def _exact_dtype(device: torch.device) -> torch.dtype:
    return torch.float32 if device.type == "mps" else torch.float64  # MPS has no float64


def _descale(x: Tensor, n: int) -> Tensor:
    """libjpeg's ``DESCALE``: round-half-up right shift by ``n`` bits (exact on integer floats)."""
    return torch.floor((x + float(1 << (n - 1))) * (1.0 / (1 << n)))


# ------------------------------------------------------------------------------------ the pipeline


def _to_blocks(p: Tensor) -> Tensor:
    """(N, C, 8a, 8b) -> (N, C, a, b, 8, 8)."""
    n, c, h, w = p.shape
    return p.reshape(n, c, h // 8, 8, w // 8, 8).permute(0, 1, 2, 4, 3, 5)


def _from_blocks(b: Tensor) -> Tensor:
    n, c, a, bw = b.shape[:4]
    return b.permute(0, 1, 2, 4, 3, 5).reshape(n, c, a * 8, bw * 8)


def _dct_roundtrip(planes: Tensor, q: Tensor) -> Tensor:
    """Level shift, islow FDCT, quantise with ``q`` (C, 8, 8), dequantise, islow IDCT, + 128, clamp.

    ``planes`` (N, C, 8a, 8b) int32 samples 0..255 -> same shape, int32.
    """
    dtype = _exact_dtype(planes.device)
    f = _ops.on_device(_matrix_of, _fdct_1d, device=planes.device, dtype=dtype)
    i = _ops.on_device(_matrix_of, _idct_1d, device=planes.device, dtype=dtype)
    blk = _to_blocks(planes).to(dtype) - 128.0  # (..., y, x)
    blk = _descale(blk @ f.T, CONST_BITS - PASS1_BITS)  # pass 1: rows  -> (..., y, u)
    blk = _descale(blk.transpose(-1, -2) @ f.T, CONST_BITS + PASS1_BITS)  # pass 2: columns -> (..., u, v)
    coef = blk.to(torch.int32)  # exact: |coef| < 2**15
    div = (q.transpose(-1, -2) * 8)[None, :, None, None]  # islow output carries a factor 8; (u, v) order
    quant = torch.sign(coef) * torch.div(coef.abs() + div // 2, div, rounding_mode="floor")
    deq = (quant * q.transpose(-1, -2)[None, :, None, None]).to(dtype)  # (..., u, v)
    ws = _descale(deq @ i.T, CONST_BITS - PASS1_BITS)  # pass 1: columns -> (..., u, y)
    out = _descale(ws.transpose(-1, -2) @ i.T, CONST_BITS + PASS1_BITS + 3)  # pass 2: rows -> (..., y, x)
    return _from_blocks((out + 128.0).clamp(0, 255).to(torch.int32))


def _rgb_to_ycc(rgb: Tensor) -> Tensor:
    """jccolor.c ``rgb_ycc_convert`` on int32 (N, 3, H, W) -> int32 (N, 3, H, W)."""
    r, g, b = rgb.unbind(1)
    fx = lambda x: _fix(x, SCALEBITS)  # noqa: E731
    half, offset = 1 << (SCALEBITS - 1), 128 << SCALEBITS
    y = (fx(0.29900) * r + fx(0.58700) * g + fx(0.11400) * b + half) >> SCALEBITS
    cb = (-fx(0.16874) * r - fx(0.33126) * g + fx(0.5) * b + offset + half - 1) >> SCALEBITS
    cr = (fx(0.5) * r - fx(0.41869) * g - fx(0.08131) * b + offset + half - 1) >> SCALEBITS
    return torch.stack([y, cb, cr], 1)


def _ycc_to_rgb(ycc: Tensor) -> Tensor:
    """jdcolor.c ``ycc_rgb_convert`` on int32 (N, 3, H, W), clamped to 0..255."""
    y, cb, cr = ycc[:, 0], ycc[:, 1] - 128, ycc[:, 2] - 128
    fx = lambda x: _fix(x, SCALEBITS)  # noqa: E731
    half = 1 << (SCALEBITS - 1)
    r = y + ((fx(1.40200) * cr + half) >> SCALEBITS)
    g = y + ((-fx(0.34414) * cb - fx(0.71414) * cr + half) >> SCALEBITS)
    b = y + ((fx(1.77200) * cb + half) >> SCALEBITS)
    return torch.stack([r, g, b], 1).clamp(0, 255)


def _downsample_h2v2(c: Tensor) -> Tensor:
    """jcsample.c ``h2v2_downsample``: (s00 + s01 + s10 + s11 + bias) >> 2, bias 1, 2, 1, 2, ..."""
    s = c[..., 0::2, 0::2] + c[..., 0::2, 1::2] + c[..., 1::2, 0::2] + c[..., 1::2, 1::2]
    bias = torch.arange(s.shape[-1], device=c.device, dtype=torch.int32) % 2 + 1
    return (s + bias) >> 2


def _upsample_h2v2_fancy(c: Tensor) -> Tensor:
    """jdsample.c ``h2v2_fancy_upsample`` on (N, C, h, w) -> (N, C, 2h, 2w), edges repeated."""
    h, w = c.shape[-2:]
    p = _ops.pad2d(c, 1, 1, 0, 0, "edge")
    mid = 3 * c
    rows = torch.stack([mid + p[..., 0:h, :], mid + p[..., 2 : h + 2, :]], -2)  # above / below: (..., h, 2, w)
    s = _ops.pad2d(rows.reshape(*c.shape[:-2], 2 * h, w), 0, 0, 1, 1, "edge")  # column sums, edge-padded
    mid = 3 * s[..., 1 : w + 1]
    cols = torch.stack([(mid + s[..., 0:w] + 8) >> 4, (mid + s[..., 2 : w + 2] + 7) >> 4], -1)
    return cols.reshape(*c.shape[:-2], 2 * h, 2 * w)


def _ceil_to(n: int, m: int) -> int:
    return -(-n // m) * m


def jpeg_roundtrip_u8(images: Tensor, quality: int) -> Tensor:
    """Encode and decode uint8-valued (N, 3, H, W) ``images`` as a baseline 4:2:0 JPEG at ``quality``.

    Returns int32 (N, 3, H, W) in 0..255, equal to Pillow/libjpeg-turbo's ``save(..., quality=quality)``
    + decode (see the module docstring for the steps; the measured fidelity is in tests/test_jpeg.py).
    """
    n, _, h, w = images.shape
    tables = _ops.on_device(_tables, int(quality), device=images.device, dtype=torch.int32)
    ycc = _rgb_to_ycc(images.to(torch.int32))
    # luma: whole 8x8 blocks, last column / row repeated
    y = _ops.pad2d(ycc[:, :1], 0, _ceil_to(h, 8) - h, 0, _ceil_to(w, 8) - w, "edge")
    y = _dct_roundtrip(y, tables[:1])[..., :h, :w]
    # chroma: image padded to an even height and a whole 16 px MCU width, averaged, rows to whole blocks
    c = _ops.pad2d(ycc[:, 1:], 0, _ceil_to(h, 2) - h, 0, _ceil_to(w, 16) - w, "edge")
    c = _downsample_h2v2(c)
    c = _ops.pad2d(c, 0, _ceil_to(h, 16) // 2 - c.shape[-2], 0, 0, "edge")
    c = _dct_roundtrip(c, tables[1:].expand(2, 8, 8))[..., : (h + 1) // 2, : (w + 1) // 2]
    if c.shape[-1] > 2:
        c = _upsample_h2v2_fancy(c)[..., :h, :w]
    else:  # libjpeg-turbo's jinit_upsampler: plain 2x2 replication when the chroma is <= 2 samples wide
        c = c.repeat_interleave(2, -2).repeat_interleave(2, -1)[..., :h, :w]
    return _ycc_to_rgb(torch.cat([y, c], 1))


def jpeg_roundtrip(x: Tensor, quality: int) -> Tensor:
    """Float (N, 3, H, W) in [0, 1] -> its JPEG round trip at ``quality`` as float32 levels k/255.

    The input is first rounded to 8-bit levels, as saving an image as JPEG does.
    """
    u8 = torch.round(x.clamp(0, 1) * 255)
    return jpeg_roundtrip_u8(u8, quality).to(torch.float32) / 255
