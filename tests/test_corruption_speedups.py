"""Rules the faster glass_blur and spatter paths rest on, beyond the bit-for-bit comparisons with the
references in test_glass_blur.py and test_corruptions.py.

* glass_blur: int32 node indices (int64 past 2**31 - 1 nodes) and the int8 sign test for "source visited
  earlier" (int32 past delta 7) give the makers' loop bit for bit on either side of each switch; all the
  passes of all the images are resolved together, with one convergence check (host sync) at these sizes.
* spatter: the chamfer distance moves along every direction of a kind at once per doubling level, axial
  moves in uint8; it equals the one-direction-at-a-time schedule bit for bit on a single source, on every
  displacement in an image that is just its bounding box (which with min-linearity covers every input),
  and on random maps. Canny (int16, separable Sobel, float32 sector test, hysteresis in bordered uint8
  buffers) and equalizeHist equal OpenCV's exactly, long weak edges included; the 3x3 box blur keeps the
  reference's tap order on float maps; the separable box and the emboss equal the tap loop on whole numbers.
"""

from __future__ import annotations

import weakref

import numpy as np
import pytest
import torch
from test_glass_blur import hwc, makers_loop
from torch.utils._python_dispatch import TorchDispatchMode

from robustkit.corruptions import _ops, blur, jpeg, weather

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class CountOps(TorchDispatchMode):
    """Counts the aten ops dispatched inside it, by name."""

    def __init__(self):
        super().__init__()
        self.calls: dict[str, int] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.__name__.split(".")[0]
        self.calls[name] = self.calls.get(name, 0) + 1
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("wide_index", [False, True])
def test_glass_shuffle_index_widths_and_wide_deltas(wide_index, monkeypatch):
    if wide_index:  # as past 2**31 - 1 nodes, without allocating them
        monkeypatch.setattr(blur, "_index_dtype", lambda count: torch.int64)
    n, h, w = 2, 40, 44
    x = torch.rand(n, 3, h, w, generator=torch.Generator().manual_seed(1))  # all pixels distinct
    for delta in (2, 7, 8):  # 7: the last delta of the int8 sign test, 8: the first in int32
        offsets = blur.glass_offsets(n, h, w, delta, 2, torch.Generator().manual_seed(delta), x.device)
        ours = hwc(blur.glass_shuffle(x, offsets, delta))
        for i in range(n):
            assert np.array_equal(ours[i], makers_loop(hwc(x)[i], offsets[i].tolist(), delta)), (delta, i)


