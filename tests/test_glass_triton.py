"""The Triton glass_blur shuffle (robustkit/corruptions/glass_triton.py) equals the torch path and the makers' loop.

On the CPU the kernel runs in Triton's interpreter (tests/triton_interpreter.py); tests/test_gpu.py compares it on
CUDA.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from test_glass_blur import GLASS, draw_offsets, hwc, makers_loop
from triton_interpreter import compile_for_h100, run_interpreted

from robustkit.corruptions import _ops, blur, glass_triton

pytestmark = pytest.mark.skipif(glass_triton.triton is None, reason="Triton is not installed")


def test_kernel_equals_the_torch_path_and_the_makers_loop(tmp_path):
    cases = {}
    for preset in sorted(GLASS):
        for severity, p in enumerate(GLASS[preset], 1):   # every (delta, passes) of both presets
            for h, w in ((32, 32), (27, 36)):
                x = torch.rand(2, 3, h, w, generator=torch.Generator().manual_seed(h * w + severity))  # distinct
                cases[f"{preset} s{severity} {h}x{w}"] = (x, draw_offsets(2, h, w, p, seed=severity), int(p[1]))
    # uint8 levels (what glass_blur shuffles), one channel, and the longest chains: every offset (0, +1) copies
    # the right neighbour, visited just before, so each pixel's chain runs to the rectangle's right edge
    levels = torch.randint(0, 256, (1, 3, 24, 40), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)
    cases["uint8"] = (levels, draw_offsets(1, 24, 40, (0, 3, 2), seed=3), 3)
    cases["one channel"] = (levels[:, :1].float(), draw_offsets(1, 24, 40, (0, 2, 3), seed=4), 2)
    chains = draw_offsets(1, 24, 40, (0, 3, 2), seed=5)
    chains[..., 0], chains[..., 1] = 0, 1
    cases["long chains"] = (levels, chains, 3)
    # glass_blur's own call: the float first blur in, its truncated 8-bit levels shuffled, k / 255 out; values
    # on level boundaries (k / 255 * 255 can land just below k) and outside [0, 1]
    k = torch.arange(256, dtype=torch.float32)
    edges = torch.cat([k / 255, (k + 0.5) / 255, torch.tensor([-0.2, 1.3, 1.0, 0.0])])
    blurred = edges[torch.randint(0, edges.numel(), (2, 3, 30, 34), generator=torch.Generator().manual_seed(2))]
    levels_cases = {f"levels d{d} p{p}": (blurred, draw_offsets(2, 30, 34, (0, d, p), seed=d + p), d, True)
                    for d, p in ((1, 2), (2, 3), (4, 1))}
    got = run_interpreted("robustkit.corruptions.glass_triton:shuffle", {**cases, **levels_cases}, tmp_path)
    assert set(got) == set(cases) | set(levels_cases)
    for key, (x, offsets, delta, _) in levels_cases.items():
        want = _ops.unit_float(blur.glass_shuffle(x.clamp(0, 1).mul(255).to(torch.uint8), offsets, delta))
        assert got[key].dtype == torch.float32 and torch.equal(got[key], want), key
    for key, (x, offsets, delta) in cases.items():
        want = blur.glass_shuffle(x, offsets, delta)
        assert got[key].dtype == x.dtype and torch.equal(got[key], want), key
        if x.shape[1] == 3:   # the makers' numpy loop, the independent reference
            for i in range(x.shape[0]):
                ref = makers_loop(hwc(x)[i], offsets[i].tolist(), delta)
                assert np.array_equal(hwc(got[key])[i], ref), (key, i)


def test_kernel_compiles_for_an_h100_without_one():
    types = dict(off_ptr="*i8", prev_ptr="*i32", map_ptr="*i32", x_ptr="*u8", out_ptr="*u8", lut_ptr="*u8",
                 H="i32", W="i32", DELTA="i32", R="i32", C="i32", off_image="i32", off_row="i32", off_col="i32")
    for first, last in ((True, True), (True, False), (False, False), (False, True)):
        compile_for_h100(glass_triton._pass_kernel, types, dict(CH=3, FIRST=first, LAST=last, LEVELS=False,
                                                                 BLOCK=glass_triton.BLOCK), glass_triton.WARPS)
    floats = dict(types, x_ptr="*fp32", out_ptr="*fp32", lut_ptr="*fp32")   # glass_blur's call: levels taken inside
    compile_for_h100(glass_triton._pass_kernel, floats, dict(CH=3, FIRST=False, LAST=True, LEVELS=True,
                                                              BLOCK=glass_triton.BLOCK), glass_triton.WARPS)


def test_a_kernel_failure_falls_back_to_the_torch_path_with_one_warning(monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("out of resource: shared memory")

    monkeypatch.setattr(glass_triton, "usable", lambda x: True)   # as if on CUDA
    monkeypatch.setattr(glass_triton, "shuffle", broken)
    monkeypatch.setattr(glass_triton.KERNELS, "failed", None)
    x = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    offsets = draw_offsets(1, 16, 16, (0, 2, 2), seed=0)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        first, second = blur.glass_shuffle(x, offsets, 2), blur.glass_shuffle(x, offsets, 2)
    assert len(seen) == 1 and "glass_blur: the Triton kernels failed (RuntimeError: out of resource" in str(seen[0].message)
    monkeypatch.setattr(glass_triton.KERNELS, "failed", "off")
    assert torch.equal(first, second) and torch.equal(first, blur.glass_shuffle(x, offsets, 2))
