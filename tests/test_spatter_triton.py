"""The Triton Canny edges and chamfer distance (robustkit/corruptions/spatter_triton.py) equal the torch path bit for
bit (and OpenCV's Canny).

On the CPU the kernels run in Triton's interpreter (tests/triton_interpreter.py), mostly with larger tiles than
shipped (the interpreter's cost is per program; the shipped tiles run one case, and compile in the last test);
tests/test_gpu.py compares them on CUDA.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from test_corruption_speedups import long_weak_edges, same_bits
from triton_interpreter import compile_for_h100, run_interpreted

from robustkit.corruptions import _ops, spatter_triton, weather
from robustkit.corruptions.presets import params

pytestmark = pytest.mark.skipif(spatter_triton.triton is None, reason="Triton is not installed")


def test_kernels_equal_the_torch_path(tmp_path):
    """As tests/test_corruption_speedups.py argues for the torch path: a single source in the middle of an 81 px
    image gives every displacement's distance with no border in reach, and sources in the corners of small images
    give displacements with every detour cut off; random maps of several densities and sizes, several caps."""
    g = torch.Generator().manual_seed(4)
    centre = torch.zeros(1, 1, 81, 81, dtype=torch.bool)
    centre[..., 40, 40] = True
    cases = {"centre": (centre, 20.0)}
    for vr, vc in ((0, 20), (13, 7), (20, 20)):   # (the interpreter costs ~0.15 s per program: few images)
        s = torch.zeros(4, 1, vr + 1, vc + 1, dtype=torch.bool)
        s[0, 0, 0, 0] = s[1, 0, 0, vc] = s[2, 0, vr, 0] = s[3, 0, vr, vc] = True
        cases[f"corners {vr}x{vc}"] = (s, 20.0)
    for h, w in ((32, 32), (61, 47), (5, 70), (1, 9)):
        cases[f"random {h}x{w}"] = (torch.rand(3, 1, h, w, generator=g) < torch.tensor([0.0, 0.01, 0.2]).view(3, 1, 1, 1),
                                    20.0)
    for cap in (5.0, 12.5, 31.0):
        cases[f"cap {cap}"] = (torch.rand(1, 1, 40, 50, generator=g) < 0.02, cap)
    cases["shipped tiles"] = (torch.rand(1, 1, 21, 45, generator=g) < 0.05, 20.0)
    big = dict(BLOCK_H=64, BLOCK_W=128)
    settings = {key: big for key in cases}
    settings["shipped tiles"] = dict(BLOCK_H=spatter_triton.BLOCK_H, BLOCK_W=spatter_triton.BLOCK_W)
    # the taps in a loop over k at run time (UNROLL_TAPS off): every displacement up to the cap (the centre: its
    # last k too), every level's cost (cap 31: k up to 31, all five bits) and cut-off corners; last, since a case's
    # settings stay for the cases after it
    for key in ("centre", "cap 31.0", "corners 13x7"):
        cases[f"loop: {key}"] = cases[key]
        settings[f"loop: {key}"] = {**settings[key], "UNROLL_TAPS": False}
    got = run_interpreted("robustkit.corruptions.spatter_triton:distance", cases, tmp_path, settings)
    assert set(got) == set(cases)
    for key, (sources, cap) in cases.items():
        assert same_bits(got[key], weather.chamfer_distance(sources, cap)), key


def _liquid8(preset: str, severity: int, n: int, h: int, w: int, seed: int) -> torch.Tensor:
    """The uint8-valued liquid layer spatter's water mask runs Canny on (as weather.spatter draws it)."""
    loc, scale, sigma, thresh = params(preset, "spatter", severity)[:4]
    raw = loc + scale * torch.randn((n, 1, h, w), generator=torch.Generator().manual_seed(seed))
    liquid = _ops.gaussian_filter(raw, float(sigma))
    return torch.floor(torch.where(liquid < thresh, 0.0, liquid).clamp(0, 1) * 255)


def test_canny_equals_the_torch_path_and_opencv(tmp_path):
    """Water-drop liquid layers of every water severity, random images (edges everywhere), 1-pixel-high images,
    and long weak edges that only hysteresis reaches, pass after pass (over 50 passes: several checks)."""
    g = torch.Generator().manual_seed(6)
    cases = {f"liquid {preset} s{sev}": (_liquid8(preset, sev, 2, 50, 60, seed=sev), 50, 150)
             for preset in ("imagenet-c", "cifar-10-c") for sev in (1, 2, 3)}
    cases["random"] = (torch.randint(0, 256, (2, 1, 33, 45), generator=g).float(), 50, 150)
    cases["one row"] = (torch.randint(0, 256, (2, 1, 1, 9), generator=g).float(), 50, 150)
    weak = long_weak_edges()[:1, :, 16:48, :72]   # one step edge, strong at one end only
    cases["long weak edges"] = (torch.cat([weak, weak.flip(-1)]).contiguous(), 50, 150)
    cases["long weak edges, transposed"] = (weak.transpose(-1, -2).contiguous(), 50, 150)
    settings = {key: dict(BLOCK_H=64, BLOCK_W=128) for key in cases}   # (the interpreter's cost is per program)
    got = run_interpreted("robustkit.corruptions.spatter_triton:canny", cases, tmp_path, settings)
    cv2 = None
    try:
        import cv2
    except ImportError:
        pass
    for key, (img, low, high) in cases.items():
        want = weather.canny(img, low, high)
        assert got[key].dtype == torch.bool and torch.equal(got[key], want), key
        if cv2 is not None:   # the reference itself
            ref = np.stack([cv2.Canny(a[0].numpy().astype(np.uint8), low, high) > 0 for a in img])
            assert np.array_equal(got[key][:, 0].numpy(), ref), key
    # the growth reached far: over 50 pixels past the strong ones, at least one pass each (several checks)
    img, low, high = cases["long weak edges"]
    assert int(got["long weak edges"].sum()) - int(weather.canny(img, high, high).sum()) > 2 * 50