def test_glass_shuffle_resolves_every_pass_with_one_check():
    x = torch.rand(4, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    offsets = blur.glass_offsets(4, 64, 64, 2, 3, torch.Generator().manual_seed(3), x.device)  # severity 3
    with CountOps() as ops:
        blur.glass_shuffle(x, offsets, 2)
    assert ops.calls.get("_local_scalar_dense", 0) == 1, ops.calls  # the old loop checked 2 times per pass
    assert ops.calls.get("gather", 0) == 1, ops.calls  # int64 indices only for the image itself


def chamfer_one_direction_at_a_time(sources: torch.Tensor, cap: float) -> torch.Tensor:
    """The chamfer schedule as first written: 16 directions one after another (axial, diagonal, then the
    two knight kinds), each by doubling, every step d = min(d, d shifted + k * cost) in float32."""
    moves = [((0, 1), 1.0), ((1, 1), 1.4), ((1, 2), 2.1969), ((2, 1), 2.1969)]
    d = torch.where(sources, 0.0, cap + 10.0)
    h, w = d.shape[-2:]
    for (dr, dc), cost in moves:
        directions = {(sr * dr, sc * dc) for sr in (-1, 1) for sc in (-1, 1)}
        if dr == 0:
            directions |= {(dc, 0), (-dc, 0)}
        for ur, uc in sorted(directions):
            k = 1
            while k <= int(cap // cost):
                sr, sc = k * ur, k * uc
                if abs(sr) < h and abs(sc) < w:
                    src = d[..., max(sr, 0) : h + min(sr, 0), max(sc, 0) : w + min(sc, 0)] + k * cost
                    dst = d[..., max(-sr, 0) : h + min(-sr, 0), max(-sc, 0) : w + min(-sc, 0)]
                    torch.minimum(dst, src, out=dst)
                k *= 2
    return d.clamp(max=cap)


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and torch.equal(a.contiguous().view(torch.int32), b.contiguous().view(torch.int32))


def test_chamfer_equals_one_direction_at_a_time():
    """Both schedules are compositions of min(d, shifted d + c), so a map's distances are the minimum over its
    sources of single-source ones. A single source in the middle of an 81 px image gives every displacement's
    distance with no border in reach (a path cheaper than 20 stays within 20 px); an image that is just the
    displacement's bounding box, the source in one corner, gives it with every detour cut off; any image lies
    in between. So equal there means equal on every input."""
    cap = 20.0
    centre = torch.zeros(1, 1, 81, 81, dtype=torch.bool)
    centre[..., 40, 40] = True
    far = weather.chamfer_distance(centre, cap)
    assert same_bits(far, chamfer_one_direction_at_a_time(centre, cap))
    for vr in range(21):
        for vc in range(21):
            s = torch.zeros(4, 1, vr + 1, vc + 1, dtype=torch.bool)
            s[0, 0, 0, 0] = s[1, 0, 0, vc] = s[2, 0, vr, 0] = s[3, 0, vr, vc] = True
            d = weather.chamfer_distance(s, cap)
            got = torch.stack([d[0, 0, vr, vc], d[1, 0, vr, 0], d[2, 0, 0, vc], d[3, 0, 0, 0]])
            want = far[0, 0, [40 + vr, 40 + vr, 40 - vr, 40 - vr], [40 + vc, 40 - vc, 40 + vc, 40 - vc]]
            assert same_bits(got, want), (vr, vc)
    g = torch.Generator().manual_seed(4)
    for h, w in ((32, 32), (61, 47), (5, 70), (1, 9)):
        for density in (0.0, 0.01, 0.2):
            s = torch.rand(3, 1, h, w, generator=g) < density
            assert same_bits(weather.chamfer_distance(s, cap), chamfer_one_direction_at_a_time(s, cap)), (h, w)


def long_weak_edges() -> torch.Tensor:
    """Step edges whose height falls along them, so only one end is strong: hysteresis needs ~200 passes."""
    img = torch.zeros(3, 1, 64, 200)
    img[0, 0, 32:, :] = torch.linspace(40, 13, 200).round()
    img[1, 0, :, 20:] = torch.linspace(40, 14, 64)[:, None].round()
    img[2] = torch.randint(0, 256, (1, 64, 200), generator=torch.Generator().manual_seed(5)).float()
    img[2, 0, 10:50, 10:190] = 90.0
    return img


def test_canny_and_equalize_hist_equal_opencv():
    cv2 = pytest.importorskip("cv2")
    g = torch.Generator().manual_seed(6)
    liquid = _ops.gaussian_filter(0.65 + 0.3 * torch.randn(4, 1, 48, 40, generator=g), 2.0)
    images = [torch.floor(torch.where(liquid < 0.68, 0.0, liquid).clamp(0, 1) * 255),
              torch.randint(0, 256, (4, 1, 33, 45), generator=g).float(), long_weak_edges(),
              long_weak_edges().transpose(-1, -2).contiguous(), torch.randint(0, 256, (2, 1, 1, 9), generator=g).float()]
    for img in images:
        u8 = [a[0].numpy().astype(np.uint8) for a in img]
        edges = weather.canny(img, 50, 150)
        assert np.array_equal(edges[:, 0].numpy(), np.stack([cv2.Canny(a, 50, 150) > 0 for a in u8])), img.shape
        assert np.array_equal(weather.equalize_hist(img)[:, 0].numpy(),
                              np.stack([cv2.equalizeHist(a) for a in u8]).astype(np.float32)), img.shape


@pytest.mark.parametrize("size", [(32, 32), (7, 40), (2, 5), (1, 6)])
def test_box_blurs_and_emboss_equal_the_tap_loop(size):
    g = torch.Generator().manual_seed(7)
    floats = weather.chamfer_distance(torch.rand(3, 1, *size, generator=g) < 0.05, 20.0)  # the map _box3 gets
    ones = torch.ones(3, 3)
    assert same_bits(weather._box3(floats), _ops.conv2d_same(floats, ones, "reflect101") / 9)
    whole = torch.randint(0, 256, (3, 1, *size), generator=g).float()
    assert same_bits(weather._box3_whole(whole), _ops.conv2d_same(whole, ones, "reflect101") / 9)
    emboss = [[-2.0, -1.0, 0.0], [-1.0, 1.0, 1.0], [0.0, 1.0, 2.0]]
    assert same_bits(weather._emboss(whole), torch.round(_ops.conv2d_same(whole, emboss, "reflect101")))


# ------------------------------------------------------------------------------ jpeg_compression


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_jpeg_quantisation_by_scaled_round_is_libjpegs_rule(dtype):
    """``round(c * (1 + 2**-16) / (8 q))`` (half to even) equals libjpeg's ``sign(c) * ((|c| + 4 q) // (8 q))``
    (half away from zero) for every coefficient |c| <= 2**15 (8-bit samples give |c| < 2**13) and every
    baseline table entry q = 1..255, in float64 and in float32 (MPS): exhaustively."""
    c = torch.arange(-(2**15), 2**15 + 1, dtype=torch.float64)[:, None]
    q = torch.arange(1, 256, dtype=torch.float64)[None, :]
    libjpeg = torch.sign(c) * torch.div(c.abs() + 4 * q, 8 * q, rounding_mode="floor")
    ours = torch.round(c.to(dtype) * jpeg._quant_scale(q).to(dtype))
    assert torch.equal(ours.double(), libjpeg)


class WrittenByCopies(TorchDispatchMode):
    """Elements written by each ``copy_`` dispatched inside it, and the names of the other ops."""

    def __init__(self):
        super().__init__()
        self.copies: list[int] = []
        self.names: set[str] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.__name__.split(".")[0]
        if name == "copy_":
            self.copies.append(args[0].numel())
        self.names.add(name)
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("h, w", [(32, 48), (40, 24), (34, 16), (16, 9), (37, 45), (2, 6)])
def test_jpeg_pads_only_partial_mcus(h, w):
    """libjpeg repeats the last column and row up to whole 16 px MCUs (chroma: the last chroma row past the
    image's even height). The conversion to float64 writes the image into the padded buffer and copies
    only the missing strips, each padded sample once (plus the downsampled chroma, copied into place); sizes in whole
    MCUs (224 px) pad nothing. Widths
    and heights on either side of 8, 16 and even are checked against Pillow."""
    from test_jpeg import pillow_jpeg

    images = torch.randint(0, 256, (2, 3, h, w), generator=torch.Generator().manual_seed(8), dtype=torch.uint8)
    jpeg.jpeg_roundtrip_u8(images, 50)  # the cached tables are built outside the count
    with WrittenByCopies() as ops:
        ours = jpeg.jpeg_roundtrip_u8(images, 50)
    hp, wp = -(-h // 16) * 16, -(-w // 16) * 16
    chroma_rows = hp // 2 - (h + 1) // 2  # repeated after averaging
    pooled = 2 * 2 * (hp // 2) * (wp // 2)  # the 2x2 chroma averages copied into place (public avg_pool2d: no out=)
    assert sum(ops.copies) == 2 * 3 * hp * wp + pooled + 2 * 2 * chroma_rows * wp // 2, ops.copies
    assert ops.copies[0] == 2 * 3 * h * w and len(ops.copies) == 2 + (w < wp) + (h < hp) + (chroma_rows > 0)
    assert "index_select" not in ops.names and "cat" not in ops.names
    assert torch.equal(ours, pillow_jpeg(images, 50).double())


def fancy_upsample_libjpeg(c: torch.Tensor) -> torch.Tensor:
    """jdsample.c h2v2_fancy_upsample in integers: column sums 3 * nearest + next nearest row, then
    (3 * this + neighbour + 8) >> 4 on even output columns, + 7 on odd ones; edges repeated."""
    h, w = c.shape[-2:]
    i, j = torch.arange(h), torch.arange(w)
    rows = torch.stack([3 * c + c[..., (i - 1).clamp(min=0), :], 3 * c + c[..., (i + 1).clamp(max=h - 1), :]], -2)
    s = rows.flatten(-3, -2)
    cols = torch.stack([(3 * s + s[..., (j - 1).clamp(min=0)] + 8) >> 4, (3 * s + s[..., (j + 1).clamp(max=w - 1)] + 7) >> 4], -1)
    return cols.flatten(-2)


@pytest.mark.parametrize("h, w", [(6, 10), (5, 7), (1, 3), (2, 4)])
def test_jpeg_colour_constants_absorb_downsample_bias_and_odd_column_rounding(h, w):
    """Two roundings ride in per-pixel colour-conversion constants: (a) jcsample.c's 2x2 average bias
    (1, 2, 1, 2, ... along the row) is added to the top-left sample's constant before its floor, so the
    average is a pooling and a floor; (b) the fancy upsampling stores its odd columns one above libjpeg's
    value (a ceil instead of a subtract and floor) and the YCbCr -> RGB constants of odd columns take it
    back. Both equal libjpeg's integer formulas exactly."""
    g = torch.Generator().manual_seed(9)
    # (a) RGB -> YCbCr of a 2h x 2w image, then h2v2_downsample
    rgb = torch.randint(0, 256, (2, 3, 2 * h, 2 * w), generator=g).double()
    m, k = jpeg._colour_constants()[0], jpeg._colour_constants()[1, :, :1]
    ycc = torch.floor(m @ rgb.view(2, 3, -1) + k).view(2, 3, 2 * h, 2 * w).long()
    blocks = ycc[:, 1:].unflatten(-1, (w, 2)).unflatten(-3, (h, 2)).sum((-3, -1))
    libjpeg_chroma = (blocks + torch.arange(w) % 2 + 1) >> 2
    mats = jpeg._colour_matrices()
    planes = torch.floor(mats[0] @ rgb.view(2, 3, -1) + jpeg._encode_bias(2 * h, 2 * w)).view(2, 3, 2 * h, 2 * w)
    ours = torch.floor(torch.nn.functional.avg_pool2d(planes[:, :2], 2))
    assert torch.equal(ours, libjpeg_chroma.double()) and torch.equal(planes[:, 2], ycc[:, 0].double())
    # (b) upsample h x w chroma, then YCbCr -> RGB
    c = torch.randint(0, 256, (2, 2, h, w), generator=g)
    up = torch.empty(2, 2, 2 * h, 2 * w, dtype=torch.float64)
    jpeg._upsample_h2v2_fancy(c.double(), up)
    libjpeg_up = fancy_upsample_libjpeg(c).double()
    assert torch.equal(up[..., 0::2], libjpeg_up[..., 0::2]) and torch.equal(up[..., 1::2], libjpeg_up[..., 1::2] + 1)
    y = torch.randint(0, 256, (2, 1, 2 * h, 2 * w), generator=g).double()
    dec, dec_k = jpeg._colour_constants()[2], jpeg._colour_constants()[3, :, :1]
    libjpeg_rgb = torch.floor(dec @ torch.cat([y, libjpeg_up], 1).view(2, 3, -1) + dec_k)
    ours_rgb = torch.floor(mats[1] @ torch.cat([up, y], 1).view(2, 3, -1) + jpeg._decode_bias(2 * h, 2 * w, True))
    assert torch.equal(ours_rgb, libjpeg_rgb)


# ------------------------------------------------------------------------------------- zoom_blur


def zoom_blur_as_first_written(x: torch.Tensor, zooms, preset: str) -> torch.Tensor:
    """The reference's loop: a copy of x, each zoom added in place in turn, divided by the count."""
    n, _, h, w = x.shape
    variant = "imagecorruptions" if preset == "imagenet-c" else "cifar"
    out = x.clone()
    for z in zooms:
        if z == 1.0:
            out.add_(x)
            continue
        grid = blur._zoom_grid_cpu(h, w, float(z), variant)
        out.add_(torch.nn.functional.grid_sample(x, grid.expand(n, h, w, 2), mode="bilinear",
                                                 padding_mode="border", align_corners=True))  # fmt: skip
    return out / (len(zooms) + 1)


class OneZoomAtATime(CountOps):
    """CountOps that also records, at each resample, how many earlier resamples are still alive."""

    def __init__(self):
        super().__init__()
        self.zoomed: list[weakref.ref] = []
        self.alive: list[int] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = super().__torch_dispatch__(func, types, args, kwargs)
        if func.__name__.split(".")[0] == "grid_sampler_2d":
            self.alive.append(sum(r() is not None for r in self.zoomed))
            self.zoomed.append(weakref.ref(out))
        return out


@pytest.mark.parametrize("preset", ["imagenet-c", "cifar-10-c"])
def test_zoom_blur_sums_in_the_reference_order_without_a_copy_of_x(preset):
    """The first sum is written straight to the output and the mean is taken in place; the additions keep
    their order (x, then the factors in turn), so the result is the same, bit for bit. Each zoom is freed
    before the next is sampled (one temporary at a time, as before)."""
    from robustkit.corruptions.presets import params

    g = torch.Generator().manual_seed(10)
    for h, w in ((32, 32), (37, 45), (3, 5)):
        x = torch.rand(2, 3, h, w, generator=g)
        for severity in range(1, 6):
            zooms = params(preset, "zoom_blur", severity)
            with OneZoomAtATime() as ops:
                ours = blur.zoom_blur(x, zooms, None, preset)
            assert same_bits(ours, zoom_blur_as_first_written(x, zooms, preset)), (h, w, severity)
            assert "clone" not in ops.calls and ops.calls.get("grid_sampler_2d") == sum(z != 1.0 for z in zooms)
            assert ops.alive == [0] * len(ops.alive), ops.alive


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.int32, torch.uint8])
def test_unit_float_is_the_two_step_conversion_for_every_level(dtype):
    """jpeg, pixelate and the released storage turn their 8-bit levels into k / 255 in one op; from float64 the
    quotient is rounded twice (float64, then float32), which must equal float32(k) / 255 for all 256 levels."""
    levels = torch.arange(256).to(dtype).view(1, 1, 16, 16)
    got = _ops.unit_float(levels[..., :, 3:])   # a strided view, as the jpeg crop passes
    assert got.dtype == torch.float32 and got.is_contiguous()
    assert torch.equal(got, levels[..., :, 3:].to(torch.float32).div_(255))


def test_tables_reach_their_device_through_to_device_with_the_cpus_values(monkeypatch):
    """The corruptions' CPU-made tables go to the device through _ops.to_device (on CUDA: page-locked, no host wait;
    tests/test_gpu.py checks that no pageable copy is left): converted on the CPU, values unchanged."""
    from robustkit.corruptions import _ops, corrupt, weather

    table = torch.arange(12, dtype=torch.float64).view(3, 4) / 7
    out = _ops.to_device(table, "cpu", torch.float32)
    assert out.dtype == torch.float32 and out.device.type == "cpu" and torch.equal(out, table.float())
    assert _ops.to_device(table, torch.device("cpu")) is table   # nothing to copy

    tries = []

    def no_locked_memory(self):
        tries.append(1)
        raise RuntimeError("cudaHostAlloc failed: out of memory")
    with monkeypatch.context() as m:   # where page-locked memory cannot be had, the plain copy is made, and it is
        m.setattr(torch.Tensor, "pin_memory", no_locked_memory)   # not asked for again
        m.setattr(_ops, "_NO_PINNED_MEMORY", [])
        assert _ops._pinned(table) is None and _ops._pinned(table) is None and len(tries) == 1
        assert _ops._NO_PINNED_MEMORY == ["cudaHostAlloc failed: out of memory"]
    seen = []
    real = _ops.to_device
    monkeypatch.setattr(_ops, "to_device", lambda t, device, dtype=None: seen.append(tuple(t.shape)) or
                        real(t, device, dtype))
    _ops._on_device_cached.cache_clear()
    weather._frost_bank.cache_clear()
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    for name in ("gaussian_blur", "defocus_blur", "frost"):
        seen.clear()
        corrupt(x, name, 2, preset="cifar-10-c", seed=0)
        assert seen, f"{name}: no table went through to_device"
    _ops._on_device_cached.cache_clear()
    weather._frost_bank.cache_clear()