def test_water_mask_and_blend_equal_the_torch_path(tmp_path):
    """The rest of the water drops after the distance map (box blur, floor, equalisation, emboss, box blur, round,
    times the liquid layer) and the final blend, on every water severity of both presets, odd sizes, 2 px images,
    and an image with no drop (peak 0: left as it is)."""
    masks, blends, want = {}, {}, {}
    for preset, severity, (h, w) in (("imagenet-c", 1, (33, 47)), ("imagenet-c", 2, (2, 5)), ("imagenet-c", 3, (60, 70)),
                                     ("cifar-10-c", 1, (32, 32)), ("cifar-10-c", 2, (27, 30)), ("cifar-10-c", 3, (32, 32))):
        p = params(preset, "spatter", severity)
        key = f"{preset} s{severity} {h}x{w}"
        liquid8 = _liquid8(preset, severity, 2, h, w, seed=severity)
        liquid = liquid8 / 255   # a liquid layer whose 8-bit levels are liquid8 (weather.water_mask floors it)
        assert torch.equal(torch.floor(liquid.clamp(0, 1) * 255), liquid8)
        dist = weather.chamfer_distance(weather.canny(liquid8, 50, 150), 20.0)
        masks[key] = (dist, liquid8)
        want[key] = weather.water_mask(liquid)
        x = torch.rand(2, 3, h, w, generator=torch.Generator().manual_seed(severity))
        m = want[key].clone()
        m[1] = 0   # no drop in the second image
        blends[key] = (x, m, m.amax(dim=(2, 3), keepdim=True), float(p[4]), weather._rgb(175.0, 238.0, 238.0))
    settings = {key: dict(BLOCK_H=64, BLOCK_W=128) for key in masks}
    got = run_interpreted("robustkit.corruptions.spatter_triton:water_mask", masks, tmp_path / "m", settings)
    for key in masks:
        assert same_bits(got[key], want[key]), key
    got = run_interpreted("robustkit.corruptions.spatter_triton:blend", blends, tmp_path / "b")
    for key, (x, m, peak, strength, colour) in blends.items():
        ref = x + torch.where(peak > 0, m / peak.clamp(min=1e-12), 0.0) * strength * colour
        assert same_bits(got[key], ref), key
        assert torch.equal(got[key][1], x[1]), key


def test_kernels_compile_for_an_h100_without_one():
    tiles = dict(BLOCK_H=spatter_triton.BLOCK_H, BLOCK_W=spatter_triton.BLOCK_W)
    compile_for_h100(spatter_triton._canny_kernel, dict(img_ptr="*fp32", state_ptr="*u8", H="i32", W="i32",
                                                        LOW="i32", HIGH="i32"),
                     dict(TG22=weather._TG22, **tiles), spatter_triton.WARPS)
    compile_for_h100(spatter_triton._grow_kernel, dict(state_ptr="*u8", changed_ptr="*i32", H="i32", W="i32"),
                     tiles, spatter_triton.WARPS)
    compile_for_h100(spatter_triton._box_floor_kernel, dict(dist_ptr="*fp32", b_ptr="*u8", hist_ptr="*i32", H="i32",
                                                            W="i32"), tiles, spatter_triton.WARPS)
    compile_for_h100(spatter_triton._mask_kernel, dict(b_ptr="*u8", lut_ptr="*fp32", liquid_ptr="*fp32",
                                                       m_ptr="*fp32", H="i32", W="i32"), tiles, spatter_triton.WARPS)
    compile_for_h100(spatter_triton._blend_kernel, dict(x_ptr="*fp32", m_ptr="*fp32", peak_ptr="*fp32", out_ptr="*fp32",
                                                        strength="fp32", c0="fp32", c1="fp32", c2="fp32", HW="i32"),
                     dict(BLOCK=spatter_triton.BLEND_BLOCK), spatter_triton.WARPS)
    types = dict(src_ptr="*u8", out_ptr="*fp32", cost_ptr="*fp32", H="i32", W="i32", cap="fp32", far="fp32",
                 k_last="i32")
    for stage, cost in enumerate(spatter_triton.COSTS):
        if stage:
            types["src_ptr"] = "*fp32"
        for loop in (False, True):   # the taps unrolled (shipped) and in a loop
            compile_for_h100(spatter_triton._stage_kernel, dict(types),
                             dict(K=0 if loop else int(20.0 // cost), STAGE=stage, LOOP=loop,
                                  BLOCK_H=spatter_triton.BLOCK_H, BLOCK_W=spatter_triton.BLOCK_W), spatter_triton.WARPS)


def test_a_kernel_failure_falls_back_to_the_torch_path_with_one_warning(monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("failed to legalize operation")

    monkeypatch.setattr(spatter_triton._triton, "on_gpu", lambda t: True)   # as if on CUDA
    monkeypatch.setattr(spatter_triton, "distance", broken)
    monkeypatch.setattr(spatter_triton.KERNELS, "failed", None)
    s = torch.rand(1, 1, 20, 20, generator=torch.Generator().manual_seed(0)) < 0.05
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        first, second = weather.chamfer_distance(s, 20.0), weather.chamfer_distance(s, 20.0)
    assert len(seen) == 1 and "spatter: the Triton kernels failed (RuntimeError: failed to legalize" in str(seen[0].message)
    monkeypatch.setattr(spatter_triton.KERNELS, "failed", "off")
    assert same_bits(first, second) and same_bits(first, weather.chamfer_distance(s, 20.0))
